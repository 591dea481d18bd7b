//! CronJob schedules: standard five-field cron (and `@hourly`-style macros) in
//! a time zone, as Kubernetes reads `spec.schedule` and `spec.timeZone`.

use std::str::FromStr;

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A parsed `schedule` with its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    tz: TimeZone,
    tz_name: String,
}

impl Schedule {
    /// Parses `schedule` (five fields) and `timeZone` (an IANA name; the
    /// local zone when unset). Errors are one line in Kubernetes' words.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, String> {
        if schedule.contains("TZ=") || schedule.contains("CRON_TZ=") {
            return Err(format!(
                "spec.schedule: Invalid value: {schedule:?}: cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
            ));
        }
        let fields = schedule.split_whitespace().count();
        if !schedule.trim_start().starts_with('@') && fields != 5 {
            return Err(format!(
                "spec.schedule: Invalid value: {schedule:?}: expected exactly 5 fields (minute hour day-of-month month day-of-week), found {fields}"
            ));
        }
        let cron = croner::Cron::from_str(schedule)
            .map_err(|e| format!("spec.schedule: Invalid value: {schedule:?}: {e}"))?;
        let (tz, tz_name) = match time_zone {
            Some(name) => (
                TimeZone::get(name).map_err(|_| {
                    format!("spec.timeZone: Invalid value: {name:?}: unknown time zone")
                })?,
                name.to_string(),
            ),
            None => (TimeZone::system(), "Local".to_string()),
        };
        Ok(Schedule { cron, tz, tz_name })
    }

    /// The time zone's name (`Local` when unset).
    pub fn time_zone(&self) -> &str {
        &self.tz_name
    }

    /// The first scheduled time strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let zoned = after.to_zoned(self.tz.clone());
        self.cron
            .find_next_occurrence(&zoned, false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The last scheduled time at or before `at`, if any within a year.
    pub fn last_at_or_before(&self, at: Timestamp) -> Option<Timestamp> {
        let zoned = at.to_zoned(self.tz.clone());
        self.cron
            .find_previous_occurrence(&zoned, true)
            .ok()
            .map(|z| z.timestamp())
    }
}

/// The name of the Job a CronJob creates for a scheduled time: the CronJob's
/// name and the time in minutes since the epoch, as the CronJob controller
/// names them (`hello-29366400`).
pub fn job_name(cron_name: &str, scheduled: Timestamp) -> String {
    format!("{cron_name}-{}", scheduled.as_second().div_euclid(60))
}

/// Beyond this many missed schedules the CronJob controller warns
/// `TooManyMissedTimes` (it still starts the most recent one).
pub const MANY_MISSED: u64 = 100;

/// What the CronJob controller knows when it syncs a CronJob.
#[derive(Debug, Clone, Copy)]
pub struct SyncInput<'a> {
    /// The parsed `schedule` and `timeZone`.
    pub schedule: &'a Schedule,
    /// `concurrencyPolicy` (`Allow` when unset).
    pub policy: Option<&'a str>,
    /// `startingDeadlineSeconds`.
    pub starting_deadline_seconds: Option<i64>,
    /// When the CronJob was created (locally: when the run began).
    pub created: Timestamp,
    /// `status.lastScheduleTime`: the scheduled time of the last Job started.
    pub last_schedule: Option<Timestamp>,
    /// How many of its Jobs are still active.
    pub active: usize,
    /// The time of this sync.
    pub now: Timestamp,
}

/// What a sync decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No unmet schedule: wait for the next scheduled time.
    Wait,
    /// Start the Job for `scheduled` (after deleting the active Jobs when
    /// `replace`, `concurrencyPolicy: Replace`); `lastScheduleTime` becomes
    /// `scheduled`.
    Start {
        /// The scheduled time the Job is for (it names the Job).
        scheduled: Timestamp,
        /// Delete the active Jobs first.
        replace: bool,
    },
    /// `JobAlreadyActive`: Forbid and a Job is active. `lastScheduleTime`
    /// is not advanced, so the next sync after the Job ends starts it late.
    SkipActive {
        /// The scheduled time not started (yet).
        scheduled: Timestamp,
    },
    /// `MissSchedule`: the most recent unmet time is more than
    /// `startingDeadlineSeconds` ago.
    Missed {
        /// The scheduled time missed.
        scheduled: Timestamp,
    },
}

/// A sync's result: the action, and the `TooManyMissedTimes` count when
/// more than [`MANY_MISSED`] schedules were missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sync {
    /// What to do now.
    pub action: Action,
    /// The number of missed schedules, when over [`MANY_MISSED`].
    pub too_many_missed: Option<u64>,
}

