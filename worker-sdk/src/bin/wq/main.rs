//! `wq`: fill, inspect and work workq queues from the command line.
//!
//! A thin binary: it parses flags (each also an environment variable), sets up
//! logging, and calls the `worker_sdk` library.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use worker_sdk::consume::exit;
use worker_sdk::{Client, ConsumeOptions, NewItem, Queue, QueueSettings, Stats};

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
    /// Queue URL: grpc://host:port (the workq queue service), redis://host:port (a
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

#[derive(Debug, Args)]
struct PushArgs {
    /// Items to push; a lone `-` reads items from standard input, one per line.
    items: Vec<String>,

    /// Read items from FILE, one per line (`-` for standard input).
    #[arg(short, long, value_name = "FILE", env = "WQ_PUSH_FILE")]
    file: Option<PathBuf>,

    /// Push the integers A..B, both ends included (like the shell's {A..B});
    /// `A..=B` means the same.
    #[arg(long, value_name = "A..B", value_parser = parse_range, env = "WQ_PUSH_RANGE")]
    range: Option<(i64, i64)>,

    /// Seal the queue after pushing.
    #[arg(long, env = "WQ_PUSH_SEAL")]
    seal: bool,

    /// Use each item's text as its idempotency key: an item the queue already has
    /// (pending, leased, dead, or completed within the server's window) is not
    /// added again, so a fill step can be re-run safely.
    #[arg(long, env = "WQ_PUSH_DEDUPE")]
    dedupe: bool,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Default lease duration (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration, env = "WQ_DEFAULT_LEASE", value_name = "DURATION")]
    lease: Option<Duration>,
    /// Attempts before an item goes dead.
    #[arg(long, env = "WQ_MAX_ATTEMPTS", value_name = "N")]
    max_attempts: Option<u32>,
    /// Back-off after the first retriable failure (doubled each further attempt).
    #[arg(long, value_parser = humantime::parse_duration, env = "WQ_RETRY_BACKOFF", value_name = "DURATION")]
    retry_backoff: Option<Duration>,
    /// Upper bound of the back-off.
    #[arg(long, value_parser = humantime::parse_duration, env = "WQ_RETRY_BACKOFF_MAX", value_name = "DURATION")]
    retry_backoff_max: Option<Duration>,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Print each update as one JSON line instead of a progress bar.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct DeadArgs {
    /// Move the dead items back to pending, attempts reset (all of them, or those
    /// given with --id).
    #[arg(long)]
    requeue: bool,
    /// With --requeue: only this item (repeatable).
    #[arg(long = "id", value_name = "ITEM_ID", requires = "requeue")]
    ids: Vec<String>,
    /// List at most this many.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    /// Take N items, then exit (the coarse pattern is -c 1). Without it: work until
    /// the queue is drained.
    #[arg(short = 'c', long = "count", value_name = "N", env = "WQ_COUNT")]
    count: Option<u64>,

    /// Programs to run at once.
    #[arg(long, default_value_t = 1, value_name = "K", env = "WQ_CONCURRENCY",
          value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,

    /// Lease duration; renewed every third of it while the program runs.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "WQ_LEASE",
          value_name = "DURATION")]
    lease: Duration,

    /// After SIGTERM, how long running programs may take before they are killed.
    /// Keep it below the pod's terminationGracePeriodSeconds (30s by default).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration, env = "WQ_GRACE",
          value_name = "DURATION")]
    grace: Duration,

    /// Exit codes that fail an item for good (it goes dead at once), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CODES",
        env = "WQ_FATAL_EXIT_CODES"
    )]
    fatal_exit_codes: Vec<i32>,

    /// Stop as soon as the queue is empty (nothing pending, delayed or leased),
    /// sealed or not: the rediswq meaning. Without it, wq waits for the queue to be
    /// sealed and drained.
    #[arg(long, env = "WQ_UNTIL_EMPTY")]
    until_empty: bool,

    /// How long one lease call waits for an item before asking again.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, env = "WQ_POLL_WAIT",
          value_name = "DURATION")]
    poll_wait: Duration,

    /// The program to run for each item, and its arguments (put `--` before them).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    program: Vec<OsString>,
}

/// Longest idempotency key the queue service takes, in bytes.
const MAX_DEDUPE_KEY: usize = 4096;

