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

/// What a CronJob does at a scheduled time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start the Job.
    Run,
    /// Delete the active Jobs, then start the new one (`Replace`).
    ReplaceThenRun,
    /// Skip it: a Job is still active (`Forbid`).
    SkipActive,
    /// Skip it: later than `startingDeadlineSeconds`.
    SkipMissed,
}

/// Decides a scheduled time as the CronJob controller does: too late past
/// `startingDeadlineSeconds` is missed; otherwise `concurrencyPolicy`
/// (`Allow` by default) decides what happens to still-active Jobs.
pub fn decide(
    policy: Option<&str>,
    active_jobs: usize,
    late: std::time::Duration,
    starting_deadline_seconds: Option<i64>,
) -> Decision {
    if let Some(d) = starting_deadline_seconds
        && late.as_secs_f64() > d as f64
    {
        return Decision::SkipMissed;
    }
    match (policy, active_jobs) {
        (_, 0) => Decision::Run,
        (Some("Forbid"), _) => Decision::SkipActive,
        (Some("Replace"), _) => Decision::ReplaceThenRun,
        _ => Decision::Run,
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
