//! Work-queue Jobs: a Job annotated `workq.dev/queue: NAME` works a queue.
//!
//! | annotation | meaning |
//! |---|---|
//! | `workq.dev/queue` | the queue's name |
//! | `workq.dev/items` | items, whitespace separated |
//! | `workq.dev/items-file` | a file of items, one per line, relative to the manifest |
//! | `workq.dev/pattern` | `coarse` (one item per pod: `completions` defaults to the number of items) or `fine` (pods loop until the queue is drained) |
//!
//! Both ways of running fill the queue the same way, with [`fill_and_seal`]:
//! `--local` (see [`crate::local`], which also starts a queue service when
//! `--queue-url` names none) and a cluster run (see [`crate::cluster`]).
//!
//! # Guarantees
//!
//! - The items are pushed, then the queue is sealed: a worker that finds it
//!   empty knows the work is over.
//! - A coarse Job whose manifest leaves `completions` unset gets one
//!   completion per item of the sealed queue, in both modes (see
//!   [`fill_and_seal`]).

use std::path::Path;

use k8s_openapi::api::batch::v1::Job;

use crate::error::{Error, Result};
use crate::output::Output;
use crate::report::QueueSummary;

#[cfg(test)]
mod tests;

/// The queue-name annotation.
pub const QUEUE: &str = "workq.dev/queue";
/// The inline-items annotation.
pub const ITEMS: &str = "workq.dev/items";
/// The items-file annotation.
pub const ITEMS_FILE: &str = "workq.dev/items-file";
/// The pattern annotation (`coarse` or `fine`).
pub const PATTERN: &str = "workq.dev/pattern";

/// The counters and dead items of `queue` (known as `name`, at `url`), for
/// the summary.
pub async fn summary(name: &str, url: &str, queue: &worker_sdk::Queue) -> QueueSummary {
    let mut out = QueueSummary {
        name: name.to_string(),
        url: url.to_string(),
        ..QueueSummary::default()
    };
    if let Ok(s) = queue.stats().await {
        out.counters = vec![
            ("enqueued".into(), s.enqueued),
            ("completed".into(), s.completed),
            ("dead".into(), s.dead),
            ("retried".into(), s.retried),
            ("pending".into(), s.pending + s.delayed),
            ("leased".into(), s.leased),
        ];
    }
    if let Ok(dead) = queue.dead(100).await {
        out.dead = dead
            .iter()
            .map(|d| {
                format!(
                    "{:?} after {} attempt(s): {}",
                    String::from_utf8_lossy(&d.payload),
                    d.attempts,
                    d.reason
                )
            })
            .collect();
    }
    out
}
/// The value of one annotation of a Job.
pub fn annotation<'a>(job: &'a Job, key: &str) -> Option<&'a str> {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Whether `workq.dev/items-file` may name a file outside the manifest's
/// directory (`--allow-items-outside`); off unless the binary turns it on.
static ITEMS_OUTSIDE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets `workq.dev/items-file` name any file the runner can read (an
/// absolute path, `..`), as `--allow-items-outside` asks. By default only
/// files inside the manifest's directory are read, so a manifest from
/// elsewhere cannot push the runner's own files into a queue.
pub fn allow_items_outside(allow: bool) {
    ITEMS_OUTSIDE.store(allow, std::sync::atomic::Ordering::Relaxed);
}

/// The file `workq.dev/items-file` names, resolved against the manifest's
/// directory `dir`: refused when it is absolute, has a `..` element or
/// (through a symbolic link) leads outside `dir`, unless allowed.
fn items_file_path(dir: &Path, file: &str) -> std::result::Result<std::path::PathBuf, String> {
    let path = dir.join(file);
    if ITEMS_OUTSIDE.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(path);
    }
    let rel = Path::new(file);
    if rel.is_absolute() {
        return Err("must be a path relative to the manifest's directory (an absolute path is read only with --allow-items-outside)".into());
    }
    if rel
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err("must not contain '..' (a file outside the manifest's directory is read only with --allow-items-outside)".into());
    }
    if let (Ok(real), Ok(base)) = (path.canonicalize(), dir.canonicalize())
        && !real.starts_with(&base)
    {
        return Err("leads outside the manifest's directory through a symbolic link (allowed only with --allow-items-outside)".into());
    }
    Ok(path)
}

