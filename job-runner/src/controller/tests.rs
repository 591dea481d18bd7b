use super::*;
use k8s_openapi::api::batch::v1::{JobSpec, JobStatus};

fn config() -> JobConfig {
    JobConfig {
        name: "j".into(),
        namespace: "default".into(),
        completions: Some(1),
        parallelism: 1,
        indexed: false,
        backoff_limit: DEFAULT_BACKOFF_LIMIT,
        backoff_limit_per_index: None,
        max_failed_indexes: None,
        active_deadline: None,
        restart_on_failure: false,
        rules: Vec::new(),
        pod_backoff: Duration::from_secs(10),
        success_rules: Vec::new(),
        replace_terminating: true,
    }
}

fn exit(pod: &str, index: Option<u32>, code: i32) -> PodResult {
    PodResult {
        pod: pod.into(),
        index,
        succeeded: code == 0,
        containers: vec![ContainerExit {
            name: "main".into(),
            exit_code: code,
            init: false,
        }],
        conditions: Vec::new(),
        reason: None,
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Creates every pod `reconcile` asks for, naming them `p<N>`.
fn start(state: &mut JobState, now: Duration, next: &mut u32) -> Vec<(String, Option<u32>)> {
    let r = state.reconcile(now);
    r.create
        .into_iter()
        .map(|index| {
            *next += 1;
            let name = format!("p{next}");
            state.pod_created(&name, index, now);
            (name, index)
        })
        .collect()
}

#[test]
fn completions_and_parallelism() {
    let mut s = JobState::new(JobConfig {
        completions: Some(5),
        parallelism: 2,
        ..config()
    });
    let mut n = 0;
    let pods = start(&mut s, secs(0), &mut n);
    assert_eq!(pods.len(), 2);
    s.pod_finished(&exit(&pods[0].0, None, 0), secs(1));
    assert_eq!(start(&mut s, secs(1), &mut n).len(), 1);
    for p in ["p2", "p3"] {
        s.pod_finished(&exit(p, None, 0), secs(2));
    }
    assert_eq!(
        start(&mut s, secs(2), &mut n).len(),
        2,
        "min(parallelism, remaining)"
    );
    s.pod_finished(&exit("p4", None, 0), secs(3));
    assert_eq!(
        s.reconcile(secs(3)).create.len(),
        0,
        "one left, one running"
    );
    s.pod_finished(&exit("p5", None, 0), secs(4));
    let f = s.finish.clone().expect("finished");
    assert!(f.complete);
    assert_eq!(s.succeeded, 5);
}

#[test]
fn completions_unset_waits_for_every_pod_after_a_success() {
    let mut s = JobState::new(JobConfig {
        completions: None,
        parallelism: 3,
        ..config()
    });
    let mut n = 0;
    assert_eq!(start(&mut s, secs(0), &mut n).len(), 3);
    s.pod_finished(&exit("p1", None, 1), secs(1));
    assert_eq!(
        start(&mut s, secs(20), &mut n).len(),
        1,
        "a failure is replaced"
    );
    s.pod_finished(&exit("p2", None, 0), secs(21));
    assert!(s.finish.is_none(), "others still running");
    assert_eq!(
        s.reconcile(secs(21)).create.len(),
        0,
        "no new pod after a success"
    );
    s.pod_finished(&exit("p3", None, 0), secs(22));
    s.pod_finished(&exit("p4", None, 0), secs(23));
    assert!(s.finish.as_ref().is_some_and(|f| f.complete));
    assert_eq!((s.succeeded, s.failed), (3, 1));
}

#[test]
fn backoff_limit_counts_failures_and_delays_grow() {
    let mut s = JobState::new(JobConfig {
        backoff_limit: 2,
        ..config()
    });
    let mut n = 0;
    let mut now = secs(0);
    let mut delays = Vec::new();
    for round in 0..3 {
        let pods = start(&mut s, now, &mut n);
        assert_eq!(pods.len(), 1, "round {round}");
        let v = s.pod_finished(&exit(&pods[0].0, None, 1), now);
        if round < 2 {
            assert_eq!(v, Verdict::Counted);
            let r = s.reconcile(now);
            assert!(r.create.is_empty(), "back-off first");
            let wake = r.wake_at.expect("wakes after back-off");
            delays.push(wake - now);
            now = wake;
        } else {
            assert_eq!(v, Verdict::JobFailed);
        }
    }
    assert_eq!(delays, [secs(10), secs(20)]);
    let f = s.finish.expect("failed");
    assert_eq!(f.reason, "BackoffLimitExceeded");
    assert_eq!(f.message, "Job has reached the specified backoff limit");
    assert_eq!(s.failed, 3);
}

#[test]
fn backoff_delay_is_capped() {
    let base = secs(10);
    let table = [
        (0, 0),
        (1, 10),
        (2, 20),
        (3, 40),
        (6, 320),
        (7, 600),
        (8, 600),
        (30, 600),
    ];
    for (n, want) in table {
        assert_eq!(JobState::backoff_delay(base, n), secs(want), "n={n}");
    }
}

#[test]
fn backoff_limit_zero_fails_at_the_first_failure() {
    let mut s = JobState::new(JobConfig {
        backoff_limit: 0,
        ..config()
    });
    let mut n = 0;
    start(&mut s, secs(0), &mut n);
    assert_eq!(
        s.pod_finished(&exit("p1", None, 3), secs(1)),
        Verdict::JobFailed
    );
}

#[test]
fn indexed_creates_lowest_indexes_and_reports_them() {
    let mut s = JobState::new(JobConfig {
        completions: Some(5),
        parallelism: 3,
        indexed: true,
        ..config()
    });
    let mut n = 0;
    let pods = start(&mut s, secs(0), &mut n);
    assert_eq!(
        pods.iter().map(|p| p.1).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );
    s.pod_finished(&exit("p2", Some(1), 0), secs(1));
    s.pod_finished(&exit("p1", Some(0), 1), secs(1));
    let pods = start(&mut s, secs(20), &mut n);
    assert_eq!(
        pods.iter().map(|p| p.1).collect::<Vec<_>>(),
        [Some(0), Some(3)]
    );
    assert_eq!(s.completed_indexes(), "1");
    for (p, i) in [("p3", 2), ("p4", 0), ("p5", 3)] {
        s.pod_finished(&exit(p, Some(i), 0), secs(21));
    }
    assert_eq!(s.completed_indexes(), "0-3");
    let pods = start(&mut s, secs(21), &mut n);
    assert_eq!(pods, [("p6".to_string(), Some(4))]);
    s.pod_finished(&exit("p6", Some(4), 0), secs(22));
    assert!(s.finish.as_ref().is_some_and(|f| f.complete));
    let status = s.status(jiff::Timestamp::UNIX_EPOCH);
    assert_eq!(status.completed_indexes.as_deref(), Some("0-4"));
    assert_eq!(status.succeeded, Some(5));
    assert_eq!(status.failed, Some(1));
    let types: Vec<_> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(types, ["SuccessCriteriaMet", "Complete"]);
}

#[test]
fn backoff_limit_per_index_and_max_failed_indexes() {
    let cfg = JobConfig {
        completions: Some(3),
        parallelism: 3,
        indexed: true,
        backoff_limit: u32::MAX,
        backoff_limit_per_index: Some(1),
        pod_backoff: Duration::ZERO,
        ..config()
    };
    // Index 1 fails twice: failed for good; the others succeed.
    let mut s = JobState::new(cfg.clone());
    let mut n = 0;
    start(&mut s, secs(0), &mut n);
    assert_eq!(
        s.pod_finished(&exit("p2", Some(1), 1), secs(1)),
        Verdict::Counted
    );
    let again = start(&mut s, secs(1), &mut n);
    assert_eq!(again, [("p4".to_string(), Some(1))]);
    assert_eq!(
        s.pod_finished(&exit("p4", Some(1), 1), secs(2)),
        Verdict::IndexFailed
    );
    assert!(
        start(&mut s, secs(2), &mut n).is_empty(),
        "a failed index is not retried"
    );
    s.pod_finished(&exit("p1", Some(0), 0), secs(3));
    assert!(s.finish.is_none());
    s.pod_finished(&exit("p3", Some(2), 0), secs(3));
    let f = s.finish.clone().expect("done");
    assert_eq!((f.complete, f.reason.as_str()), (false, "FailedIndexes"));
    assert_eq!(
        s.status(jiff::Timestamp::UNIX_EPOCH)
            .failed_indexes
            .as_deref(),
        Some("1")
    );

    // maxFailedIndexes 0: the first failed index fails the Job.
    let mut s = JobState::new(JobConfig {
        max_failed_indexes: Some(0),
        backoff_limit_per_index: Some(0),
        ..cfg
    });
    start(&mut s, secs(0), &mut n);
    assert_eq!(
        s.pod_finished(&exit("p5", Some(0), 1), secs(1)),
        Verdict::JobFailed
    );
    assert!(s.reconcile(secs(1)).terminate_active);
    assert_eq!(s.finish.expect("failed").reason, "MaxFailedIndexesExceeded");
}

fn rules(list: &[(RuleAction, Matcher)]) -> Vec<Rule> {
    list.iter()
        .map(|(action, matcher)| Rule {
            action: *action,
            matcher: matcher.clone(),
        })
        .collect()
}

fn codes(container: Option<&str>, not_in: bool, values: &[i32]) -> Matcher {
    Matcher::ExitCodes {
        container: container.map(String::from),
        not_in,
        values: values.to_vec(),
    }
}

#[test]
fn rule_matching_takes_the_first_match_in_order() {
    let disruption = Matcher::Conditions(vec![("DisruptionTarget".into(), "True".into())]);
    type Case = (Vec<Rule>, PodResult, Option<(usize, RuleAction)>);
    let table: Vec<Case> = vec![
        (
            rules(&[(RuleAction::FailJob, codes(Some("main"), false, &[42]))]),
            exit("a", None, 42),
            Some((0, RuleAction::FailJob)),
        ),
        (
            rules(&[(RuleAction::FailJob, codes(Some("other"), false, &[42]))]),
            exit("a", None, 42),
            None,
        ),
        (
            rules(&[(RuleAction::FailJob, codes(None, true, &[1, 2]))]),
            exit("a", None, 3),
            Some((0, RuleAction::FailJob)),
        ),
        (
            rules(&[(RuleAction::FailJob, codes(None, true, &[1, 2]))]),
            exit("a", None, 2),
            None,
        ),
        (
            rules(&[
                (RuleAction::Ignore, codes(None, false, &[1])),
                (RuleAction::FailJob, codes(None, false, &[1])),
            ]),
            exit("a", None, 1),
            Some((0, RuleAction::Ignore)),
        ),
        (
            rules(&[
                (RuleAction::Count, codes(None, false, &[5])),
                (RuleAction::Ignore, disruption.clone()),
            ]),
            PodResult {
                conditions: vec![("DisruptionTarget".into(), "True".into())],
                ..exit("a", None, 143)
            },
            Some((1, RuleAction::Ignore)),
        ),
        (
            rules(&[(RuleAction::Ignore, disruption)]),
            exit("a", None, 143),
            None,
        ),
    ];
    for (i, (rules, pod, want)) in table.into_iter().enumerate() {
        let s = JobState::new(JobConfig { rules, ..config() });
        let got = s.match_rule(&pod).map(|(i, a, _)| (i, a));
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn exit_code_zero_never_matches_and_init_containers_come_last() {
    let s = JobState::new(JobConfig {
        rules: rules(&[(RuleAction::FailJob, codes(None, true, &[7]))]),
        ..config()
    });
    let pod = PodResult {
        pod: "a".into(),
        index: None,
        succeeded: false,
        containers: vec![
            ContainerExit {
                name: "init".into(),
                exit_code: 3,
                init: true,
            },
            ContainerExit {
                name: "main".into(),
                exit_code: 0,
                init: false,
            },
            ContainerExit {
                name: "side".into(),
                exit_code: 9,
                init: false,
            },
        ],
        conditions: vec![],
        reason: None,
    };
    let (_, _, msg) = s.match_rule(&pod).expect("matches");
    assert_eq!(
        msg,
        "Container side for pod default/a failed with exit code 9 matching FailJob rule at index 0"
    );
}

#[test]
fn fail_job_rule_fails_at_once_with_kubernetes_message() {
    let mut s = JobState::new(JobConfig {
        completions: Some(8),
        parallelism: 2,
        rules: rules(&[(RuleAction::FailJob, codes(Some("main"), false, &[42]))]),
        ..config()
    });
    let mut n = 0;
    start(&mut s, secs(0), &mut n);
    assert_eq!(
        s.pod_finished(&exit("p1", None, 42), secs(30)),
        Verdict::JobFailed
    );
    let r = s.reconcile(secs(30));
    assert!(r.terminate_active && r.create.is_empty());
    let f = s.finish.clone().expect("failed");
    assert_eq!(f.reason, "PodFailurePolicy");
    assert_eq!(
        f.message,
        "Container main for pod default/p1 failed with exit code 42 matching FailJob rule at index 0"
    );
    assert_eq!(
        s.pod_finished(&exit("p2", None, 143), secs(31)),
        Verdict::AfterFinish
    );
    let status = s.status(jiff::Timestamp::UNIX_EPOCH);
    assert_eq!(status.failed, Some(2));
    let types: Vec<_> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(types, ["FailureTarget", "Failed"]);
}

#[test]
fn ignored_disruption_does_not_count() {
    let mut s = JobState::new(JobConfig {
        backoff_limit: 0,
        rules: rules(&[(
            RuleAction::Ignore,
            Matcher::Conditions(vec![("DisruptionTarget".into(), "True".into())]),
        )]),
        ..config()
    });
    let mut n = 0;
    start(&mut s, secs(0), &mut n);
    let evicted = PodResult {
        conditions: vec![("DisruptionTarget".into(), "True".into())],
        ..exit("p1", None, 143)
    };
    assert_eq!(
        s.pod_finished(&evicted, secs(1)),
        Verdict::Ignored { rule: 0 }
    );
    assert_eq!(s.failed, 0);
    // Not counted, but the back-off applies (as `newBackoffRecord`).
    assert!(start(&mut s, secs(1), &mut n).is_empty(), "back-off");
    assert_eq!(s.reconcile(secs(1)).wake_at, Some(secs(11)));
    let again = start(&mut s, secs(11), &mut n);
    assert_eq!(again.len(), 1, "replaced after 10 s");
    s.pod_finished(&exit("p2", None, 0), secs(12));
    assert!(s.finish.expect("done").complete);
}

#[test]
fn deadline_fails_the_job() {
    let mut s = JobState::new(JobConfig {
        active_deadline: Some(secs(5)),
        ..config()
    });
    let mut n = 0;
    start(&mut s, secs(0), &mut n);
    assert_eq!(s.reconcile(secs(1)).wake_at, Some(secs(5)));
    let r = s.reconcile(secs(5));
    assert!(r.terminate_active);
    let f = s.finish.expect("failed");
    assert_eq!(
        (f.reason.as_str(), f.message.as_str()),
        (
            "DeadlineExceeded",
            "Job was active longer than specified deadline"
        )
    );
}

#[test]
fn on_failure_restarts_count_toward_the_limit() {
    let mut s = JobState::new(JobConfig {
        backoff_limit: 2,
        restart_on_failure: true,
        ..config()
    });
    assert!(s.container_restarting(secs(1)));
    assert!(s.container_restarting(secs(2)));
    assert!(!s.container_restarting(secs(3)));
    assert_eq!(s.finish.expect("failed").reason, "BackoffLimitExceeded");
}

#[test]
fn ranges_format_like_kubernetes() {
    let set: BTreeSet<u32> = [0, 1, 2, 4, 6, 7].into();
    assert_eq!(format_ranges(&set), "0-2,4,6-7");
    assert_eq!(format_ranges(&BTreeSet::new()), "");
}

#[test]
fn defaults_from_spec() {
    let spec: JobSpec = serde_saphyr::from_str(
        "template:\n  spec:\n    restartPolicy: OnFailure\n    containers: [{name: c}]\n",
    )
    .expect("parses");
    let c = JobConfig::from_spec("j", "default", &spec, DEFAULT_POD_BACKOFF);
    assert_eq!(
        (
            c.completions,
            c.parallelism,
            c.backoff_limit,
            c.restart_on_failure
        ),
        (None, 1, 6, true)
    );
}

fn condition(status: &JobStatus, ty: &str) -> Option<(String, String, jiff::Timestamp)> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == ty)
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
                c.last_transition_time
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or_default(),
            )
        })
}

