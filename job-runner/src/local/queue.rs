//! Work-queue Jobs of a local run: the queue service (the one `--queue-url`
//! names, else one started in-process: memory store, loopback, ephemeral
//! port, once per run), the queue filled with [`crate::queue::fill_and_seal`],
//! its counters followed for the live view, and the containers' environment:
//! `WQ_URL`, `WQ_QUEUE`, and a `PATH` on which `wq` is found — the `wq` next
//! to the runner's own executable or on `PATH`, or else the runner itself,
//! which acts as `wq consume` when called by that name.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;

use super::RunOptions;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::queue::{ITEMS, ITEMS_FILE, QUEUE, fill_and_seal, summary};
use crate::report::QueueSummary;

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
/// run), then fills and seals the queue and sets a coarse Job's
/// `completions` ([`fill_and_seal`]).
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
    let Some((name, items)) = crate::queue::items(job, dir)? else {
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
    let from_queue = crate::queue::completions_from_queue(job);
    fill_and_seal(job, &queue, &url, items.as_deref(), from_queue, out).await?;
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