/// Reads a Job's work-queue annotations: `Ok(None)` for a Job without a
/// queue; the items to push otherwise (`None`: none given).
pub fn items(job: &Job, dir: &Path) -> Result<Option<(String, Option<Vec<String>>)>> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let invalid = |msg: String| Error::Invalid {
        origin: format!("Job/{name}"),
        problems: vec![msg],
    };
    let Some(queue) = annotation(job, QUEUE) else {
        for key in [ITEMS, ITEMS_FILE, PATTERN] {
            if annotation(job, key).is_some() {
                return Err(invalid(format!(
                    "metadata.annotations[{key}]: needs metadata.annotations[{QUEUE}] naming the queue"
                )));
            }
        }
        return Ok(None);
    };
    if let Err(e) = worker_sdk::QueueName::new(queue) {
        return Err(invalid(format!(
            "metadata.annotations[{QUEUE}]: Invalid value: {queue:?}: {e}"
        )));
    }
    if let Some(p) = annotation(job, PATTERN)
        && !matches!(p, "coarse" | "fine")
    {
        return Err(invalid(format!(
            "metadata.annotations[{PATTERN}]: Unsupported value: {p:?}: supported values: \"coarse\", \"fine\""
        )));
    }
    let items = match (annotation(job, ITEMS), annotation(job, ITEMS_FILE)) {
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "metadata.annotations: give {ITEMS} or {ITEMS_FILE}, not both"
            )));
        }
        (Some(inline), None) => Some(inline.split_whitespace().map(String::from).collect()),
        (None, Some(file)) => {
            let path = items_file_path(dir, file).map_err(|why| {
                invalid(format!(
                    "metadata.annotations[{ITEMS_FILE}]: Invalid value: {file:?}: {why}"
                ))
            })?;
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            Some(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect(),
            )
        }
        (None, None) => None,
    };
    Ok(Some((queue.to_string(), items)))
}

/// Whether a coarse Job takes its `completions` from its queue: pattern
/// `coarse` and `completions` left unset by the manifest.
pub fn completions_from_queue(job: &Job) -> bool {
    annotation(job, PATTERN) == Some("coarse")
        && job.spec.as_ref().is_some_and(|s| s.completions.is_none())
}

/// Fills a work-queue Job's queue and seals it, and sets a coarse Job's
/// `completions` — the one way both `--local` and a cluster run do it.
///
/// - `items` (from `workq.dev/items` or `workq.dev/items-file`): pushed, then
///   the queue is sealed. `None`: someone else fills the queue; its counters
///   are only read.
/// - `completions_from_queue` (see [`completions_from_queue`]: a coarse Job
///   whose manifest leaves `completions` unset): `completions` becomes the
///   number of items in the sealed queue — the items pushed, plus any the
///   queue already held (reported as a warning), so that one pod runs per
///   item, as Kubernetes users of the coarse pattern expect. The queue must
///   be sealed: a queue filled by someone else and still open is refused,
///   since its size is not known yet.
/// - A `completions` the manifest sets is kept as it is: the Job completes
///   after that many pods succeeded, whatever the queue holds (a cluster run
///   reports work left behind, and exits 1).
///
/// `url` and the Job's name only word the event lines written to `out`.
pub async fn fill_and_seal(
    job: &mut Job,
    queue: &worker_sdk::Queue,
    url: &str,
    items: Option<&[String]>,
    completions_from_queue: bool,
    out: &Output,
) -> Result<worker_sdk::Stats> {
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let name = queue.name().to_string();
    let stats = if let Some(items) = items {
        queue
            .push(items.iter().map(String::as_str))
            .await
            .map_err(|e| Error::Queue(format!("pushing to {name}: {e}")))?;
        let s = queue
            .seal()
            .await
            .map_err(|e| Error::Queue(format!("sealing {name}: {e}")))?;
        out.event(&format!(
            "job.batch/{job_name}: queue {name} at {url}: pushed {} item(s) and sealed it",
            items.len()
        ));
        let pushed = items.len() as u64;
        if s.enqueued > pushed {
            out.event(&format!(
                "warning: queue {name} already held {} item(s) before this run",
                s.enqueued - pushed
            ));
        }
        s
    } else {
        queue
            .stats()
            .await
            .map_err(|e| Error::Queue(format!("reading queue {name}: {e}")))?
    };
    if completions_from_queue {
        if !stats.sealed {
            return Err(Error::Invalid {
                origin: format!("Job/{job_name}"),
                problems: vec![format!(
                    "spec.completions: a coarse Job takes its completions from the sealed queue's size, but queue {name} is not sealed; seal it (`wq seal`), set workq.dev/items, or set completions"
                )],
            });
        }
        let n = stats.pending + stats.delayed + stats.leased;
        if let Some(spec) = job.spec.as_mut() {
            spec.completions = Some(i32::try_from(n).unwrap_or(i32::MAX));
        }
        out.event(&format!(
            "job.batch/{job_name}: coarse pattern: completions set to {n}, one per item of the sealed queue"
        ));
    }
    Ok(stats)
}