fn parse_range(s: &str) -> std::result::Result<(i64, i64), String> {
    let (a, b) = s
        .split_once("..=")
        .or_else(|| s.split_once(".."))
        .ok_or_else(|| format!("{s:?} is not a range: expected A..B, e.g. 1..100"))?;
    let a: i64 = a
        .trim()
        .parse()
        .map_err(|e| format!("range start {a:?}: {e}"))?;
    let b: i64 = b
        .trim()
        .parse()
        .map_err(|e| format!("range end {b:?}: {e}"))?;
    if b < a {
        return Err(format!("range {s:?} is empty: its end is below its start"));
    }
    Ok((a, b))
}

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
    let client = Client::connect_with_timeout(&cli.url, cli.connect_timeout).await?;
    let q = client.queue(&name)?;
    match cli.command {
        Command::Push(args) => push(&q, args).await,
        Command::Stats(args) => stats(&q, args).await,
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
        Command::Create(args) => create(&q, args).await,
        Command::Watch(args) => watch(&q, args).await,
        Command::Dead(args) => dead(&q, args).await,
        Command::Consume(args) => consume(&q, args).await,
    }
}

async fn push(q: &Queue, args: PushArgs) -> Result<i32> {
    let mut items: Vec<NewItem> = Vec::new();
    let mut stdin_used = false;
    for item in args.items {
        if item == "-" {
            stdin_used = true;
            items.extend(read_lines(std::io::stdin().lock(), "standard input")?);
        } else {
            items.push(item.into());
        }
    }
    if let Some(file) = &args.file {
        if file.as_os_str() == "-" {
            if stdin_used {
                bail!("standard input given twice (`-` and --file -)");
            }
            items.extend(read_lines(std::io::stdin().lock(), "standard input")?);
        } else {
            let f = std::fs::File::open(file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            items.extend(read_lines(
                std::io::BufReader::new(f),
                &file.display().to_string(),
            )?);
        }
    }
    if let Some((a, b)) = args.range {
        items.extend((a..=b).map(|n| NewItem::from(n.to_string())));
    }
    if items.is_empty() && !args.seal {
        bail!("nothing to push: give items, --file FILE, `-` or --range A..B");
    }
    if args.dedupe {
        for item in &mut items {
            let key = std::str::from_utf8(&item.payload)
                .ok()
                .filter(|k| k.len() <= MAX_DEDUPE_KEY)
                .with_context(|| {
                    format!(
                        "--dedupe: an item is not UTF-8 text of at most {MAX_DEDUPE_KEY} bytes: {}",
                        shorten(&String::from_utf8_lossy(&item.payload), 40)
                    )
                })?;
            item.idempotency_key = Some(key.to_owned());
        }
    }
    let n = items.len();
    let mut duplicates = 0;
    if n > 0 {
        duplicates = q
            .push_detailed(items)
            .await?
            .iter()
            .filter(|p| p.duplicate)
            .count();
    }
    let added = n - duplicates;
    let dup_note = if duplicates > 0 {
        format!(" ({duplicates} already there)")
    } else {
        String::new()
    };
    if args.seal {
        if n == 0 {
            // Sealing needs the queue to exist; pushing nothing would not create it.
            q.create(&QueueSettings::default())
                .await
                .or_else(|e| match e {
                    worker_sdk::Error::Refused { .. } => Ok(false),
                    e => Err(e),
                })?;
        }
        q.seal().await?;
        println!(
            "pushed {added} items to queue {}{dup_note} and sealed it",
            q.name()
        );
    } else {
        println!("pushed {added} items to queue {}{dup_note}", q.name());
    }
    Ok(0)
}

fn read_lines(r: impl BufRead, what: &str) -> Result<Vec<NewItem>> {
    let mut items = Vec::new();
    for line in r.lines() {
        let line = line.with_context(|| format!("reading {what}"))?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if !line.trim().is_empty() {
            items.push(NewItem::from(line.to_owned()));
        }
    }
    Ok(items)
}

async fn stats(q: &Queue, args: StatsArgs) -> Result<i32> {
    let s = q.stats().await?;
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        print_stats_table(&s)?;
    }
    Ok(0)
}

