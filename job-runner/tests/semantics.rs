//! The Job controller's semantics with real processes.

mod common;

use common::{job, outcome, run, write};

fn run_json(manifest: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
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

#[test]
fn backoff_limit_counts_failed_pods() {
    let (code, j, err) = run_json(
        &job("fails", "  backoffLimit: 2\n", "Never", "exit 3"),
        &["--pod-backoff", "0s"],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        j["status"]["failed"], 3,
        "backoffLimit 2 allows two retries: {err}"
    );
    let (ty, reason, message) = outcome(&j);
    assert_eq!(
        (ty.as_str(), reason.as_str(), message.as_str()),
        (
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit"
        )
    );
}

#[test]
fn on_failure_restarts_the_container_in_the_same_pod() {
    // Fails twice, then succeeds: one pod, two restarts.
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = dir.path().join("n");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo attempt $n; [ $n -ge 3 ]",
        c = counter.display()
    );
    let (code, j, err) = run_json(
        &job("retry", "", "OnFailure", &script),
        &["--pod-backoff", "0s"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(j["status"]["succeeded"], 1);
    assert_eq!(
        err.lines()
            .filter(|l| l.contains(": Created pod: "))
            .count(),
        1,
        "{err}"
    );
    assert!(err.contains("attempt 3"), "{err}");
}

#[test]
fn on_failure_restarts_count_toward_backoff_limit() {
    let (code, j, err) = run_json(
        &job("never-ok", "  backoffLimit: 1\n", "OnFailure", "exit 1"),
        &["--pod-backoff", "0s"],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(outcome(&j).1, "BackoffLimitExceeded");
}

#[test]
fn active_deadline_fails_the_job() {
    let (code, j, err) = run_json(
        &job("slow", "  activeDeadlineSeconds: 1\n", "Never", "sleep 60"),
        &[],
    );
    assert_eq!(code, 1, "{err}");
    let (ty, reason, message) = outcome(&j);
    assert_eq!(
        (ty.as_str(), reason.as_str(), message.as_str()),
        (
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline"
        )
    );
}

#[test]
fn suspended_job_does_not_run_until_resumed() {
    let manifest = job("paused", "  suspend: true\n", "Never", "echo ran");
    let (code, j, err) = run_json(&manifest, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("suspended (spec.suspend: true)") && err.contains("--resume"),
        "{err}"
    );
    assert!(!err.contains("ran"), "{err}");
    assert!(j["status"].is_null());
    let (code, j, err) = run_json(&manifest, &["--resume"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j["status"]["succeeded"], 1);
}

#[test]
fn completions_unset_completes_after_a_success_when_all_pods_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let claim = dir.path().join("claim");
    // Three workers; one "finds the work done" at once, the others finish later.
    let script = format!(
        "if mkdir {} 2>/dev/null; then echo first; else sleep 1; fi",
        claim.display()
    );
    let (code, j, err) = run_json(&job("wq", "  parallelism: 3\n", "Never", &script), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j["status"]["succeeded"], 3);
    assert!(j["spec"]["completions"].is_null());
}

#[test]
fn backoff_limit_per_index_fails_only_that_index() {
    let manifest = job(
        "per-index",
        "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n  backoffLimitPerIndex: 1\n",
        "Never",
        "[ \"$JOB_COMPLETION_INDEX\" != 1 ]",
    );
    let (code, j, err) = run_json(&manifest, &["--pod-backoff", "0s"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(j["status"]["completedIndexes"], "0,2");
    assert_eq!(j["status"]["failedIndexes"], "1");
    assert_eq!(j["status"]["failed"], 2, "index 1 ran twice");
    assert_eq!(outcome(&j).1, "FailedIndexes");
}

#[test]
fn env_and_downward_api_fields_reach_the_container() {
    let manifest = job(
        "envs",
        "  completions: 1\n  completionMode: Indexed\n",
        "Never",
        "echo \"$GREETING $POD_NAME $IDX $HOSTNAME\"",
    )
    .replace(
        "        command:",
        "        env:\n        - {name: GREETING, value: \"hello $(JOB_COMPLETION_INDEX)\"}\n        - name: POD_NAME\n          valueFrom: {fieldRef: {fieldPath: metadata.name}}\n        - name: IDX\n          valueFrom: {fieldRef: {fieldPath: \"metadata.annotations['batch.kubernetes.io/job-completion-index']\"}}\n        command:",
    );
    let (code, _, err) = run_json(&manifest, &[]);
    assert_eq!(code, 0, "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("[envs-0-"))
        .unwrap_or_else(|| panic!("{err}"));
    let (prefix, text) = line.split_once("] ").expect("prefixed");
    let pod = prefix.trim_start_matches('[');
    assert_eq!(text, format!("hello 0 {pod} 0 envs-0"));
}

#[test]
fn missing_program_fails_the_pod_with_a_clear_line() {
    let manifest = job("nope", "  backoffLimit: 0\n", "Never", "true").replace(
        "command: [\"sh\", \"-c\", \"true\"]",
        "command: [\"/nonexistent/program\"]",
    );
    let (code, _, err) = run_json(&manifest, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot start \"/nonexistent/program\""),
        "{err}"
    );
}

#[test]
fn text_summary_reads_like_kubectl_describe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(
        dir.path(),
        "j.yaml",
        &job("describe-me", "  completions: 2\n", "Never", "echo hi"),
    );
    let r = run(&["run", "-f", &f, "--local"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for want in [
        "Name:              describe-me",
        "Completions:       2",
        "Pods Statuses:     0 Active / 2 Succeeded / 0 Failed",
        "Complete            True    CompletionsReached",
        "SuccessfulCreate",
        "[describe-me-",
    ] {
        assert!(r.stdout.contains(want), "want {want:?} in:\n{}", r.stdout);
    }
}
