use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse().expect("test timestamp")
}

#[test]
fn every_minute() {
    let s = Schedule::parse("* * * * *", Some("UTC")).expect("parses");
    assert_eq!(
        s.next_after(ts("2026-01-01T10:00:30Z")),
        Some(ts("2026-01-01T10:01:00Z"))
    );
    assert_eq!(
        s.next_after(ts("2026-01-01T10:01:00Z")),
        Some(ts("2026-01-01T10:02:00Z"))
    );
}

#[test]
fn time_zone_is_honoured() {
    let s = Schedule::parse("0 9 * * *", Some("Europe/Paris")).expect("parses");
    // 09:00 in Paris in January is 08:00 UTC.
    assert_eq!(
        s.next_after(ts("2026-01-01T00:00:00Z")),
        Some(ts("2026-01-01T08:00:00Z"))
    );
    assert_eq!(s.time_zone(), "Europe/Paris");
}

#[test]
fn refusals_name_the_field() {
    for (sched, tz, want) in [
        ("* * * *", None, "expected exactly 5 fields"),
        ("0 0 * * * *", None, "expected exactly 5 fields"),
        ("61 * * * *", None, "spec.schedule: Invalid value"),
        ("TZ=UTC * * * * *", None, "use timeZone field"),
        (
            "* * * * *",
            Some("Mars/Olympus"),
            "spec.timeZone: Invalid value",
        ),
    ] {
        let err = Schedule::parse(sched, tz).expect_err(sched);
        assert!(err.contains(want), "{sched}: {err}");
    }
}

#[test]
fn concurrency_and_starting_deadline() {
    use std::time::Duration;
    let s = Duration::from_secs;
    let table = [
        (None, 0, s(0), None, Decision::Run),
        (None, 2, s(0), None, Decision::Run),
        (Some("Allow"), 1, s(0), None, Decision::Run),
        (Some("Forbid"), 0, s(0), None, Decision::Run),
        (Some("Forbid"), 1, s(0), None, Decision::SkipActive),
        (Some("Replace"), 1, s(0), None, Decision::ReplaceThenRun),
        (Some("Replace"), 0, s(0), None, Decision::Run),
        (None, 0, s(30), Some(10), Decision::SkipMissed),
        (Some("Forbid"), 1, s(30), Some(10), Decision::SkipMissed),
        (None, 0, s(5), Some(10), Decision::Run),
    ];
    for (policy, active, late, deadline, want) in table {
        assert_eq!(
            decide(policy, active, late, deadline),
            want,
            "{policy:?} {active} {late:?} {deadline:?}"
        );
    }
}

#[test]
fn history_limits_keep_the_newest() {
    let (ok, failed) = (Some(true), Some(false));
    assert_eq!(
        history_removed(&[ok, ok, failed, ok, ok, failed, None], 3, 1),
        [0, 2]
    );
    assert_eq!(history_removed(&[ok, failed], 0, 0), [0, 1]);
    assert_eq!(history_removed(&[None, None], 0, 0), Vec::<usize>::new());
}

#[test]
fn job_names_use_minutes_since_epoch() {
    assert_eq!(job_name("hello", ts("1970-01-01T01:00:00Z")), "hello-60");
}
