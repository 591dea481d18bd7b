//! `wq consume` as a library: its flags ([`ConsumeArgs`], a clap `Args`) and
//! running them against a [`Queue`] ([`consume`]). Behind the `cli` feature.
//!
//! Any program that embeds a `wq consume` (the `wq` binary itself, job-runner's
//! embedded `wq` mode) flattens [`ConsumeArgs`] into its own clap command, so
//! the flags, their defaults and their environment variables are defined once:
//!
//! ```
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[arg(long, env = "WQ_URL")]
//!     url: String,
//!     #[command(flatten)]
//!     consume: worker_sdk::cli::ConsumeArgs,
//! }
//!
//! let cli = Cli::parse_from(["me", "--url", "grpc://127.0.0.1:1", "-c", "1", "--", "cat"]);
//! assert_eq!(cli.consume.count, Some(1));
//! assert_eq!(cli.consume.lease, workq_proto::defaults::LEASE);
//! ```
//!
//! # Exit codes
//! [`consume`] answers the exit code of [`crate::consume::exit`]: 0 done, 3 an
//! item was not completed (with `-c`), 4 an item went dead, 127 the program
//! could not be started, 128+N stopped by signal N. Errors that are not an
//! item's (the queue does not exist, the server went away for good) are
//! returned as [`Error`](crate::Error); a binary prints them and exits
//! [`exit::ERROR`].

use std::ffi::OsString;
use std::time::Duration;

use crate::client::Queue;
use crate::consume::{ConsumeOptions, exit};
use crate::error::Result;

/// How a client reaches a secured queue service: `--ca-file`, `--token-file`,
/// `--client-cert`, `--client-key` (or `WQ_CA_FILE`, `WQ_TOKEN_FILE`,
/// `WQ_CLIENT_CERT`, `WQ_CLIENT_KEY`). Flatten it next to the URL; none of
/// them is needed for a plain `grpc://` server without authentication.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// PEM file of the CA that signs the server's certificate (grpcs://);
    /// without it, the system's trusted roots.
    #[arg(
        long,
        env = "WQ_CA_FILE",
        value_name = "PEM",
        global = true,
        help_heading = "Connection security"
    )]
    pub ca_file: Option<std::path::PathBuf>,
    /// File holding the bearer token sent on every call (re-read when it
    /// changes). For grpcs:// it defaults to /var/run/secrets/workq/token when
    /// that exists (the projected ServiceAccount token job-runner mounts).
    #[arg(
        long,
        env = "WQ_TOKEN_FILE",
        value_name = "FILE",
        global = true,
        help_heading = "Connection security"
    )]
    pub token_file: Option<std::path::PathBuf>,
    /// PEM client certificate for mutual TLS (with --client-key).
    #[arg(
        long,
        env = "WQ_CLIENT_CERT",
        value_name = "PEM",
        global = true,
        requires = "client_key",
        help_heading = "Connection security"
    )]
    pub client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "WQ_CLIENT_KEY",
        value_name = "PEM",
        global = true,
        requires = "client_cert",
        help_heading = "Connection security"
    )]
    pub client_key: Option<std::path::PathBuf>,
}

impl ConnectArgs {
    /// The connection options these flags say.
    pub fn options(&self) -> crate::credentials::ConnectOptions {
        crate::credentials::ConnectOptions {
            ca_file: self.ca_file.clone(),
            token_file: self.token_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

/// The flags of `wq consume`, each also an environment variable (as
/// Kubernetes users configure by environment).
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeArgs {
    /// Take N items, then exit (the coarse pattern is -c 1). Without it: work until
    /// the queue is drained.
    #[arg(short = 'c', long = "count", value_name = "N", env = "WQ_COUNT")]
    pub count: Option<u64>,

    /// Programs to run at once.
    #[arg(long, default_value_t = 1, value_name = "K", env = "WQ_CONCURRENCY",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Items taken ahead of free slots, waiting for one (their leases are
    /// renewed meanwhile; a shutdown gives them back at once). Helps when
    /// items are quick; other consumers cannot take them meanwhile.
    #[arg(long, default_value_t = 0, value_name = "N", env = "WQ_PREFETCH")]
    pub prefetch: u16,

    /// Put each line the programs write after its item's id and a tab (as GNU
    /// parallel's --tag). Output is forwarded line by line whenever
    /// --concurrency is above 1 or --tag is given, so that no line is cut by
    /// another program's.
    #[arg(long, env = "WQ_TAG")]
    pub tag: bool,

    /// Lease duration; renewed every third of it while the program runs.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "WQ_LEASE",
          value_name = "DURATION")]
    pub lease: Duration,

    /// After SIGTERM, how long running programs may take before they are killed.
    /// Keep it below the pod's terminationGracePeriodSeconds (30s by default).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration, env = "WQ_GRACE",
          value_name = "DURATION")]
    pub grace: Duration,

    /// Exit codes that fail an item for good (it goes dead at once), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CODES",
        env = "WQ_FATAL_EXIT_CODES"
    )]
    pub fatal_exit_codes: Vec<i32>,

    /// Stop as soon as the queue is empty (nothing pending, delayed or leased),
    /// sealed or not: the rediswq meaning. Without it, wq waits for the queue to be
    /// sealed and drained.
    #[arg(long, env = "WQ_UNTIL_EMPTY")]
    pub until_empty: bool,

    /// How long one lease call waits for an item before asking again.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, env = "WQ_POLL_WAIT",
          value_name = "DURATION")]
    pub poll_wait: Duration,

    /// The program to run for each item, and its arguments (put `--` before them).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub program: Vec<OsString>,
}

impl ConsumeArgs {
    /// The flags as [`ConsumeOptions`].
    pub fn options(&self) -> ConsumeOptions {
        let mut opts = ConsumeOptions::new(self.program.clone());
        opts.count = self.count;
        opts.concurrency = usize::from(self.concurrency.max(1));
        opts.prefetch = usize::from(self.prefetch);
        opts.tag = self.tag;
        opts.lease = self.lease;
        opts.grace = self.grace;
        opts.until_empty = self.until_empty;
        opts.fatal_exit_codes = self.fatal_exit_codes.iter().copied().collect();
        opts.poll_wait = self.poll_wait;
        opts
    }
}

/// Runs `wq consume` with `args` on `queue`, answering its exit code (see the
/// [module docs](self)). Says on standard error when the program cannot be
/// started, and logs the summary at `info`.
pub async fn consume(queue: &Queue, args: &ConsumeArgs) -> Result<i32> {
    let opts = args.options();
    if opts.count == Some(0) {
        return Ok(exit::OK);
    }
    let report = crate::consume(queue, opts).await?;
    if let Some(why) = &report.cannot_start {
        eprintln!("wq: error: {why}");
    }
    let s = &report.summary;
    tracing::info!(
        stop = ?s.stop,
        completed = s.completed,
        failed = s.failed,
        fatal = s.fatal,
        released = s.released,
        lost = s.lost,
        "consume finished"
    );
    Ok(report.exit_code())
}

#[cfg(test)]
mod tests;
