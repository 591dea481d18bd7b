//! `wq consume`: work a queue with an unmodified program, one process per item.
//!
//! Each item's payload is written to the program's standard input, which is then
//! closed. With one program at a time, its standard output and error are the
//! wrapper's; with several ([`ConsumeOptions::concurrency`]) or a
//! [`ConsumeOptions::tag`], they are forwarded line by line, so that a line is
//! never cut by another program's (as GNU parallel's `--line-buffer`), each
//! after the item's id and a tab with `tag` (`--tag`). A program whose
//! background children keep its output open holds its item until they close
//! it. The program
//! also finds `WQ_ITEM_ID`, `WQ_ATTEMPT` and `WQ_QUEUE` in its environment. It
//! runs in a process group of its own, so that signals reach a shell's children
//! too.
//!
//! | program | item |
//! |---|---|
//! | exits 0 | completed |
//! | exits with a code in [`ConsumeOptions::fatal_exit_codes`] | failed, fatal: dead at once |
//! | exits otherwise, or is killed by a signal | failed, retriable |
//! | cannot be started | released; the wrapper stops and exits 127 |
//! | is running at SIGTERM/SIGINT | the signal goes to its process group; exits 0 within the grace period: completed; otherwise released (killed at the end of the grace period) |
//!
//! The lease is renewed while the program runs, however long that is. If a
//! renewal is refused all the same (the worker was paused past its lease, or the
//! server restarted), the program runs on but its result is refused: the item is
//! another worker's by then, and `-c N` counts it as not completed.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

mod output;

use crate::client::Queue;
use crate::error::Result;
use crate::worker::{Job, StopReason, WorkError, WorkSummary, WorkerOptions};

/// Exit codes of `wq consume` (and [`ConsumeReport::exit_code`]).
pub mod exit {
    /// It did what was asked: N items completed (`-c N`), or the queue is drained
    /// (or empty, with `--until-empty`).
    pub const OK: i32 = 0;
    /// An error that is not an item's: server unreachable, queue not found, …
    pub const ERROR: i32 = 1;
    /// The command line is wrong.
    pub const USAGE: i32 = 2;
    /// With `-c N`: an item was not completed (the program failed, retriably, or
    /// the lease was lost); the item is back in the queue.
    pub const ITEM_FAILED: i32 = 3;
    /// An item this consumer failed went dead: the program exited with one of the
    /// `--fatal-exit-codes`, or the item's attempts were exhausted. Meant for a
    /// Job's `podFailurePolicy` (`onExitCodes: {operator: In, values: [4]}`).
    pub const ITEM_DEAD: i32 = 4;
    /// The program could not be started (not found, not executable).
    pub const CANNOT_START: i32 = 127;
    /// Stopped by a signal before it was done: 128 + the signal's number (143 for
    /// SIGTERM, 130 for SIGINT), as a shell reports it.
    pub const SIGNAL_BASE: i32 = 128;
}

/// How `wq consume` runs.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// The program and its arguments.
    pub program: Vec<OsString>,
    /// Take this many items, then stop (`-c N`); `None` works until drained.
    pub count: Option<u64>,
    /// Programs run at once.
    pub concurrency: usize,
    /// Lease duration (renewed every third of it while the program runs).
    pub lease: Duration,
    /// After SIGTERM, how long a running program may take before it is killed.
    pub grace: Duration,
    /// Stop when the queue is empty, sealed or not.
    pub until_empty: bool,
    /// Exit codes that fail an item as fatal.
    pub fatal_exit_codes: BTreeSet<i32>,
    /// How long one lease call waits for an item.
    pub poll_wait: Duration,
    /// Whether SIGTERM and SIGINT are handled (default: yes).
    pub handle_signals: bool,
    /// Items taken ahead, waiting for a free slot (see
    /// [`WorkerOptions::prefetch`]; default 0).
    pub prefetch: usize,
    /// Put each line of output after its item's id and a tab.
    pub tag: bool,
}