fn at(s: u64) -> jiff::Timestamp {
    jiff::Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(i64::try_from(s).unwrap_or(0))
}

#[test]
fn success_policy_matches_and_terminates_the_rest() {
    let mut s = JobState::new(JobConfig {
        indexed: true,
        completions: Some(4),
        parallelism: 4,
        success_rules: vec![
            SuccessRule {
                indexes: None,
                count: Some(3),
            },
            SuccessRule {
                indexes: Some(parse_ranges("0-1")),
                count: Some(1),
            },
        ],
        ..config()
    });
    let mut n = 0;
    let pods = start(&mut s, secs(0), &mut n);
    assert_eq!(pods.len(), 4);
    assert_eq!(
        s.pod_finished(&exit("p1", Some(0), 0), secs(2)),
        Verdict::Succeeded
    );
    let r = s.reconcile(secs(2));
    assert!(r.terminate_active && r.create.is_empty());
    let status = s.status(jiff::Timestamp::UNIX_EPOCH);
    assert_eq!(
        condition(&status, "SuccessCriteriaMet"),
        Some((
            "SuccessPolicy".into(),
            "Matched rules at index 1".into(),
            at(2)
        ))
    );
    assert_eq!(condition(&status, "Complete"), None, "pods still running");
    for (pod, i) in [("p2", 1), ("p3", 2), ("p4", 3)] {
        assert_eq!(s.pod_terminating(pod, secs(2), false), None);
        assert_eq!(
            s.pod_finished(&exit(pod, Some(i), 143), secs(3)),
            Verdict::AfterFinish
        );
    }
    let status = s.status(jiff::Timestamp::UNIX_EPOCH);
    assert_eq!(
        condition(&status, "Complete"),
        Some((
            "SuccessPolicy".into(),
            "Matched rules at index 1".into(),
            at(3)
        ))
    );
    assert_eq!(status.completion_time.map(|t| t.0), Some(at(3)));
    assert_eq!(
        (status.succeeded, status.failed, status.active),
        (Some(1), Some(3), Some(0))
    );
    assert_eq!(status.completed_indexes.as_deref(), Some("0"));
}

