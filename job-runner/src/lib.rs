//! The workq job-runner: reads Kubernetes `batch/v1` Job and CronJob
//! manifests and runs them on this machine with the Job controller's
//! semantics (`job-runner run -f FILE --local`), or on a cluster, where it
//! fills the queues of work-queue Jobs, injects the `wq` wrapper and watches
//! until the work is really done (`job-runner run -f FILE`, see [`cluster`]).
//!
//! # Layout
//!
//! - [`manifest`]: `-f` files, directories and stdin into Kubernetes types,
//!   strictly ([`validate`] holds the API server's checks).
//! - [`template`]: `$ITEM` and Jinja expansions.
//! - [`controller`]: the Job controller's decisions, pure and table-tested.
//! - [`pod`]: a pod template made concrete (names, env, volumes).
//! - [`process`]: pods as local processes.
//! - [`run`]: the event loop tying controller and processes together.
//! - [`output`]: live view, `kubectl describe`-like summary, JSON.
//! - [`cron`]: CronJob schedules.
//! - [`control`]: `job-runner evict POD` talking to a running run.
//! - [`queue`]: work-queue Jobs (`workq.dev/queue`).
//! - [`cluster`]: the same manifests on a Kubernetes cluster (`run` without
//!   `--local`, `render`, `get jobs`, `logs`, `delete`).

pub mod cluster;
pub mod control;
pub mod controller;
pub mod cron;
mod error;
pub mod manifest;
pub mod output;
pub mod pod;
pub mod process;
pub mod queue;
pub mod run;
pub mod template;
pub mod validate;

pub use error::{Error, Result};