fn print_stats_table(s: &Stats) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let rows: [(&str, String); 10] = [
        ("queue", s.queue.clone()),
        ("enqueued", s.enqueued.to_string()),
        ("pending", s.pending.to_string()),
        ("delayed", s.delayed.to_string()),
        ("leased", s.leased.to_string()),
        ("completed", s.completed.to_string()),
        ("dead", s.dead.to_string()),
        ("retried", s.retried.to_string()),
        ("sealed", yes_no(s.sealed).into()),
        ("drained", yes_no(s.drained).into()),
    ];
    for (k, v) in rows {
        writeln!(out, "{k:<10} {v}")?;
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

async fn create(q: &Queue, args: CreateArgs) -> Result<i32> {
    let settings = QueueSettings {
        default_lease: args.lease,
        max_attempts: args.max_attempts,
        retry_backoff: args.retry_backoff,
        retry_backoff_max: args.retry_backoff_max,
    };
    let created = q.create(&settings).await?;
    if created {
        println!("created queue {}", q.name());
    } else {
        println!("queue {} already exists with these settings", q.name());
    }
    Ok(0)
}

async fn watch(q: &Queue, args: WatchArgs) -> Result<i32> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if args.json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:40}] {pos}/{len} done  {per_sec}  ETA {eta}  {msg}",
        )?
        .progress_chars("=> "),
    );
    bar.set_prefix(q.name().to_string());
    let mut last: Option<Stats> = None;
    let mut retry_delay = Duration::from_millis(100);
    'connect: loop {
        let mut updates = match q.watch(true).await {
            Ok(u) => u,
            Err(e) if e.is_transient() => {
                bar.set_message(format!("reconnecting: {e}"));
                tokio::time::sleep(retry_delay).await;
                retry_delay = (retry_delay * 2).min(Duration::from_secs(5));
                continue 'connect;
            }
            Err(e) => return Err(e.into()),
        };
        while let Some(s) = updates.next().await {
            let s = match s {
                Ok(s) => s,
                // The server went away: watch again once it is back.
                Err(e) if e.is_transient() => continue 'connect,
                Err(e) => return Err(e.into()),
            };
            retry_delay = Duration::from_millis(100);
            if args.json {
                println!("{}", serde_json::to_string(&s)?);
            }
            bar.set_length(s.enqueued);
            bar.set_position(s.finished());
            if last.is_none() {
                // What was done before the watch started is not this run's rate.
                bar.reset_eta();
            }
            bar.set_message(format!(
                "pending {} leased {} delayed {} dead {}{}",
                s.pending,
                s.leased,
                s.delayed,
                s.dead,
                if s.sealed { "" } else { " (not sealed)" }
            ));
            let drained = s.drained;
            last = Some(s);
            if drained {
                break 'connect;
            }
        }
        break;
    }
    bar.finish_and_clear();
    match last {
        Some(s) if s.drained => {
            if !args.json {
                println!(
                    "queue {} drained: {} completed, {} dead, {} retries",
                    s.queue, s.completed, s.dead, s.retried
                );
            }
            Ok(0)
        }
        _ => bail!(
            "queue {}: the watch ended before it was drained (was the queue deleted?)",
            q.name()
        ),
    }
}

async fn dead(q: &Queue, args: DeadArgs) -> Result<i32> {
    if args.requeue {
        let ids: Vec<_> = args.ids.iter().map(worker_sdk::ItemId::new).collect();
        let n = q.requeue_dead(&ids).await?;
        println!("requeued {n} dead items of queue {}", q.name());
        return Ok(0);
    }
    let items = q.dead(args.limit).await?;
    if args.json {
        println!("{}", serde_json::to_string(&items)?);
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    if items.is_empty() {
        writeln!(out, "no dead items in queue {}", q.name())?;
        return Ok(0);
    }
    let id_w = items
        .iter()
        .map(|d| d.id.as_str().len())
        .max()
        .unwrap_or(0)
        .max(2);
    let reason_w = items
        .iter()
        .map(|d| d.reason.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(6, 80);
    writeln!(
        out,
        "{:<id_w$}  {:>8}  {:<reason_w$}  PAYLOAD",
        "ID", "ATTEMPTS", "REASON"
    )?;
    for d in items {
        let payload = String::from_utf8_lossy(&d.payload);
        writeln!(
            out,
            "{:<id_w$}  {:>8}  {:<reason_w$}  {}",
            d.id.as_str(),
            d.attempts,
            shorten(&d.reason, reason_w),
            shorten(payload.trim_end(), 60)
        )?;
    }
    Ok(0)
}

fn shorten(s: &str, max: usize) -> String {
    let one_line = s.replace('\n', "\\n");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

async fn consume(q: &Queue, args: ConsumeArgs) -> Result<i32> {
    let mut opts = ConsumeOptions::new(args.program);
    opts.count = args.count;
    opts.concurrency = usize::from(args.concurrency);
    opts.lease = args.lease;
    opts.grace = args.grace;
    opts.until_empty = args.until_empty;
    opts.fatal_exit_codes = args.fatal_exit_codes.into_iter().collect::<BTreeSet<_>>();
    opts.poll_wait = args.poll_wait;
    if opts.count == Some(0) {
        return Ok(exit::OK);
    }
    let report = worker_sdk::consume(q, opts).await?;
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
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("1..10"), Ok((1, 10)));
        assert_eq!(parse_range("1..=10"), Ok((1, 10)));
        assert_eq!(parse_range("-2..2"), Ok((-2, 2)));
        assert!(parse_range("5..1").is_err());
        assert!(parse_range("a..b").is_err());
        assert!(parse_range("10").is_err());
    }
}