#[test]
fn success_policy_by_indexes_waits_for_every_listed_index() {
    let rule = SuccessRule {
        indexes: Some(parse_ranges("0,2-3")),
        count: None,
    };
    assert!(!rule.matches(&parse_ranges("0,2")));
    assert!(rule.matches(&parse_ranges("0,2-3")));
    let count_only = SuccessRule {
        indexes: None,
        count: Some(2),
    };
    assert!(!count_only.matches(&parse_ranges("5")));
    assert!(count_only.matches(&parse_ranges("1,5")));
}

#[test]
fn per_index_backoff_counts_each_index_alone() {
    let mut s = JobState::new(JobConfig {
        indexed: true,
        completions: Some(3),
        parallelism: 3,
        backoff_limit_per_index: Some(2),
        backoff_limit: u32::MAX,
        ..config()
    });
    let mut n = 0;
    let pods = start(&mut s, secs(0), &mut n);
    assert_eq!(
        s.pod_annotations(Some(0)),
        [(INDEX_FAILURE_COUNT.to_string(), "0".to_string())]
    );
    for (pod, i) in &pods {
        assert_eq!(s.pod_finished(&exit(pod, *i, 1), secs(1)), Verdict::Counted);
    }
    // Three failures, but one per index: each waits 10 s, not 40 s.
    assert!(start(&mut s, secs(10), &mut n).is_empty());
    assert_eq!(s.reconcile(secs(10)).wake_at, Some(secs(11)));
    let again = start(&mut s, secs(11), &mut n);
    assert_eq!(again.len(), 3);
    assert_eq!(
        s.pod_annotations(Some(1)),
        [(INDEX_FAILURE_COUNT.to_string(), "1".to_string())]
    );
    // Index 0 fails a second time: 20 s for it alone.
    s.pod_finished(&exit(&again[0].0, Some(0), 1), secs(12));
    assert_eq!(s.index_ready_at(0), Some(secs(32)));
    assert!(start(&mut s, secs(31), &mut n).is_empty());
    assert_eq!(start(&mut s, secs(32), &mut n).len(), 1);
}

