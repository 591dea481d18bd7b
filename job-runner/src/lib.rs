//! The workq job-runner: reads Kubernetes `batch/v1` Job and CronJob
//! manifests and runs them on this machine with the Job controller's
//! semantics (`job-runner run -f FILE --local`, see [`local`]), or on a
//! cluster, where it fills the queues of work-queue Jobs, injects the `wq`
//! wrapper and watches until the work is really done (`job-runner run -f
//! FILE`, see [`cluster`]).
//!
//! # Layout
//!
//! Input:
//! - [`manifest`]: `-f` files, directories and stdin into Kubernetes types,
//!   strictly ([`validate`] holds the API server's checks).
//! - [`template`]: `$ITEM` and Jinja expansions.
//!
//! Deciding, with no I/O:
//! - [`controller`]: the Job controller's decisions, pure and table-tested.
//! - [`cron`]: CronJob schedules and their policies.
//!
//! Running:
//! - [`local`]: `--local`, the event loop tying controller and processes
//!   together (Jobs, CronJobs, work queues here).
//! - [`pod`]: a pod template made concrete (names, env, volumes).
//! - [`process`]: pods as local processes.
//! - [`control`]: `job-runner evict POD` talking to a running run.
//! - [`cluster`]: the same manifests on a Kubernetes cluster (`run` without
//!   `--local`, `render`, `get jobs`, `logs`, `delete`).
//! - [`queue`]: work-queue Jobs (`workq.dev/queue`), filled and sealed the
//!   same way by both.
//!
//! Results:
//! - [`report`]: what a run produced, the same types for both modes.
//! - [`output`]: live view, `kubectl describe`-like summary, JSON.
//! - [`commands`]: each command's body; the binary only parses flags.

pub mod cluster;
pub mod commands;
pub mod control;
pub mod controller;
pub mod cron;
mod error;
pub mod local;
pub mod manifest;
pub mod output;
pub mod pod;
pub mod process;
pub mod queue;
pub mod report;
pub mod template;
pub mod validate;

pub use error::{Error, Result};
