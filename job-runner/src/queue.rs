//! Work-queue Jobs: a Job annotated `workq.dev/queue: NAME` works a queue.
//!
//! | annotation | meaning |
//! |---|---|
//! | `workq.dev/queue` | the queue's name |
//! | `workq.dev/items` | items, whitespace separated |
//! | `workq.dev/items-file` | a file of items, one per line, relative to the manifest |
//! | `workq.dev/pattern` | `coarse` (one item per pod: `completions` defaults to the number of items) or `fine` (pods loop until the queue is drained) |
//!
//! Unless `--queue-url` names a queue service, the runner starts one
//! in-process (memory store, loopback, ephemeral port). It pushes the items,
//! seals the queue, and gives every container `WQ_URL` and `WQ_QUEUE`, and a
//! `PATH` on which `wq` is found: the `wq` next to the runner's own
//! executable or on `PATH`, or else the runner itself, which acts as
//! `wq consume` when called by that name.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;

use crate::error::{Error, Result};
use crate::output::{Output, QueueSummary};
use crate::run::RunOptions;

/// The queue-name annotation.
pub const QUEUE: &str = "workq.dev/queue";
/// The inline-items annotation.
pub const ITEMS: &str = "workq.dev/items";
/// The items-file annotation.
pub const ITEMS_FILE: &str = "workq.dev/items-file";
/// The pattern annotation (`coarse` or `fine`).
pub const PATTERN: &str = "workq.dev/pattern";

/// A queue service started by the runner.
pub struct LocalServer {
    server: queue_server::RunningServer,
    url: String,
}

impl LocalServer {
    /// Stops it.
    pub async fn shutdown(self) {
        let _ = self.server.shutdown().await;
    }
}

/// The queue of one running Job.
pub struct QueueRun {
    name: String,
    url: String,
    path: String,
    queue: worker_sdk::Queue,
    stats: Arc<Mutex<Option<worker_sdk::Stats>>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl QueueRun {
    /// The environment its containers get.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("WQ_URL".into(), self.url.clone()),
            ("WQ_QUEUE".into(), self.name.clone()),
            ("PATH".into(), self.path.clone()),
        ]
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// (done, enqueued) from the latest counters: done counts completed and
    /// dead items.
    pub fn last_stats(&self) -> Option<(u64, u64)> {
        let s = self.stats.lock().ok()?;
        s.as_ref().map(|s| (s.completed + s.dead, s.enqueued))
    }

    /// The counters and dead items, for the summary.
    pub async fn summary(&mut self) -> QueueSummary {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        summary(&self.name, &self.url, &self.queue).await
    }
}

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
            let path = dir.join(file);
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

/// Where containers find `wq`: a `PATH` value.
fn wq_path(run_dir: &Path) -> Result<String> {
    let host_path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding the job-runner executable", e))?;
    if let Some(dir) = exe.parent()
        && dir.join("wq").is_file()
    {
        return Ok(format!("{}:{host_path}", dir.display()));
    }
    if std::env::split_paths(&host_path).any(|d| d.join("wq").is_file()) {
        return Ok(host_path);
    }
    let bin = run_dir.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| Error::io("creating the wq directory", e))?;
    let link: PathBuf = bin.join("wq");
    if !link.exists() {
        std::os::unix::fs::symlink(&exe, &link)
            .map_err(|e| Error::io("linking wq to job-runner", e))?;
    }
    Ok(format!("{}:{host_path}", bin.display()))
}