#[test]
fn ignored_failures_set_the_ignored_count_annotation() {
    let mut s = JobState::new(JobConfig {
        indexed: true,
        completions: Some(1),
        backoff_limit_per_index: Some(1),
        backoff_limit: u32::MAX,
        rules: rules(&[(RuleAction::Ignore, codes(None, false, &[42]))]),
        ..config()
    });
    let mut n = 0;
    start(&mut s, secs(0), &mut n);
    assert_eq!(
        s.pod_finished(&exit("p1", Some(0), 42), secs(1)),
        Verdict::Ignored { rule: 0 }
    );
    assert_eq!(
        s.pod_annotations(Some(0)),
        [
            (INDEX_FAILURE_COUNT.to_string(), "0".to_string()),
            (INDEX_IGNORED_FAILURE_COUNT.to_string(), "1".to_string())
        ]
    );
    assert_eq!(s.index_ready_at(0), Some(secs(11)));
}

fn evicted(pod: &str) -> PodResult {
    PodResult {
        conditions: vec![("DisruptionTarget".into(), "True".into())],
        ..exit(pod, None, 143)
    }
}

#[test]
fn terminating_or_failed_replaces_a_terminating_pod() {
    let mut s = JobState::new(JobConfig {
        pod_backoff: Duration::ZERO,
        ..config()
    });
    let mut n = 0;
    start(&mut s, secs(0), &mut n);
    s.pod_ready("p1");
    assert_eq!(s.status(jiff::Timestamp::UNIX_EPOCH).ready, Some(1));
    assert_eq!(
        s.pod_terminating("p1", secs(1), true),
        Some(Verdict::Counted)
    );
    let status = s.status(jiff::Timestamp::UNIX_EPOCH);
    assert_eq!(
        (
            status.active,
            status.ready,
            status.terminating,
            status.failed
        ),
        (Some(0), Some(0), Some(1), Some(1))
    );
    let again = start(&mut s, secs(1), &mut n);
    assert_eq!(again.len(), 1, "replaced while p1 terminates");
    assert_eq!(s.terminating.len(), 1);
    // Its end is not counted a second time.
    assert_eq!(s.pod_finished(&evicted("p1"), secs(3)), Verdict::Counted);
    assert_eq!(s.failed, 1);
    assert_eq!(s.status(jiff::Timestamp::UNIX_EPOCH).terminating, Some(0));
}

