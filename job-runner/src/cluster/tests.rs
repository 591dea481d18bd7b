use super::*;

fn job(status: &str) -> Job {
    serde_saphyr::from_str(&format!(
        "metadata: {{name: j}}\nspec:\n  completions: 2\n  template: {{}}\nstatus: {status}\n"
    ))
    .expect("test yaml")
}

fn stats(pending: u64, leased: u64, drained: bool) -> worker_sdk::Stats {
    worker_sdk::Stats {
        queue: "q".into(),
        enqueued: 3,
        pending,
        delayed: 0,
        leased,
        completed: 3 - pending - leased,
        dead: 0,
        retried: 0,
        sealed: true,
        drained,
        state: if drained {
            worker_sdk::QueueState::Drained
        } else {
            worker_sdk::QueueState::Sealed
        },
    }
}

#[test]
fn decide_table() {
    let complete = "{succeeded: 2, conditions: [{type: Complete, status: \"True\"}]}";
    let failed =
        "{failed: 1, conditions: [{type: Failed, status: \"True\", reason: BackoffLimitExceeded}]}";
    let running = "{active: 2}";
    let one_done = "{active: 1, succeeded: 1}";
    let one_failed = "{active: 1, succeeded: 1, failed: 1}";
    let finish = |unfinished| move |d: &Decision| matches!(d, Decision::Finish { unfinished: u, .. } if *u == unfinished);
    type Check = Box<dyn Fn(&Decision) -> bool>;
    let cases: Vec<(&str, &str, bool, Option<worker_sdk::Stats>, Check)> = vec![
        (
            "no queue, complete",
            complete,
            false,
            None,
            Box::new(finish(false)),
        ),
        (
            "no queue, running",
            running,
            false,
            None,
            Box::new(|d| *d == Decision::Wait),
        ),
        (
            "complete, queue unseen",
            complete,
            true,
            None,
            Box::new(|d| *d == Decision::Wait),
        ),
        (
            "complete, drained",
            complete,
            true,
            Some(stats(0, 0, true)),
            Box::new(finish(false)),
        ),
        (
            "complete, work left (caveat 1)",
            complete,
            true,
            Some(stats(1, 0, false)),
            Box::new(
                |d| matches!(d, Decision::Finish { unfinished: true, note: Some(n) } if n.contains("1 item(s) that no pod will take")),
            ),
        ),
        (
            "failed, work left",
            failed,
            true,
            Some(stats(2, 0, false)),
            Box::new(
                |d| matches!(d, Decision::Finish { unfinished: true, note: Some(n) } if n.contains("failed with 2 item(s)")),
            ),
        ),
        (
            "running, work left",
            running,
            true,
            Some(stats(1, 1, false)),
            Box::new(|d| *d == Decision::Wait),
        ),
        (
            "drained, pods wait (caveat 2)",
            one_done,
            true,
            Some(stats(0, 0, true)),
            Box::new(|d| *d == Decision::Idle { active: 1 }),
        ),
        (
            "drained, a pod failed",
            one_failed,
            true,
            Some(stats(0, 0, true)),
            Box::new(|d| *d == Decision::Wait),
        ),
        (
            "drained, nothing succeeded yet",
            running,
            true,
            Some(stats(0, 0, true)),
            Box::new(|d| *d == Decision::Wait),
        ),
    ];
    for (name, status, has_queue, s, check) in cases {
        let d = decide(&job(status), has_queue, s.as_ref());
        assert!(check(&d), "{name}: {d:?}");
    }
}

#[test]
fn suspended_jobs_are_not_waited_for() {
    let j: Job =
        serde_saphyr::from_str("metadata: {name: j}\nspec:\n  suspend: true\n  template: {}\n")
            .expect("yaml");
    assert!(matches!(
        decide(&j, false, None),
        Decision::Finish {
            unfinished: false,
            ..
        }
    ));
}

#[test]
fn jobs_table_reads_like_kubectl() {
    let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().expect("ts");
    let j: Job = serde_saphyr::from_str(
        "metadata: {name: job-wq-1, creationTimestamp: \"2026-01-01T00:00:00Z\"}\nspec:\n  completions: 8\n  template: {}\nstatus:\n  succeeded: 8\n  startTime: \"2026-01-01T00:00:01Z\"\n  completionTime: \"2026-01-01T00:00:31Z\"\n  conditions: [{type: Complete, status: \"True\"}]\n",
    )
    .expect("yaml");
    let table = jobs_table(&[j], now);
    assert_eq!(
        table,
        "NAME       STATUS     COMPLETIONS   DURATION   AGE\njob-wq-1   Complete   8/8           30s        10m0s\n"
    );
}
