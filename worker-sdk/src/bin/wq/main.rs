//! `wq`: fill, inspect and work workq queues from the command line.
//!
//! A thin binary: it parses flags (each also an environment variable), sets up
//! logging, and calls the `worker_sdk` library.

mod push;
mod show;
mod watch;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use worker_sdk::Client;
use worker_sdk::cli::ConsumeArgs;
use worker_sdk::consume::exit;

use push::PushArgs;
use show::{CreateArgs, DeadArgs, StatsArgs};
use watch::WatchArgs;

const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 an error (server unreachable, queue not found, ...); 2 bad usage.
`wq consume` has more: see `wq consume --help`.
Logs go to stderr; WQ_LOG sets their level (default warn; info shows each run's summary).";

/// Fill, inspect and work workq queues.
///
/// wq talks to a workq queue service, or to the tutorials' own Redis (rediswq.py)
/// and RabbitMQ queues. It fills queues (push, seal), shows them
/// (stats, watch, dead), and works them with an unmodified program (consume), the
/// way amqp-consume does in the Kubernetes work-queue tutorials.
#[derive(Debug, Parser)]
#[command(name = "wq", version, after_help = AFTER_HELP)]
struct Cli {
    /// Queue URL: grpc://host:port (the workq queue service; grpcs://host:port over
    /// TLS; replicas on a shared store: grpc://a:50051,b:50051, calls move to
    /// the next when one goes), redis://host:port (a
    /// rediswq.py-style Redis queue), or amqp://user:pass@host:port/vhost (RabbitMQ).
    #[arg(
        long,
        env = "WQ_URL",
        default_value = "grpc://127.0.0.1:50051",
        value_name = "URL",
        global = true,
        help_heading = "Global options"
    )]
    url: String,

    /// Queue name (required): 1-63 lowercase letters, digits and '-'.
    #[arg(
        short,
        long,
        env = "WQ_QUEUE",
        global = true,
        value_name = "NAME",
        help_heading = "Global options"
    )]
    queue: Option<String>,

    /// How long to wait for the server to accept a connection (e.g. 5s, 1m).
    #[arg(long, env = "WQ_CONNECT_TIMEOUT", default_value = "5s", value_name = "DURATION",
          value_parser = humantime::parse_duration, global = true, help_heading = "Global options")]
    connect_timeout: Duration,

    #[command(flatten)]
    security: worker_sdk::cli::ConnectArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Add items to a queue (creating it if needed).
    ///
    /// Items come from the arguments, from a file or standard input (one item per
    /// line; blank lines are skipped), or from a numeric range.
    #[command(after_help = PUSH_EXAMPLES)]
    Push(PushArgs),
    /// Show a queue's counters, as a table or as JSON.
    Stats(StatsArgs),
    /// Seal a queue: no more items will come. Once sealed and worked off it is
    /// drained, and workers exit 0.
    Seal,
    /// Create a queue with settings (push creates one with defaults).
    Create(CreateArgs),
    /// Change a queue's settings: those given change, the others stay (the
    /// queue service only).
    Update(CreateArgs),
    /// Show a live progress bar (done / total, rate, ETA) until the queue is drained.
    Watch(WatchArgs),
    /// List dead items with the reason each died; --requeue sends them back.
    Dead(DeadArgs),
    /// Work a queue with a program: each item's payload goes to its standard input.
    ///
    /// The amqp-consume pattern: the program needs no change. Exit 0 completes the
    /// item; an exit code listed in --fatal-exit-codes fails it for good (dead at
    /// once); any other exit, or death by a signal, fails it for a retry. The lease
    /// is renewed while the program runs. The program also gets WQ_ITEM_ID,
    /// WQ_ATTEMPT and WQ_QUEUE in its environment, and runs in its own process
    /// group.
    ///
    /// On SIGTERM (or SIGINT) wq takes no more items and sends SIGTERM to the
    /// program's process group; an item whose program then exits 0 within the grace
    /// period is completed, every other one is released (back to the queue at once,
    /// no attempt counted), and a program still running at the end of the grace
    /// period is killed. A second signal ends the grace period at once.
    #[command(after_help = CONSUME_EXIT_CODES)]
    Consume(ConsumeArgs),
}

const PUSH_EXAMPLES: &str = "\
Examples:
  wq push -q job1 apple banana cherry
  wq push -q job1 --file items.txt --seal
  seq 1 100 | wq push -q job2 -
  wq push -q job2 --range 1..100 --seal";

const CONSUME_EXIT_CODES: &str = "\
Examples:
  coarse, one item per pod:    wq consume -q job1 -c 1 -- ./worker.py
  fine, loop until drained:    wq consume -q job2 --concurrency 4 -- ./worker.py

Exit codes:
  0    done: N items completed (-c N), or the queue is drained (or empty, with --until-empty)
  1    an error that is not an item's (server unreachable, queue not found, ...)
  2    bad usage
  3    with -c: an item was not completed (the program failed; the item is back in the queue)
  4    an item this consumer failed went dead (a --fatal-exit-codes code, or attempts exhausted);
       for a Job's podFailurePolicy: onExitCodes {operator: In, values: [4]}
  127  the program could not be started
  128+N  stopped by signal N before done (143 for SIGTERM, 130 for SIGINT)";

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wq: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wq: error: {}", one_line(&e));
            exit::ERROR
        }
    };
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// An error and its causes on one line, without repeating what is already said.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
        // The SDK's errors already say why; what lies under them is transport detail.
        if cause.downcast_ref::<worker_sdk::Error>().is_some() {
            break;
        }
    }
    msg
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("WQ_LOG").unwrap_or_else(|_| EnvFilter::new("warn,lapin=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

async fn run(cli: Cli) -> Result<i32> {
    let queue_name = cli.queue.clone();
    let queue = || -> Result<String> {
        queue_name
            .clone()
            .context("no queue given: use -q NAME or set WQ_QUEUE")
    };
    // Check what can be checked before connecting.
    let name = queue()?;
    let client =
        Client::connect_with(&cli.url, cli.connect_timeout, &cli.security.options()).await?;
    let q = client.queue(&name)?;
    match cli.command {
        Command::Push(args) => push::push(&q, args).await,
        Command::Stats(args) => show::stats(&q, args).await,
        Command::Seal => {
            let s = q.seal().await?;
            println!(
                "sealed queue {} ({} items, {} left to do)",
                s.queue,
                s.enqueued,
                s.pending + s.delayed + s.leased
            );
            Ok(0)
        }
        Command::Create(args) => show::create(&q, args).await,
        Command::Update(args) => show::update(&q, args).await,
        Command::Watch(args) => watch::watch(&q, args).await,
        Command::Dead(args) => show::dead(&q, args).await,
        Command::Consume(args) => Ok(worker_sdk::cli::consume(&q, &args).await?),
    }
}

#[cfg(test)]
mod tests;
