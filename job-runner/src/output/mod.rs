//! What a person sees: while a run goes, pods' output, events and a live
//! view on standard error ([`live`]); at the end, a `kubectl describe`-like
//! summary ([`describe`](mod@describe)) or, with `-o json`, the final Job objects
//! ([`json`](mod@json)) on standard output.
//!
//! # Layout
//!
//! - [`live`]: [`Output`], the terminal during a run.
//! - [`describe`](mod@describe): the text summary of a [`RunReport`].
//! - [`json`](mod@json): the JSON document of a [`RunReport`].

pub mod describe;
pub mod json;
pub mod live;

pub use describe::{describe, describe_cron};
pub use json::json;
pub use live::Output;

use crate::report::RunReport;

/// Prints a run's result on standard output: the final Job objects as JSON
/// (`json`), else the CronJobs' and Jobs' summaries.
pub fn print_report(out: &Output, json: bool, report: &RunReport) {
    if json {
        out.result(&serde_json::to_string_pretty(&self::json(&report.jobs)).unwrap_or_default());
    } else {
        let text: Vec<String> = report
            .crons
            .iter()
            .map(describe_cron)
            .chain(report.jobs.iter().map(describe))
            .collect();
        out.result(&text.join("\n"));
    }
}
