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
    assert_eq!(code, 1, "a suspended Job never completed: {err}");
    assert!(
        err.contains("suspended (spec.suspend: true)") && err.contains("--resume"),
        "{err}"
    );
    assert!(!err.contains("ran"), "{err}");
    assert_eq!(j["status"]["conditions"][0]["type"], "Suspended");
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

#[test]
fn containers_run_together_after_init_containers() {
    let manifest = job("multi", "", "Never", "echo main ran")
        .replace(
            "      containers:\n",
            "      initContainers:\n      - name: setup\n        command: [sh, -c, 'echo setup ran']\n      containers:\n      - name: side\n        command: [sh, -c, 'echo side ran']\n",
        );
    let (code, j, err) = run_json(&manifest, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j["status"]["succeeded"], 1);
    let pod_line = |container: &str, text: &str| {
        err.lines()
            .any(|l| l.starts_with("[multi-") && l.ends_with(&format!("/{container}] {text}")))
    };
    assert!(
        pod_line("setup", "setup ran")
            && pod_line("side", "side ran")
            && pod_line("main", "main ran"),
        "{err}"
    );
    let setup = err.find("setup ran").expect("setup");
    assert!(
        err.find("main ran").expect("main") > setup,
        "init containers first"
    );
}

#[test]
fn failed_init_container_fails_the_pod_before_the_containers() {
    let manifest = job("init-fails", "  backoffLimit: 0\n", "Never", "echo main ran").replace(
        "      containers:\n",
        "      initContainers:\n      - name: setup\n        command: [sh, -c, 'exit 7']\n      containers:\n",
    );
    let (code, j, err) = run_json(&manifest, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("main ran"), "{err}");
    assert!(err.contains("[setup=7]"), "{err}");
    assert_eq!(outcome(&j).1, "BackoffLimitExceeded");
}

#[test]
fn a_directory_of_expanded_manifests_runs_like_kubectl_create_f_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jobs = dir.path().join("jobs");
    std::fs::create_dir(&jobs).expect("mkdir");
    for item in ["apple", "banana"] {
        let r = run(&["expand", &common::example("job-tmpl.yaml"), "--item", item]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        std::fs::write(jobs.join(format!("job-{item}.yaml")), r.stdout).expect("write");
    }
    let r = run(&[
        "run",
        "-f",
        &jobs.display().to_string(),
        "--local",
        "-o",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let names: Vec<String> = r
        .jobs()
        .iter()
        .map(|j| j["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["process-item-apple", "process-item-banana"]);
}

#[test]
fn volumes_without_bubblewrap_say_what_to_install() {
    let r = common::job_runner()
        .env("PATH", "/nonexistent")
        .args(["run", "-f", &common::example("indexed-job.yaml"), "--local"])
        .output()
        .expect("runs");
    let r = common::Run::from(r);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("volumes mounted at /input"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("apt-get install bubblewrap"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("Created pod"), "{}", r.stderr);
}

#[test]
fn fail_index_rule_fails_the_index_without_retry() {
    let manifest = job(
        "fail-index",
        "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n  backoffLimitPerIndex: 5\n  podFailurePolicy:\n    rules:\n    - action: FailIndex\n      onExitCodes: {containerName: main, operator: In, values: [5]}\n",
        "Never",
        "[ \"$JOB_COMPLETION_INDEX\" != 1 ] || exit 5",
    );
    let (code, j, err) = run_json(&manifest, &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(j["status"]["failedIndexes"], "1");
    assert_eq!(j["status"]["completedIndexes"], "0,2");
    assert_eq!(j["status"]["failed"], 1, "not retried: {err}");
    assert_eq!(outcome(&j).1, "FailedIndexes");
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["expand", "--help"],
        vec!["evict", "--help"],
    ] {
        let r = run(&args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(
            r.stdout.contains("Usage: job-runner"),
            "{args:?}: {}",
            r.stdout
        );
    }
    let r = run(&["run", "--help"]);
    for flag in [
        "--filename",
        "--local",
        "--item",
        "--output",
        "--pod-backoff",
        "--runs",
        "--queue-url",
    ] {
        assert!(r.stdout.contains(flag), "{flag} in:\n{}", r.stdout);
    }
}

#[test]
fn a_bwrap_that_cannot_make_namespaces_is_one_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("bwrap");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n",
    )
    .expect("write");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let r = common::Run::from(
        common::job_runner()
            .env("PATH", path)
            .args(["run", "-f", &common::example("indexed-job.yaml"), "--local"])
            .output()
            .expect("runs"),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("No permissions to create new namespace"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("unprivileged user namespaces"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("Created pod"), "{}", r.stderr);
}
