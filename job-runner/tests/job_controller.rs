//! The rest of the Job controller (issue 18, items 1, 4, 5, 6, 7, 9, 10)
//! with real processes: each test asserts the condition types, reasons,
//! messages and counts Kubernetes would show. The timing-exact versions
//! (back-off per index, replacement of terminating pods, conditions stamped
//! when pods are gone) are on a test clock in `src/controller/tests.rs`;
//! here real durations stay at a second or two.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{job, job_runner, outcome, run, write};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// Runs a manifest with `--local -o json`: (exit code, the Job, stderr).
fn run_json(manifest: &str, extra: &[&str]) -> (i32, Value, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(dir.path(), "job.yaml", manifest);
    let mut args = vec!["run", "-f", f.as_str(), "--local", "-o", "json"];
    args.extend_from_slice(extra);
    let r = run(&args);
    let jobs = r.jobs();
    (
        r.code,
        jobs.into_iter().next().unwrap_or_default(),
        r.stderr,
    )
}

/// A condition of a Job object by type: (status, reason, message).
fn condition(job: &Value, ty: &str) -> Option<(String, String, String)> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
            (s("status"), s("reason"), s("message"))
        })
}

/// The condition types in the order the controller wrote them.
fn condition_types(job: &Value) -> Vec<String> {
    job["status"]["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["type"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `job(..)` with a line added to the pod spec (before `restartPolicy`).
fn with_pod_field(manifest: &str, line: &str) -> String {
    manifest.replacen(
        "      restartPolicy:",
        &format!("      {line}\n      restartPolicy:"),
        1,
    )
}

/// Runs `args`, sends SIGINT once a stderr line contains `marker`, and
/// returns (exit code, stdout, stderr).
fn interrupt_after(args: &[&str], marker: &str) -> (i32, String, String) {
    let mut child = job_runner()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("job-runner starts");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    let stdout = child.stdout.take().expect("stdout");
    let out_reader =
        std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let (mut seen, mut line, mut sent) = (String::new(), String::new(), false);
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&line);
        if !sent && line.contains(marker) {
            kill(pid, Signal::SIGINT).expect("send SIGINT");
            sent = true;
        }
    }
    let status = child.wait().expect("job-runner ends");
    let stdout = out_reader.join().unwrap_or_default();
    assert!(sent, "did not see the marker {marker:?}:\n{seen}");
    (status.code().unwrap_or(-1), stdout, seen)
}

/// Item 1: a matched `successPolicy` rule completes an Indexed Job early;
/// the remaining pods are terminated (and counted failed, as Kubernetes
/// counts the pods it deletes after the Job finished).
#[test]
fn success_policy_completes_the_job_and_terminates_the_rest() {
    let spec = "  completionMode: Indexed\n  completions: 3\n  parallelism: 3\n  successPolicy:\n    rules:\n    - succeededIndexes: \"2\"\n      succeededCount: 1\n    - succeededIndexes: \"0\"\n";
    let script = "if [ \"$JOB_COMPLETION_INDEX\" = 0 ]; then exit 0; fi; sleep 30";
    let started = Instant::now();
    let (code, j, err) = run_json(&job("leader", spec, "Never", script), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the other pods were terminated, not waited for: {err}"
    );
    let want = (
        "True".to_string(),
        "SuccessPolicy".to_string(),
        "Matched rules at index 1".to_string(),
    );
    assert_eq!(
        condition(&j, "SuccessCriteriaMet"),
        Some(want.clone()),
        "{j}"
    );
    assert_eq!(condition(&j, "Complete"), Some(want), "{j}");
    assert_eq!(condition_types(&j), ["SuccessCriteriaMet", "Complete"]);
    assert_eq!(j["status"]["succeeded"], 1, "{j}");
    assert_eq!(j["status"]["failed"], 2, "{j}");
    assert_eq!(j["status"]["completedIndexes"], "0", "{j}");
    assert_eq!(j["status"]["active"], 0, "{j}");
    assert!(j["status"]["completionTime"].is_string(), "{j}");
    assert_eq!(
        err.lines().filter(|l| l.contains("Deleted pod")).count(),
        0,
        "events are in the summary, not live lines: {err}"
    );
}

