//! The CronJob controller's timing on tokio's paused clock (Forbid's late
//! start, `startingDeadlineSeconds`, missed schedules), and the API
//! server's validation end to end: what `job-runner run --local` refuses
//! (exit 2, Kubernetes' message) and what it accepts or skips.
//!
//! The timing tests run the library's `local::run` on a paused clock kept
//! from advancing by itself (a task that always has work), and move time
//! with `tokio::time::advance`; pods are real processes that wait for a file
//! the test creates, so a Job ends exactly when the test says.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{job, run, write};
use jiff::Timestamp;
use job_runner::local::{self, RunOptions};
use job_runner::manifest::{Loaded, parse_text};
use job_runner::output::Output;
use job_runner::report::RunReport;
use job_runner::template::TemplateOptions;

/// A CronJob every minute (UTC) whose pods wait for `stop` to exist.
fn cron_manifest(name: &str, spec: &str, stop: &Path) -> String {
    format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: {name}\nspec:\n  schedule: \"* * * * *\"\n  timeZone: UTC\n{spec}  jobTemplate:\n    spec:\n      backoffLimit: 0\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n          - name: main\n            image: busybox\n            command: [\"sh\", \"-c\", \"while [ ! -e {} ]; do sleep 0.02; done\"]\n",
        stop.display()
    )
}

fn loaded(text: &str) -> Loaded {
    let mut loaded = Loaded {
        manifests: Vec::new(),
        skipped: Vec::new(),
    };
    parse_text(
        "cron.yaml",
        Path::new("."),
        text,
        &TemplateOptions::default(),
        &mut loaded,
    )
    .expect("manifest parses");
    loaded
}

/// Lets the runner and its pods run for `rounds` short real pauses without
/// moving the paused clock.
async fn settle(rounds: u32) {
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(10));
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
}

/// The first whole minute after `t`.
fn next_minute(t: Timestamp) -> Timestamp {
    Timestamp::from_second((t.as_second() / 60 + 1) * 60).expect("in range")
}

/// Advances the paused clock so the wall clock of the run reads `at`
/// (the run's clock started at about `start`), then lets it act.
async fn advance_to(start: Timestamp, at: Timestamp, elapsed: &mut Duration) {
    let target = Duration::try_from(at.duration_since(start)).expect("forward");
    let step = target.saturating_sub(*elapsed);
    tokio::time::advance(step).await;
    *elapsed += step;
    settle(20).await;
}

/// Drives a run to its end (real time for pods, no clock movement).
async fn finish(handle: tokio::task::JoinHandle<job_runner::Result<RunReport>>) -> RunReport {
    for _ in 0..500 {
        if handle.is_finished() {
            break;
        }
        settle(1).await;
    }
    assert!(handle.is_finished(), "the run did not end");
    handle.await.expect("run task").expect("run ok")
}

struct Timed {
    start: Timestamp,
    elapsed: Duration,
    handle: tokio::task::JoinHandle<job_runner::Result<RunReport>>,
    _busy: tokio::task::JoinHandle<()>,
}

/// Starts a run of `manifest` on the paused clock.
async fn start(manifest: &str, runs: u32) -> Timed {
    // Always having work keeps the paused clock from advancing by itself.
    let busy = tokio::spawn(async {
        loop {
            tokio::task::yield_now().await;
        }
    });
    let opts = RunOptions {
        runs: Some(runs),
        ..RunOptions::default()
    };
    // The run reads the wall clock itself a moment after this one; a minute
    // boundary between the two readings would put every expected Job name
    // one minute off. Start clear of the boundary.
    let into_minute = Timestamp::now().as_second().rem_euclid(60);
    if into_minute >= 55 {
        std::thread::sleep(Duration::from_secs(61 - into_minute.unsigned_abs()));
    }
    let start = Timestamp::now();
    let handle = tokio::spawn(local::run(
        loaded(manifest),
        opts,
        Arc::new(Output::new(true, false)),
    ));
    settle(5).await;
    Timed {
        start,
        elapsed: Duration::ZERO,
        handle,
        _busy: busy,
    }
}

fn names(report: &RunReport) -> Vec<String> {
    report
        .jobs
        .iter()
        .map(|j| j.job.metadata.name.clone().unwrap_or_default())
        .collect()
}