impl ConsumeOptions {
    /// Defaults for `program`: until drained, one at a time, 30 s leases, 20 s grace.
    pub fn new(program: Vec<OsString>) -> Self {
        ConsumeOptions {
            program,
            count: None,
            concurrency: 1,
            lease: workq_proto::defaults::LEASE,
            grace: Duration::from_secs(20),
            until_empty: false,
            fatal_exit_codes: BTreeSet::new(),
            poll_wait: Duration::from_secs(2),
            handle_signals: true,
            prefetch: 0,
            tag: false,
        }
    }
}

/// What `consume` did.
#[derive(Debug, Clone)]
pub struct ConsumeReport {
    /// The worker loop's summary.
    pub summary: WorkSummary,
    /// Whether `-c N` was given.
    pub counted: bool,
    /// Why the program could not be started, if it could not.
    pub cannot_start: Option<String>,
}

impl ConsumeReport {
    /// The process exit code this outcome maps to (see [`exit`]).
    pub fn exit_code(&self) -> i32 {
        let s = &self.summary;
        if self.cannot_start.is_some() {
            exit::CANNOT_START
        } else if s.dead > 0 || s.fatal > 0 {
            exit::ITEM_DEAD
        } else if self.counted && (s.failed > 0 || s.lost > 0) {
            exit::ITEM_FAILED
        } else if matches!(s.stop, StopReason::Shutdown { .. }) || s.released > 0 {
            // Stopped before done: a signal, or items given back untried.
            exit::SIGNAL_BASE + s.signal.unwrap_or(Signal::SIGTERM as i32)
        } else {
            exit::OK
        }
    }
}

/// Works `queue` by running `opts.program` once per item (see the
/// [module docs](mod@crate::consume)).
pub async fn consume(queue: &Queue, opts: ConsumeOptions) -> Result<ConsumeReport> {
    let shutdown = CancellationToken::new();
    let mut wopts = WorkerOptions::default()
        .concurrency(opts.concurrency)
        .prefetch(opts.prefetch)
        .lease(opts.lease)
        .grace(opts.grace)
        .poll_wait(opts.poll_wait)
        .until_empty(opts.until_empty)
        .handle_signals(opts.handle_signals)
        .shutdown_token(shutdown.clone());
    if let Some(n) = opts.count {
        wopts = wopts.max_items(n);
    }
    let cannot_start = Arc::new(Mutex::new(None::<String>));
    let (lines, writers) = if opts.concurrency > 1 || opts.tag {
        let (l, w) = output::start(opts.tag);
        (Some(l), Some(w))
    } else {
        (None, None)
    };
    let runner = Arc::new(Runner {
        program: opts.program,
        fatal: opts.fatal_exit_codes,
        stop_all: shutdown,
        cannot_start: cannot_start.clone(),
        lines,
    });
    let summary = queue
        .work(wopts, move |job: Job| {
            let runner = runner.clone();
            async move { runner.run(job).await }
        })
        .await;
    if let Some(w) = writers {
        w.finish().await;
    }
    let summary = summary?;
    let cannot_start = cannot_start.lock().map(|g| g.clone()).unwrap_or_default();
    let summary = if cannot_start.is_some() {
        // The stop was ours, not a signal's.
        WorkSummary {
            stop: StopReason::Shutdown { signal: None },
            ..summary
        }
    } else {
        summary
    };
    Ok(ConsumeReport {
        summary,
        counted: opts.count.is_some(),
        cannot_start,
    })
}

struct Runner {
    program: Vec<OsString>,
    fatal: BTreeSet<i32>,
    stop_all: CancellationToken,
    cannot_start: Arc<Mutex<Option<String>>>,
    /// Where output goes line by line; `None`: the wrapper's own.
    lines: Option<output::Lines>,
}

