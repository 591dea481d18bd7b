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

fn every_minute_utc() -> Schedule {
    Schedule::parse("* * * * *", Some("UTC")).expect("parses")
}

fn input<'a>(schedule: &'a Schedule, policy: Option<&'a str>) -> SyncInput<'a> {
    SyncInput {
        schedule,
        policy,
        starting_deadline_seconds: None,
        created: ts("2026-01-01T10:00:00Z"),
        last_schedule: None,
        active: 0,
        now: ts("2026-01-01T10:00:30Z"),
    }
}

#[test]
fn nothing_is_due_before_the_first_scheduled_time() {
    let s = every_minute_utc();
    assert_eq!(sync(&input(&s, None)).action, Action::Wait);
}

#[test]
fn a_due_time_starts_a_job_named_for_it() {
    let s = every_minute_utc();
    let mut i = input(&s, None);
    i.now = ts("2026-01-01T10:01:00.2Z");
    let r = sync(&i);
    let scheduled = ts("2026-01-01T10:01:00Z");
    assert_eq!(
        r,
        Sync {
            action: Action::Start {
                scheduled,
                replace: false
            },
            too_many_missed: None
        }
    );
    let name = job_name("hello", scheduled);
    assert_eq!(
        r.action.event(&name),
        Some(("SuccessfulCreate", format!("Created job {name}")))
    );
    // The same time is not started twice once lastScheduleTime records it.
    i.last_schedule = Some(scheduled);
    assert_eq!(sync(&i).action, Action::Wait);
}

/// Forbid: a tick while a Job runs is `JobAlreadyActive` and leaves
/// lastScheduleTime alone; the sync after the Job ends starts that
/// scheduled time late.
#[test]
fn forbid_starts_a_skipped_run_late_once_the_job_ends() {
    let s = every_minute_utc();
    let mut i = input(&s, Some("Forbid"));
    i.last_schedule = Some(ts("2026-01-01T10:01:00Z"));
    i.active = 1;
    i.now = ts("2026-01-01T10:02:00Z");
    let r = sync(&i);
    let skipped = ts("2026-01-01T10:02:00Z");
    assert_eq!(r.action, Action::SkipActive { scheduled: skipped });
    assert_eq!(
        r.action.event("unused"),
        Some((
            "JobAlreadyActive",
            "Not starting job because prior execution is running and concurrency policy is Forbid"
                .to_string()
        ))
    );
    // The Job ends 25 s later; lastScheduleTime is still 10:01.
    i.active = 0;
    i.now = ts("2026-01-01T10:02:25Z");
    assert_eq!(
        sync(&i).action,
        Action::Start {
            scheduled: skipped,
            replace: false
        }
    );
}

/// Forbid with startingDeadlineSeconds: the late start happens only within
/// the deadline; past it the time is missed (`MissSchedule`).
#[test]
fn forbid_late_start_respects_the_starting_deadline() {
    let s = every_minute_utc();
    let mut i = input(&s, Some("Forbid"));
    i.last_schedule = Some(ts("2026-01-01T10:01:00Z"));
    i.starting_deadline_seconds = Some(20);
    i.now = ts("2026-01-01T10:02:15Z");
    assert_eq!(
        sync(&i).action,
        Action::Start {
            scheduled: ts("2026-01-01T10:02:00Z"),
            replace: false
        }
    );
    i.now = ts("2026-01-01T10:02:25Z");
    let r = sync(&i);
    assert_eq!(
        r.action,
        Action::Missed {
            scheduled: ts("2026-01-01T10:02:00Z")
        }
    );
    assert_eq!(
        r.action.event("unused"),
        Some((
            "MissSchedule",
            "Missed scheduled time to start a job: Thu, 01 Jan 2026 10:02:00 +0000".to_string()
        ))
    );
}

/// A runner stalled for two minutes and a half: only the most recent missed
/// time starts, one Job.
#[test]
fn missed_schedules_start_only_the_most_recent() {
    let s = every_minute_utc();
    let mut i = input(&s, None);
    i.last_schedule = Some(ts("2026-01-01T10:01:00Z"));
    i.now = ts("2026-01-01T10:03:30Z");
    assert_eq!(
        most_recent(&s, ts("2026-01-01T10:01:00Z"), i.now),
        Some((ts("2026-01-01T10:03:00Z"), 2))
    );
    assert_eq!(
        sync(&i),
        Sync {
            action: Action::Start {
                scheduled: ts("2026-01-01T10:03:00Z"),
                replace: false
            },
            too_many_missed: None
        }
    );
}

/// More than 100 missed times: `TooManyMissedTimes` with the count, and the
/// most recent still starts; exactly 100 does not warn.
#[test]
fn too_many_missed_times_warns_with_the_count() {
    let s = every_minute_utc();
    let mut i = input(&s, None);
    i.last_schedule = Some(ts("2026-01-01T10:00:00Z"));
    i.now = ts("2026-01-01T11:40:30Z");
    assert_eq!(sync(&i).too_many_missed, None, "100 missed");
    i.now = ts("2026-01-01T12:00:30Z");
    let r = sync(&i);
    assert_eq!(r.too_many_missed, Some(120));
    assert_eq!(
        r.action,
        Action::Start {
            scheduled: ts("2026-01-01T12:00:00Z"),
            replace: false
        }
    );
    assert_eq!(
        too_many_missed_message(120),
        "too many missed start times: 120. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
    );
    // A starting deadline narrows what is counted.
    i.starting_deadline_seconds = Some(600);
    assert_eq!(sync(&i).too_many_missed, None);
}

#[test]
fn irregular_schedules_find_the_exact_most_recent_time() {
    // Weekdays at 09:00 UTC: from Friday 2 Jan 2026 to Tuesday 13 Jan 10:00.
    let s = Schedule::parse("0 9 * * 1-5", Some("UTC")).expect("parses");
    let (last, n) = most_recent(&s, ts("2026-01-01T12:00:00Z"), ts("2026-01-13T10:00:00Z"))
        .expect("some are due");
    assert_eq!(last, ts("2026-01-13T09:00:00Z"));
    assert!(n >= 1);
}

#[test]
fn replace_deletes_active_jobs_first() {
    let s = every_minute_utc();
    let mut i = input(&s, Some("Replace"));
    i.active = 2;
    i.now = ts("2026-01-01T10:01:01Z");
    assert_eq!(
        sync(&i).action,
        Action::Start {
            scheduled: ts("2026-01-01T10:01:00Z"),
            replace: true
        }
    );
    i.policy = Some("Allow");
    assert_eq!(
        sync(&i).action,
        Action::Start {
            scheduled: ts("2026-01-01T10:01:00Z"),
            replace: false
        }
    );
}