/// Forbid: the 2nd scheduled time comes while the 1st Job runs
/// (`JobAlreadyActive`); lastScheduleTime stays at the 1st, so when the Job
/// ends 20 s later the 2nd time's Job starts late, named for its scheduled
/// minute.
#[tokio::test(start_paused = true)]
async fn forbid_starts_the_skipped_run_late_when_the_job_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = dir.path().join("stop");
    let mut t = start(
        &cron_manifest("forbid", "  concurrencyPolicy: Forbid\n", &stop),
        2,
    )
    .await;
    let t1 = next_minute(t.start);
    let t2 = t1 + jiff::SignedDuration::from_secs(60);
    advance_to(
        t.start,
        t1 + jiff::SignedDuration::from_secs(2),
        &mut t.elapsed,
    )
    .await;
    advance_to(
        t.start,
        t2 + jiff::SignedDuration::from_secs(2),
        &mut t.elapsed,
    )
    .await;
    assert!(!t.handle.is_finished(), "the 2nd time was not started yet");
    advance_to(
        t.start,
        t2 + jiff::SignedDuration::from_secs(20),
        &mut t.elapsed,
    )
    .await;
    std::fs::write(&stop, "").expect("stop file");
    let report = finish(t.handle).await;
    let minute = |ts: Timestamp| format!("forbid-{}", ts.as_second() / 60);
    assert_eq!(names(&report), [minute(t1), minute(t2)]);
    assert!(report.jobs.iter().all(|j| j.complete()));
    assert_eq!(report.crons[0].jobs_started, 2);
    assert_eq!(report.crons[0].last_schedule, Some(t2));
}

/// Forbid with `startingDeadlineSeconds: 10`: the Job ends 20 s after the
/// skipped time, too late, so that time is missed and the next scheduled
/// time starts the 2nd Job.
#[tokio::test(start_paused = true)]
async fn forbid_does_not_start_late_past_the_starting_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = dir.path().join("stop");
    let mut t = start(
        &cron_manifest(
            "deadline",
            "  concurrencyPolicy: Forbid\n  startingDeadlineSeconds: 10\n",
            &stop,
        ),
        2,
    )
    .await;
    let t1 = next_minute(t.start);
    let (t2, t3) = (
        t1 + jiff::SignedDuration::from_secs(60),
        t1 + jiff::SignedDuration::from_secs(120),
    );
    advance_to(
        t.start,
        t1 + jiff::SignedDuration::from_secs(2),
        &mut t.elapsed,
    )
    .await;
    advance_to(
        t.start,
        t2 + jiff::SignedDuration::from_secs(2),
        &mut t.elapsed,
    )
    .await;
    advance_to(
        t.start,
        t2 + jiff::SignedDuration::from_secs(20),
        &mut t.elapsed,
    )
    .await;
    std::fs::write(&stop, "").expect("stop file");
    settle(50).await;
    assert!(!t.handle.is_finished(), "the missed time started a Job");
    advance_to(
        t.start,
        t3 + jiff::SignedDuration::from_secs(1),
        &mut t.elapsed,
    )
    .await;
    let report = finish(t.handle).await;
    let minute = |ts: Timestamp| format!("deadline-{}", ts.as_second() / 60);
    assert_eq!(names(&report), [minute(t1), minute(t3)]);
    assert_eq!(report.crons[0].last_schedule, Some(t3));
}

/// A runner stalled for 2½ minutes past a scheduled time: one Job, for the
/// most recent missed time, not one per missed time.
#[tokio::test(start_paused = true)]
async fn missed_schedules_start_only_the_most_recent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = dir.path().join("stop");
    std::fs::write(&stop, "").expect("stop file");
    let mut t = start(&cron_manifest("stall", "", &stop), 1).await;
    let t1 = next_minute(t.start);
    advance_to(
        t.start,
        t1 + jiff::SignedDuration::from_secs(150),
        &mut t.elapsed,
    )
    .await;
    let report = finish(t.handle).await;
    let most_recent = t1 + jiff::SignedDuration::from_secs(120);
    assert_eq!(
        names(&report),
        [format!("stall-{}", most_recent.as_second() / 60)]
    );
    assert_eq!(report.crons[0].jobs_started, 1);
    assert_eq!(report.crons[0].last_schedule, Some(most_recent));
}

/// A stall of 102 scheduled times (over the controller's 100, where it
/// warns `TooManyMissedTimes`): still one Job, for the most recent time.
#[tokio::test(start_paused = true)]
async fn too_many_missed_times_still_start_one_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = dir.path().join("stop");
    std::fs::write(&stop, "").expect("stop file");
    let mut t = start(&cron_manifest("many", "", &stop), 1).await;
    let t1 = next_minute(t.start);
    let last = t1 + jiff::SignedDuration::from_mins(101);
    advance_to(
        t.start,
        last + jiff::SignedDuration::from_secs(30),
        &mut t.elapsed,
    )
    .await;
    let report = finish(t.handle).await;
    assert_eq!(names(&report), [format!("many-{}", last.as_second() / 60)]);
    assert_eq!(report.crons[0].jobs_started, 1);
    assert_eq!(report.crons[0].last_schedule, Some(last));
}

