//! Ctrl-C with real signals: once evicts the running pods (SIGTERM, condition
//! DisruptionTarget, podFailurePolicy applies); twice stops everything.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{example, job_runner, outcome, write};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Starts job-runner with `args`, reads its standard error until `n` lines
/// contain `marker`, sends SIGINT `presses` times (each after the runner said
/// what the previous one did), and returns (exit code, stdout, stderr).
fn interrupt_after(args: &[&str], marker: &str, n: usize, presses: usize) -> (i32, String, String) {
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
    let mut seen = String::new();
    let mut hits = 0;
    let mut sent = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&line);
        if sent == 0 && line.contains(marker) {
            hits += 1;
            if hits == n {
                kill(pid, Signal::SIGINT).expect("send SIGINT");
                sent = 1;
            }
        } else if sent > 0 && sent < presses && line.contains("interrupt: evicting") {
            kill(pid, Signal::SIGINT).expect("send second SIGINT");
            sent += 1;
        }
    }
    let status = child.wait().expect("job-runner ends");
    let stdout = out_reader.join().unwrap_or_default();
    assert_eq!(sent, presses, "did not see the marker {marker:?}:\n{seen}");
    (status.code().unwrap_or(-1), stdout, seen)
}

#[test]
fn ignore_rule_keeps_an_evicted_pod_from_counting() {
    // backoffLimit is 0: an evicted pod that counted would fail the Job.
    let (code, stdout, stderr) = interrupt_after(
        &[
            "run",
            "-f",
            &example("pod-failure-policy-ignore.yaml"),
            "--local",
            "-o",
            "json",
        ],
        "Hello world!",
        1,
        1,
    );
    assert_eq!(code, 0, "{stderr}");
    let job: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(job["status"]["failed"], 0, "{stderr}");
    assert_eq!(job["status"]["succeeded"], 4);
    assert_eq!(outcome(&job).0, "Complete");
    assert!(
        stderr
            .contains("(evicted: DisruptionTarget) [main=143]: ignored (podFailurePolicy rule 0)"),
        "{stderr}"
    );
}

#[test]
fn without_a_policy_an_evicted_pod_counts_as_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(
        dir.path(),
        "j.yaml",
        &common::job(
            "evict-me",
            "  backoffLimit: 0\n",
            "Never",
            "echo started; sleep 60",
        ),
    );
    let (code, stdout, stderr) =
        interrupt_after(&["run", "-f", &f, "--local", "-o", "json"], "started", 1, 1);
    assert_eq!(code, 1, "{stderr}");
    let job: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let (ty, reason, _) = outcome(&job);
    assert_eq!(
        (ty.as_str(), reason.as_str()),
        ("Failed", "BackoffLimitExceeded")
    );
    assert_eq!(job["status"]["failed"], 1);
}

#[test]
fn second_ctrl_c_stops_a_pod_that_ignores_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The pod ignores SIGTERM and has a long grace period: only the second
    // press (SIGKILL) can end it.
    let manifest = common::job(
        "stubborn",
        "",
        "Never",
        "trap '' TERM; echo started; while true; do sleep 1; done",
    )
    .replace(
        "      restartPolicy: Never\n",
        "      restartPolicy: Never\n      terminationGracePeriodSeconds: 3600\n",
    );
    let f = write(dir.path(), "j.yaml", &manifest);
    let (code, stdout, stderr) =
        interrupt_after(&["run", "-f", &f, "--local", "-o", "json"], "started", 1, 2);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("stopping: killing every pod"), "{stderr}");
    let job: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(job["metadata"]["name"], "stubborn");
    assert!(
        job["status"]["conditions"].is_null(),
        "the Job never ended: {job}"
    );
}

#[test]
fn evict_command_evicts_one_pod_and_the_condition_rule_applies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = common::job(
        "evictee",
        "  podFailurePolicy:\n    rules:\n    - action: FailJob\n      onPodConditions:\n      - type: DisruptionTarget\n",
        "Never",
        "echo started; sleep 60",
    );
    let f = write(dir.path(), "j.yaml", &manifest);
    let mut child = job_runner()
        .args(["run", "-f", &f, "--local", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("job-runner starts");
    let stdout = child.stdout.take().expect("stdout");
    let out_reader =
        std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    let mut line = String::new();
    let mut evicted = None;
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&line);
        if evicted.is_none()
            && let Some(rest) = line.strip_prefix("[evictee-")
            && rest.contains("] started")
        {
            let pod = format!("evictee-{}", &rest[..5]);
            let r = common::run(&["evict", &pod]);
            assert_eq!(r.code, 0, "{}", r.stderr);
            assert_eq!(r.stdout.trim(), format!("pod/{pod} evicted"));
            evicted = Some(pod);
        }
    }
    let status = child.wait().expect("ends");
    let stdout = out_reader.join().unwrap_or_default();
    let pod = evicted.unwrap_or_else(|| panic!("never saw the pod start:\n{seen}"));
    assert_eq!(status.code(), Some(1), "{seen}");
    let job: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let (ty, reason, message) = outcome(&job);
    assert_eq!(
        (ty.as_str(), reason.as_str()),
        ("Failed", "PodFailurePolicy")
    );
    assert_eq!(
        message,
        format!(
            "Pod default/{pod} has condition DisruptionTarget matching FailJob rule at index 0"
        )
    );
    let r = common::run(&["evict", "no-such-pod-xyz12"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no-such-pod-xyz12"), "{}", r.stderr);
}

/// SIGTERM and SIGHUP (the terminal went away) end the run at once, and no
/// pod process outlives it.
#[test]
fn sigterm_and_sighup_leave_no_pod_behind() {
    for sig in [Signal::SIGTERM, Signal::SIGHUP] {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = write(
            dir.path(),
            "j.yaml",
            &common::job("orphan-check", "", "Never", "echo pid $$$$; sleep 600"),
        );
        let mut child = job_runner()
            .args(["run", "-f", &f, "--local", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("job-runner starts");
        let stdout = child.stdout.take().expect("stdout");
        let out_reader =
            std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        let mut pod_pid = None;
        let mut seen = String::new();
        loop {
            line.clear();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
            if pod_pid.is_none()
                && let Some((_, pid)) = line.trim_end().split_once("] pid ")
            {
                pod_pid = pid.parse::<i32>().ok();
                kill(Pid::from_raw(i32::try_from(child.id()).expect("pid")), sig).expect("signal");
            }
        }
        let status = child.wait().expect("ends");
        let _ = out_reader.join();
        let pod_pid = pod_pid.unwrap_or_else(|| panic!("{sig}: no pod pid in:\n{seen}"));
        assert_eq!(status.code(), Some(1), "{sig}: {seen}");
        assert!(
            kill(Pid::from_raw(pod_pid), None).is_err(),
            "{sig}: pod process {pod_pid} outlived the run"
        );
    }
}

/// A CronJob runs until interrupted: Ctrl-C once stops the schedule, and
/// the run ends with the Jobs it made.
#[test]
fn ctrl_c_stops_a_cronjob_schedule() {
    let (code, stdout, stderr) = interrupt_after(
        &[
            "run",
            "-f",
            &example("cronjob.yaml"),
            "--local",
            "--start-now",
            "-o",
            "json",
        ],
        "Succeeded [hello=0]",
        1,
        1,
    );
    assert_eq!(code, 0, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    // At a minute boundary the schedule may have started a second Job.
    let first = if doc["kind"] == "List" {
        doc["items"][0].clone()
    } else {
        doc
    };
    assert_eq!(outcome(&first).0, "Complete", "{stdout}");
}