impl Action {
    /// The event Kubernetes records for this action (reason, message), if
    /// any; `job` is the created Job's name.
    pub fn event(&self, job: &str) -> Option<(&'static str, String)> {
        match self {
            Action::Wait => None,
            Action::Start { .. } => Some(("SuccessfulCreate", format!("Created job {job}"))),
            Action::SkipActive { .. } => Some((
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid"
                    .to_string(),
            )),
            Action::Missed { scheduled } => Some((
                "MissSchedule",
                format!(
                    "Missed scheduled time to start a job: {}",
                    rfc1123z(*scheduled)
                ),
            )),
        }
    }
}

/// The `TooManyMissedTimes` warning's message, as the controller writes it.
pub fn too_many_missed_message(n: u64) -> String {
    format!(
        "too many missed start times: {n}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
    )
}

/// `t` in Go's `time.RFC1123Z` layout, in UTC (`Mon, 02 Jan 2006 15:04:05 +0000`).
pub fn rfc1123z(t: Timestamp) -> String {
    t.to_zoned(TimeZone::UTC)
        .strftime("%a, %d %b %Y %H:%M:%S %z")
        .to_string()
}

/// The most recent scheduled time in `(earliest, now]` and how many there
/// are, as the controller's `mostRecentScheduleTime` counts them (by the
/// interval between the first two, then walking to the exact last one).
pub fn most_recent(
    schedule: &Schedule,
    earliest: Timestamp,
    now: Timestamp,
) -> Option<(Timestamp, u64)> {
    let t1 = schedule.next_after(earliest)?;
    if now < t1 {
        return None;
    }
    let Some(t2) = schedule.next_after(t1).filter(|t2| *t2 <= now) else {
        return Some((t1, 1));
    };
    let step = (t2.as_second() - t1.as_second()).max(1);
    let missed = u64::try_from((now.as_second() - t1.as_second()) / step).unwrap_or(0) + 1;
    // Start two steps short of the estimate and walk, as irregular
    // schedules (weekdays, month ends) are not evenly spaced.
    let back = i64::try_from(missed.saturating_sub(2)).unwrap_or(0) * step;
    let mut last = Timestamp::from_second(t1.as_second() + back).unwrap_or(t1);
    if last < t1 {
        last = t1;
    }
    let mut at = last;
    while let Some(next) = schedule.next_after(at) {
        if next > now {
            break;
        }
        at = next;
    }
    Some((at.max(last), missed))
}

/// One sync of a CronJob, as `syncCronJob` decides it: the most recent unmet
/// scheduled time since `lastScheduleTime` (or creation), within
/// `startingDeadlineSeconds`; then Forbid, Replace or start.
pub fn sync(input: &SyncInput<'_>) -> Sync {
    let earliest = input.last_schedule.unwrap_or(input.created);
    let found = most_recent(input.schedule, earliest, input.now);
    // The controller counts missed times only within the starting deadline.
    let window = input
        .starting_deadline_seconds
        .and_then(|d| Timestamp::from_second(input.now.as_second().saturating_sub(d)).ok())
        .filter(|from| *from > earliest);
    let counted = match window {
        Some(from) => most_recent(input.schedule, from, input.now),
        None => found,
    };
    let too_many_missed = counted.map(|(_, n)| n).filter(|n| *n > MANY_MISSED);
    let done = |action| Sync {
        action,
        too_many_missed,
    };
    let Some((scheduled, _)) = found else {
        return done(Action::Wait);
    };
    if input.last_schedule == Some(scheduled) {
        return done(Action::Wait);
    }
    if let Some(d) = input.starting_deadline_seconds
        && scheduled.as_second().saturating_add(d) < input.now.as_second()
    {
        return done(Action::Missed { scheduled });
    }
    match (input.policy, input.active) {
        (Some("Forbid"), n) if n > 0 => done(Action::SkipActive { scheduled }),
        (Some("Replace"), n) => done(Action::Start {
            scheduled,
            replace: n > 0,
        }),
        _ => done(Action::Start {
            scheduled,
            replace: false,
        }),
    }
}

/// Which finished Jobs the history limits remove: given each Job's outcome
/// in start order (`Some(true)` complete, `Some(false)` failed, `None`
/// still running), the positions of all but the newest `keep_succeeded`
/// complete and `keep_failed` failed ones.
pub fn history_removed(
    outcomes: &[Option<bool>],
    keep_succeeded: usize,
    keep_failed: usize,
) -> Vec<usize> {
    let mut removed = Vec::new();
    for (want, keep) in [(true, keep_succeeded), (false, keep_failed)] {
        let matching: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| **o == Some(want))
            .map(|(i, _)| i)
            .collect();
        let drop = matching.len().saturating_sub(keep);
        removed.extend_from_slice(&matching[..drop]);
    }
    removed.sort_unstable();
    removed
}

#[cfg(test)]
mod tests;