#[test]
fn failed_policy_waits_for_the_terminating_pod() {
    let mut s = JobState::new(JobConfig {
        pod_backoff: Duration::ZERO,
        replace_terminating: false,
        ..config()
    });
    let mut n = 0;
    start(&mut s, secs(0), &mut n);
    assert_eq!(s.pod_terminating("p1", secs(1), true), None);
    assert_eq!(s.failed, 0, "not counted while terminating");
    assert!(start(&mut s, secs(1), &mut n).is_empty(), "waits");
    let status = s.status(jiff::Timestamp::UNIX_EPOCH);
    assert_eq!((status.active, status.terminating), (Some(0), Some(1)));
    assert_eq!(s.pod_finished(&evicted("p1"), secs(3)), Verdict::Counted);
    assert_eq!(s.failed, 1);
    assert_eq!(start(&mut s, secs(3), &mut n).len(), 1);
}

#[test]
fn failed_is_stamped_when_the_last_pod_is_gone() {
    let mut s = JobState::new(JobConfig {
        completions: Some(2),
        parallelism: 2,
        backoff_limit: 0,
        ..config()
    });
    let mut n = 0;
    start(&mut s, secs(0), &mut n);
    assert_eq!(
        s.pod_finished(&exit("p1", None, 1), secs(1)),
        Verdict::JobFailed
    );
    assert!(s.reconcile(secs(1)).terminate_active);
    s.pod_terminating("p2", secs(1), false);
    let status = s.status(jiff::Timestamp::UNIX_EPOCH);
    let reason = (
        "BackoffLimitExceeded".to_string(),
        "Job has reached the specified backoff limit".to_string(),
    );
    assert_eq!(
        condition(&status, "FailureTarget"),
        Some((reason.0.clone(), reason.1.clone(), at(1)))
    );
    assert_eq!(condition(&status, "Failed"), None);
    assert_eq!(status.terminating, Some(1));
    s.pod_finished(&exit("p2", None, 143), secs(4));
    let status = s.status(jiff::Timestamp::UNIX_EPOCH);
    assert_eq!(
        condition(&status, "Failed"),
        Some((reason.0, reason.1, at(4)))
    );
    assert_eq!(status.failed, Some(2));
    let last = s.events.last().expect("events");
    assert_eq!(
        (last.at, last.warning, last.reason.as_str()),
        (secs(4), true, "BackoffLimitExceeded"),
        "the warning event comes with the Failed condition"
    );
    assert_eq!(
        status.uncounted_terminated_pods,
        Some(Default::default()),
        "shown as {{}}"
    );
}