impl Runner {
    async fn run(&self, job: Job) -> std::result::Result<(), WorkError> {
        let Some((prog, args)) = self.program.split_first() else {
            return Err(WorkError::release("no program given"));
        };
        let item = job.item();
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .env("WQ_ITEM_ID", item.id.as_str())
            .env("WQ_ATTEMPT", item.attempt.to_string())
            .env("WQ_QUEUE", job.queue().as_str())
            .stdin(Stdio::piped())
            .stdout(self.output())
            .stderr(self.output())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot start {}: {e}", prog.to_string_lossy());
                tracing::error!("{why}");
                if let Ok(mut g) = self.cannot_start.lock() {
                    g.get_or_insert(why.clone());
                }
                self.stop_all.cancel();
                return Err(WorkError::release(why));
            }
        };
        let group = GroupGuard(
            child
                .id()
                .and_then(|p| i32::try_from(p).ok())
                .map(Pid::from_raw),
        );
        let forwarded = self
            .lines
            .as_ref()
            .map(|l| l.forward(&item.id, child.stdout.take(), child.stderr.take()));
        if let Some(mut stdin) = child.stdin.take() {
            let payload = item.payload.clone();
            tokio::spawn(async move {
                // A program that does not read its input is fine: ignore EPIPE.
                let _ = stdin.write_all(&payload).await;
                let _ = stdin.shutdown().await;
            });
        }
        let status = tokio::select! {
            s = child.wait() => s,
            () = job.shutdown().cancelled() => {
                group.signal(Signal::SIGTERM);
                child.wait().await
            }
        };
        let status =
            status.map_err(|e| WorkError::release(format!("waiting for the program: {e}")))?;
        group.disarm();
        if let Some(f) = forwarded {
            // Its last lines out before its item is finished.
            let _ = f.await;
        }
        if status.success() {
            return Ok(());
        }
        let why = describe(&status);
        if job.shutdown().is_cancelled() {
            return Err(WorkError::release(format!("stopped on shutdown: {why}")));
        }
        match status.code() {
            Some(code) if self.fatal.contains(&code) => {
                Err(WorkError::fatal(format!("{why} (a fatal exit code)")))
            }
            _ => Err(WorkError::retry(why)),
        }
    }
}

impl Runner {
    /// A program's standard output or error: piped when forwarded by line.
    fn output(&self) -> Stdio {
        if self.lines.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        }
    }
}

fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("program exited with code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("program killed by signal {s}"),
            Err(_) => format!("program killed by signal {sig}"),
        },
        (None, None) => format!("program ended: {status}"),
    }
}

/// Kills the program's whole process group when dropped before the program was
/// seen to exit (the grace period ran out, or the wrapper is going away).
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn signal(&self, sig: Signal) {
        if let Some(pgid) = self.0
            && let Err(e) = killpg(pgid, sig)
        {
            tracing::debug!(%pgid, error = %e, "signalling the program's group");
        }
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(f: impl FnOnce(&mut WorkSummary), counted: bool) -> ConsumeReport {
        let mut summary = WorkSummary::new();
        f(&mut summary);
        ConsumeReport {
            summary,
            counted,
            cannot_start: None,
        }
    }

    #[test]
    fn exit_codes() {
        use StopReason::{Limit, Shutdown};
        let sigterm = Shutdown { signal: Some(15) };
        let cases: [(&str, ConsumeReport, i32); 9] = [
            ("drained", report(|_| {}, false), 0),
            (
                "limit, all completed",
                report(|s| (s.stop, s.completed) = (Limit, 1), true),
                0,
            ),
            (
                "loop mode ignores retried failures",
                report(|s| s.failed = 3, false),
                0,
            ),
            (
                "-c: a failure",
                report(|s| (s.stop, s.failed) = (Limit, 1), true),
                3,
            ),
            (
                "-c: lease lost",
                report(|s| (s.stop, s.lost) = (Limit, 1), true),
                3,
            ),
            ("fatal", report(|s| (s.fatal, s.dead) = (1, 1), false), 4),
            (
                "exhausted",
                report(|s| (s.failed, s.dead) = (1, 1), true),
                4,
            ),
            (
                "sigterm",
                report(|s| (s.stop, s.signal) = (sigterm, Some(15)), false),
                143,
            ),
            (
                "released after the limit",
                report(
                    |s| (s.stop, s.released, s.signal) = (Limit, 1, Some(2)),
                    true,
                ),
                130,
            ),
        ];
        for (what, r, want) in cases {
            assert_eq!(r.exit_code(), want, "{what}");
        }
        let mut r = report(|s| s.fatal = 1, true);
        r.cannot_start = Some("no such file".into());
        assert_eq!(r.exit_code(), exit::CANNOT_START);
    }
}