/// Item 4: a pod's own `activeDeadlineSeconds` makes the kubelet fail the
/// pod (reason `DeadlineExceeded`), which counts toward `backoffLimit`.
#[test]
fn pod_active_deadline_fails_the_pod() {
    let manifest = with_pod_field(
        &job("pod-deadline", "  backoffLimit: 0\n", "Never", "sleep 10"),
        "activeDeadlineSeconds: 1",
    );
    let started = Instant::now();
    let (code, j, err) = run_json(&manifest, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(started.elapsed() < Duration::from_secs(8), "{err}");
    assert_eq!(
        outcome(&j),
        (
            "Failed".to_string(),
            "BackoffLimitExceeded".to_string(),
            "Job has reached the specified backoff limit".to_string()
        )
    );
    assert_eq!(j["status"]["failed"], 1, "{j}");
    assert_eq!(j["status"]["succeeded"], 0, "{j}");
    assert!(
        err.contains(
            "Failed (DeadlineExceeded: Pod was active on the node longer than the specified deadline) [main=143]"
        ),
        "{err}"
    );
}

/// The script for item 5: the first pod prints `started`, and on SIGTERM
/// takes a second to end; its replacement succeeds at once.
fn slow_to_terminate(dir: &std::path::Path) -> String {
    format!(
        "if [ -e {m} ]; then echo replacement; exit 0; fi; touch {m}; trap 'sleep 1; echo terminated; exit 1' TERM; echo started; sleep 30 & wait",
        m = dir.join("marker").display()
    )
}

/// Where in stderr a pod was created, and where the first pod ended.
fn replacement_before_end(err: &str) -> (usize, usize) {
    let lines: Vec<&str> = err.lines().collect();
    let created: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains(": Created pod: "))
        .collect();
    assert_eq!(created.len(), 2, "{err}");
    let ended = (0..lines.len())
        .find(|&i| lines[i].contains(" Failed (evicted: DisruptionTarget)"))
        .unwrap_or_else(|| panic!("no end of the evicted pod:\n{err}"));
    (created[1], ended)
}

/// Item 5: `podReplacementPolicy: TerminatingOrFailed` (the default without
/// a pod failure policy) replaces an evicted pod while it is terminating,
/// and counts it failed at once; `Failed` waits until it has ended.
#[test]
fn pod_replacement_policy_terminating_or_failed_vs_failed() {
    for (policy, replaced_early) in [("TerminatingOrFailed", true), ("Failed", false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = format!("  podReplacementPolicy: {policy}\n");
        let f = write(
            dir.path(),
            "j.yaml",
            &job("replace", &spec, "Never", &slow_to_terminate(dir.path())),
        );
        let (code, stdout, err) = interrupt_after(
            &[
                "run",
                "-f",
                &f,
                "--local",
                "-o",
                "json",
                "--pod-backoff",
                "0s",
            ],
            "] started",
        );
        assert_eq!(code, 0, "{policy}: {err}");
        let j: Value = serde_json::from_str(&stdout).expect("json");
        assert_eq!(outcome(&j).0, "Complete", "{policy}: {j}");
        assert_eq!(j["status"]["failed"], 1, "{policy}: {j}");
        assert_eq!(j["status"]["succeeded"], 1, "{policy}: {j}");
        assert!(
            err.contains("] terminated"),
            "took its grace: {policy}:\n{err}"
        );
        let (created, ended) = replacement_before_end(&err);
        assert_eq!(created < ended, replaced_early, "{policy}:\n{err}");
        assert_eq!(
            err.contains("counted as failed now (podReplacementPolicy: TerminatingOrFailed)"),
            replaced_early,
            "{policy}:\n{err}"
        );
    }
}

/// Item 6: under `backoffLimitPerIndex` each index backs off on its own
/// failures (three indexes failing once wait one delay, not three), and its
/// next pod carries `batch.kubernetes.io/job-index-failure-count`.
#[test]
fn per_index_backoff_and_failure_count_annotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = "  completionMode: Indexed\n  completions: 3\n  parallelism: 3\n  backoffLimitPerIndex: 1\n";
    let script = format!(
        "echo index $JOB_COMPLETION_INDEX failures $FAILURES; m={}/$JOB_COMPLETION_INDEX; if [ -e $m ]; then exit 0; fi; touch $m; exit 1",
        dir.path().display()
    );
    let manifest = job("per-index", spec, "Never", &script).replace(
        "        command:",
        "        env:\n        - name: FAILURES\n          valueFrom:\n            fieldRef:\n              fieldPath: metadata.annotations['batch.kubernetes.io/job-index-failure-count']\n        command:",
    );
    let started = Instant::now();
    let (code, j, err) = run_json(&manifest, &["--pod-backoff", "2s"]);
    let took = started.elapsed();
    assert_eq!(code, 0, "{err}");
    assert_eq!(outcome(&j).1, "CompletionsReached", "{j}");
    assert_eq!(j["status"]["failed"], 3, "{j}");
    assert_eq!(j["status"]["succeeded"], 3, "{j}");
    assert_eq!(j["status"]["failedIndexes"], "", "{j}");
    // One 2 s delay per index, in parallel; a global back-off would wait
    // 2 × 2^2 = 8 s after the third failure.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(7),
        "{took:?}: {err}"
    );
    for i in 0..3 {
        assert!(err.contains(&format!("index {i} failures 0")), "{err}");
        assert!(err.contains(&format!("index {i} failures 1")), "{err}");
    }
}