/// Item 8 of issue 18 end to end: each manifest is refused with exit code 2
/// and the API server's line.
#[test]
fn invalid_specs_are_refused_as_the_api_server_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cron = |spec: &str| {
        format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: c\nspec:\n  schedule: \"* * * * *\"\n{spec}  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n          - name: main\n            command: [\"true\"]\n"
        )
    };
    let long = "a".repeat(60);
    let cases: Vec<(String, &str)> = vec![
        (
            job("t", "  ttlSecondsAfterFinished: -1\n", "Never", "true"),
            "spec.ttlSecondsAfterFinished: Invalid value: -1: must be greater than or equal to 0",
        ),
        (
            cron("  successfulJobsHistoryLimit: -1\n"),
            "spec.successfulJobsHistoryLimit: Invalid value: -1: must be greater than or equal to 0",
        ),
        (
            cron("  failedJobsHistoryLimit: -1\n"),
            "spec.failedJobsHistoryLimit: Invalid value: -1: must be greater than or equal to 0",
        ),
        (
            job(
                "t",
                "  podFailurePolicy:\n    rules:\n    - {action: FailJob, onExitCodes: {operator: In, values: [3, 1]}}\n",
                "Never",
                "true",
            ),
            "spec.podFailurePolicy.rules[0].onExitCodes.values: Invalid value: [3,1]: must be ordered",
        ),
        (
            job("t", "  podReplacementPolicy: Sometimes\n", "Never", "true"),
            "spec.podReplacementPolicy: Unsupported value: \"Sometimes\": supported values: \"Failed\", \"TerminatingOrFailed\"",
        ),
        (
            job(
                "t",
                "  podReplacementPolicy: TerminatingOrFailed\n  podFailurePolicy:\n    rules:\n    - {action: FailJob, onExitCodes: {operator: In, values: [1]}}\n",
                "Never",
                "true",
            ),
            "spec.podReplacementPolicy: Unsupported value: \"TerminatingOrFailed\": supported values: \"Failed\"",
        ),
        (
            job(
                "t",
                "  completionMode: Indexed\n  completions: 10\n  parallelism: 100001\n",
                "Never",
                "true",
            ),
            "spec.parallelism: Invalid value: 100001: must be less than or equal to 100000 when completion mode is Indexed",
        ),
        (
            job(
                &long,
                "  completionMode: Indexed\n  completions: 1000\n",
                "Never",
                "true",
            ),
            "will not able to create pod with invalid DNS label",
        ),
        (
            job(
                "t",
                "  manualSelector: true\n  selector:\n    matchLabels: {app: x}\n",
                "Never",
                "true",
            ),
            "spec.template.metadata.labels: Invalid value: {}: `selector` does not match template `labels`",
        ),
        (
            job(
                "t",
                "  selector:\n    matchLabels: {app: x}\n",
                "Never",
                "true",
            ),
            "`selector` not auto-generated",
        ),
    ];
    for (i, (manifest, want)) in cases.iter().enumerate() {
        let f = write(dir.path(), &format!("bad{i}.yaml"), manifest);
        let r = run(&["run", "-f", &f, "--local"]);
        assert_eq!(r.code, 2, "{want}: {}", r.stderr);
        assert!(r.stderr.contains(want), "want {want:?} in:\n{}", r.stderr);
    }
}

/// The API server accepts `activeDeadlineSeconds: 0`; the Job then fails
/// at once with DeadlineExceeded, as the controller decides.
#[test]
fn active_deadline_zero_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(
        dir.path(),
        "ad0.yaml",
        &job("ad0", "  activeDeadlineSeconds: 0\n", "Never", "sleep 5"),
    );
    let r = run(&["run", "-f", &f, "--local", "-o", "json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let (kind, reason, message) = common::outcome(&r.json());
    assert_eq!(
        (kind.as_str(), reason.as_str(), message.as_str()),
        (
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline"
        )
    );
}

/// `managedBy` another controller: the Job controller skips the Job, and
/// the run says so and runs the others.
#[test]
fn a_job_managed_by_another_controller_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let theirs = job(
        "theirs",
        "  managedBy: kueue.x-k8s.io/multikueue\n",
        "Never",
        "echo should-not-run",
    );
    let ours = job(
        "ours",
        "  managedBy: kubernetes.io/job-controller\n",
        "Never",
        "echo ran",
    );
    let f = write(dir.path(), "two.yaml", &format!("{theirs}---\n{ours}"));
    let r = run(&["run", "-f", &f, "--local", "-o", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let jobs = r.jobs();
    assert_eq!(jobs.len(), 1, "{}", r.stdout);
    assert_eq!(jobs[0]["metadata"]["name"], "ours");
    assert!(
        r.stderr.contains(
            "Job/theirs: Skip syncing the job as it is managed by an external controller (spec.managedBy: \"kueue.x-k8s.io/multikueue\")"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.pod_lines().contains(&"should-not-run".to_string()));
}