/// Prepares a work-queue Job: starts the queue service if needed (once per
/// run), pushes and seals the items, and sets `completions` of a coarse Job.
/// `changed` is notified whenever the queue's counters change.
pub async fn prepare(
    job: &mut Job,
    dir: &Path,
    run_dir: &Path,
    opts: &RunOptions,
    server: &mut Option<LocalServer>,
    out: &Output,
    changed: Arc<tokio::sync::Notify>,
) -> Result<Option<QueueRun>> {
    let Some((name, items)) = items(job, dir)? else {
        return Ok(None);
    };
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let url = match (&opts.queue_url, server.as_ref()) {
        (Some(url), _) => url.clone(),
        (None, Some(s)) => s.url.clone(),
        (None, None) => {
            let started = queue_server::start(queue_server::ServerConfig::memory())
                .await
                .map_err(|e| {
                    Error::Queue(format!("cannot start the in-process queue service: {e}"))
                })?;
            let url = format!("grpc://{}", started.grpc_addr());
            out.event(&format!(
                "queue service: started in-process at {url} (memory store)"
            ));
            *server = Some(LocalServer {
                server: started,
                url: url.clone(),
            });
            url
        }
    };
    if items.is_none() && opts.queue_url.is_none() {
        return Err(Error::Invalid {
            origin: format!("Job/{job_name}"),
            problems: vec![format!(
                "metadata.annotations: {QUEUE} needs its items: set {ITEMS} (whitespace separated) or {ITEMS_FILE} (one per line), or pass --queue-url to work a queue you fill yourself"
            )],
        });
    }
    let client = worker_sdk::connect(&url)
        .await
        .map_err(|e| Error::Queue(format!("cannot reach {url}: {e}")))?;
    let queue = client
        .queue(&name)
        .map_err(|e| Error::Queue(format!("queue {name:?}: {e}")))?;
    if let Some(items) = &items {
        queue
            .push(items.iter().map(String::as_str))
            .await
            .map_err(|e| Error::Queue(format!("pushing to {name}: {e}")))?;
        queue
            .seal()
            .await
            .map_err(|e| Error::Queue(format!("sealing {name}: {e}")))?;
        out.event(&format!(
            "job.batch/{job_name}: queue {name}: pushed {} item(s) and sealed it",
            items.len()
        ));
        if annotation(job, PATTERN) == Some("coarse")
            && let Some(spec) = job.spec.as_mut()
            && spec.completions.is_none()
        {
            let n = i32::try_from(items.len()).unwrap_or(i32::MAX);
            spec.completions = Some(n);
            out.event(&format!(
                "job.batch/{job_name}: coarse pattern: completions set to {n}, one per item"
            ));
        }
    }
    let stats = Arc::new(Mutex::new(None));
    let watcher = match queue.watch(false).await {
        Ok(mut stream) => {
            let stats = stats.clone();
            Some(tokio::spawn(async move {
                while let Some(Ok(s)) = stream.next().await {
                    if let Ok(mut slot) = stats.lock() {
                        *slot = Some(s);
                    }
                    changed.notify_one();
                }
            }))
        }
        Err(_) => None,
    };
    Ok(Some(QueueRun {
        name,
        url,
        path: wq_path(run_dir)?,
        queue,
        stats,
        watcher,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(annotations: &str) -> Job {
        serde_saphyr::from_str(&format!(
            "metadata:\n  name: j\n  annotations: {annotations}\nspec:\n  template: {{}}\n"
        ))
        .expect("test yaml")
    }

    #[test]
    fn annotations_are_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("items.txt"), "apple\n\n banana \n").expect("write");
        type Want<'a> = std::result::Result<Option<(&'a str, Option<Vec<&'a str>>)>, &'a str>;
        let cases: Vec<(&str, Want)> = vec![
            ("{}", Ok(None)),
            (
                "{workq.dev/queue: q1, workq.dev/items: \"a b\n c\"}",
                Ok(Some(("q1", Some(vec!["a", "b", "c"])))),
            ),
            (
                "{workq.dev/queue: q1, workq.dev/items-file: items.txt}",
                Ok(Some(("q1", Some(vec!["apple", "banana"])))),
            ),
            ("{workq.dev/queue: q1}", Ok(Some(("q1", None)))),
            (
                "{workq.dev/items: a}",
                Err("needs metadata.annotations[workq.dev/queue]"),
            ),
            (
                "{workq.dev/queue: q1, workq.dev/items: a, workq.dev/items-file: f}",
                Err("not both"),
            ),
            (
                "{workq.dev/queue: q1, workq.dev/pattern: medium}",
                Err("Unsupported value: \"medium\""),
            ),
            (
                "{workq.dev/queue: q1, workq.dev/items-file: nope.txt}",
                Err("nope.txt"),
            ),
        ];
        for (ann, want) in cases {
            let got = items(&job(ann), dir.path());
            match (got, want) {
                (Ok(got), Ok(want)) => {
                    let want = want.map(|(q, i)| {
                        (
                            q.to_string(),
                            i.map(|v| v.into_iter().map(String::from).collect()),
                        )
                    });
                    assert_eq!(got, want, "{ann}");
                }
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{ann}: {e}"),
                (got, want) => panic!("{ann}: got {got:?}, want {want:?}"),
            }
        }
    }
}