/// Item 7: a suspended Job has the `Suspended` condition and the run does
/// not exit 0; `--resume` shows `suspend: false` and `JobResumed`;
/// `parallelism: 0` is not suspended, and not complete either.
#[test]
fn suspended_and_parallelism_zero() {
    let manifest = job("paused", "  suspend: true\n", "Never", "echo ran");
    let (code, j, err) = run_json(&manifest, &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        condition(&j, "Suspended"),
        Some((
            "True".to_string(),
            "JobSuspended".to_string(),
            "Job suspended".to_string()
        )),
        "{j}"
    );
    assert_eq!(j["spec"]["suspend"], true);
    assert!(j["status"]["startTime"].is_null(), "{j}");

    let (code, j, err) = run_json(&manifest, &["--resume"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j["spec"]["suspend"], false, "{j}");
    assert_eq!(
        condition(&j, "Suspended"),
        Some((
            "False".to_string(),
            "JobResumed".to_string(),
            "Job resumed".to_string()
        )),
        "{j}"
    );
    assert_eq!(outcome(&j).0, "Complete", "{j}");

    let (code, j, err) = run_json(&job("idle", "  parallelism: 0\n", "Never", "echo ran"), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("parallelism is 0"), "{err}");
    assert_eq!(condition_types(&j), Vec::<String>::new(), "{j}");
    assert_eq!(j["status"]["active"], 0, "{j}");
}

/// Item 9: `ready`, `terminating` and `uncountedTerminatedPods` are in the
/// status, and `Failed` is stamped when the last pod is really gone, after
/// `FailureTarget`.
#[test]
fn status_counts_and_failed_stamped_when_pods_are_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "if mkdir {}/first 2>/dev/null; then sleep 1; exit 1; fi; trap 'sleep 2; exit 1' TERM; sleep 30 & wait",
        dir.path().display()
    );
    let (code, j, err) = run_json(
        &job(
            "stamped",
            "  completions: 2\n  parallelism: 2\n  backoffLimit: 0\n",
            "Never",
            &script,
        ),
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(condition_types(&j), ["FailureTarget", "Failed"], "{j}");
    let time = |ty: &str| -> jiff::Timestamp {
        j["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
            .and_then(|c| c["lastTransitionTime"].as_str())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{ty} time in {j}"))
    };
    let gap = time("Failed").duration_since(time("FailureTarget"));
    assert!(
        gap >= jiff::SignedDuration::from_secs(1),
        "Failed {gap:?} after FailureTarget: {j}"
    );
    assert_eq!(j["status"]["failed"], 2, "{j}");
    assert_eq!(j["status"]["ready"], 0, "{j}");
    assert_eq!(j["status"]["terminating"], 0, "{j}");
    assert_eq!(
        j["status"]["uncountedTerminatedPods"],
        serde_json::json!({}),
        "{j}"
    );
}

/// Item 9: `$(hostname)` is the pod's name in every case (a UTS namespace
/// of the pod's own, from bubblewrap), not only for pods with volumes.
#[test]
fn hostname_is_the_pods_name_without_volumes() {
    if !workq_testkit::bwrap() {
        return;
    }
    let (code, _, err) = run_json(
        &job("hosty", "", "Never", "echo host $(hostname) env $HOSTNAME"),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("] host "))
        .unwrap_or_else(|| panic!("{err}"));
    let (prefix, text) = line.split_once("] ").expect("prefixed");
    let pod = prefix.trim_start_matches('[');
    assert!(pod.starts_with("hosty-"), "{line}");
    assert_eq!(text, format!("host {pod} env {pod}"));
}

/// Item 10: `ttlSecondsAfterFinished` is said once in the summary, with
/// what it means here.
#[test]
fn ttl_seconds_after_finished_is_said_once_in_the_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(
        dir.path(),
        "j.yaml",
        &job("ttl", "  ttlSecondsAfterFinished: 100\n", "Never", "true"),
    );
    let r = run(&["run", "-f", &f, "--local"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert_eq!(
        all.matches("ttlSecondsAfterFinished: 100").count(),
        1,
        "{all}"
    );
    assert!(
        all.contains("deletes this Job and its pods 100s after it finishes; locally nothing outlives the run, so there is nothing to clean up"),
        "{all}"
    );
}
