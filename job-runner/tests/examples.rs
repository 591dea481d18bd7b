//! Every manifest of `deploy/examples/` runs to its expected status and
//! output with `--local`, as it stands.

mod common;

use std::collections::BTreeMap;

use common::{example, outcome, run};

#[test]
fn indexed_job_prints_the_five_reversed_words() {
    if !workq_testkit::bwrap() {
        return;
    }
    let r = run(&[
        "run",
        "-f",
        &example("indexed-job.yaml"),
        "--local",
        "-o",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut words = r.pod_lines();
    words.sort();
    assert_eq!(words, ["oof", "rab", "xuq", "zab", "zyx"]);
    let job = &r.jobs()[0];
    assert_eq!(job["status"]["completedIndexes"], "0-4");
    assert_eq!(job["status"]["succeeded"], 5);
    assert_eq!(outcome(job).0, "Complete");
    // Pod names as the controller makes them: <job>-<index>-<5 chars>.
    for i in 0..5 {
        let prefix = format!("[indexed-job-{i}-");
        assert!(
            r.stderr.lines().any(|l| l.starts_with(&prefix)),
            "no pod for index {i}:\n{}",
            r.stderr
        );
    }
}

#[test]
fn indexed_job_with_a_downward_api_volume() {
    if !workq_testkit::bwrap() {
        return;
    }
    let r = run(&[
        "run",
        "-f",
        &example("indexed-job-downward.yaml"),
        "--local",
        "-o",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut lines = r.pod_lines();
    lines.sort();
    assert_eq!(lines, ["0", "1", "2", "3", "4"]);
}

#[test]
fn pods_resolve_each_other_through_the_headless_service() {
    if !workq_testkit::bwrap() {
        return;
    }
    let r = run(&[
        "run",
        "-f",
        &example("pod-to-pod.yaml"),
        "--local",
        "-o",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines = r.pod_lines();
    for i in 0..3 {
        assert!(
            lines.contains(&format!("I am example-job-{i}")),
            "{lines:?}"
        );
        let resolved = format!("Successfully resolved pod: example-job-{i}.headless-svc");
        assert_eq!(
            lines.iter().filter(|l| **l == resolved).count(),
            3,
            "{lines:?}"
        );
    }
}

#[test]
fn fine_queue_processes_every_item_exactly_once() {
    let r = run(&["run", "-f", &example("fine-queue.yaml"), "--local"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for l in r.pod_lines() {
        if let Some(item) = l.strip_prefix("Working on ") {
            *seen.entry(item.to_string()).or_default() += 1;
        }
    }
    let want = [
        "apple", "banana", "cherry", "date", "fig", "grape", "lemon", "melon", "orange",
    ];
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), {
        let mut w = want.to_vec();
        w.sort();
        w
    });
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    // Two workers shared the work: both pods' names appear on item lines.
    let workers: std::collections::BTreeSet<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains("] Working on "))
        .filter_map(|l| l.split_once(']').map(|(p, _)| p))
        .collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(
        r.stdout
            .contains("Pods Statuses:     0 Active / 2 Succeeded / 0 Failed"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("9 enqueued / 9 completed / 0 dead"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Complete            True"),
        "{}",
        r.stdout
    );
}

#[test]
fn coarse_queue_runs_one_pod_per_item() {
    let r = run(&[
        "run",
        "-f",
        &example("coarse-queue.yaml"),
        "--local",
        "-o",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let job = &r.jobs()[0];
    assert_eq!(
        job["spec"]["completions"], 8,
        "completions set from the items"
    );
    assert_eq!(job["status"]["succeeded"], 8);
    let mut items: Vec<String> = r
        .pod_lines()
        .into_iter()
        .filter_map(|l| l.strip_prefix("Processing ").map(String::from))
        .collect();
    items.sort();
    assert_eq!(
        items,
        [
            "apple", "banana", "cherry", "date", "fig", "grape", "lemon", "melon"
        ]
    );
}

#[test]
fn item_template_runs_one_job_per_item() {
    let r = run(&[
        "run",
        "-f",
        &example("job-tmpl.yaml"),
        "--item",
        "apple",
        "--item",
        "banana",
        "--item",
        "cherry",
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
    assert_eq!(
        names,
        [
            "process-item-apple",
            "process-item-banana",
            "process-item-cherry"
        ]
    );
    let mut lines = r.pod_lines();
    lines.sort();
    assert_eq!(
        lines,
        [
            "Processing item apple",
            "Processing item banana",
            "Processing item cherry"
        ]
    );
    for j in r.jobs() {
        assert_eq!(j["metadata"]["labels"]["jobgroup"], "jobexample");
        assert_eq!(outcome(&j).0, "Complete");
    }
}

#[test]
fn expand_prints_the_tutorials_manifests() {
    let r = run(&[
        "expand",
        &example("job-tmpl.yaml"),
        "--item",
        "apple",
        "--item",
        "banana,split",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("name: process-item-apple")
            && r.stdout.contains("name: process-item-banana,split"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("$ITEM"));
    let r = run(&["expand", &example("job.yaml.jinja2")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for fruit in ["Apple", "Banana", "Cherry"] {
        assert!(
            r.stdout.contains(&format!(
                "echo Processing URL http://dbpedia.org/resource/{fruit}"
            )),
            "{}",
            r.stdout
        );
    }
}

#[test]
fn jinja_template_runs_three_jobs() {
    let r = run(&[
        "run",
        "-f",
        &example("job.yaml.jinja2"),
        "--local",
        "-o",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.jobs().len(), 3);
    let mut lines = r.pod_lines();
    lines.sort();
    assert_eq!(lines[0], "Processing URL http://dbpedia.org/resource/Apple");
    assert_eq!(lines.len(), 3);
}

#[test]
fn pod_failure_policy_fails_the_job_on_exit_code_42() {
    let r = run(&[
        "run",
        "-f",
        &example("pod-failure-policy-failjob.yaml"),
        "--local",
        "-o",
        "json",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let job = &r.jobs()[0];
    let (ty, reason, message) = outcome(job);
    assert_eq!(
        (ty.as_str(), reason.as_str()),
        ("Failed", "PodFailurePolicy")
    );
    let rest = message
        .strip_prefix("Container main for pod default/job-pod-failure-policy-failjob-")
        .unwrap_or_else(|| panic!("message: {message}"));
    assert_eq!(
        rest.len(),
        5 + " failed with exit code 42 matching FailJob rule at index 0".len(),
        "{message}"
    );
    assert!(
        rest.ends_with(" failed with exit code 42 matching FailJob rule at index 0"),
        "{message}"
    );
    // No retry: only the first two pods (parallelism 2) were ever created.
    let created = r
        .stderr
        .lines()
        .filter(|l| l.contains(": Created pod: "))
        .count();
    assert_eq!(created, 2, "{}", r.stderr);
    assert_eq!(job["status"]["succeeded"], 0);
    let types: Vec<&str> = job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, ["FailureTarget", "Failed"]);
}

#[test]
fn cronjob_runs_its_job() {
    let r = run(&[
        "run",
        "-f",
        &example("cronjob.yaml"),
        "--local",
        "--start-now",
        "--runs",
        "1",
        "-o",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let jobs = r.jobs();
    assert_eq!(jobs.len(), 1);
    let name = jobs[0]["metadata"]["name"].as_str().unwrap_or("");
    let minutes = name
        .strip_prefix("hello-")
        .unwrap_or_else(|| panic!("{name}"));
    assert!(minutes.parse::<u64>().is_ok(), "{name}");
    assert!(
        r.pod_lines()
            .contains(&"Hello from the Kubernetes cluster".to_string()),
        "{}",
        r.stderr
    );
    assert_eq!(outcome(&jobs[0]).0, "Complete");
}
