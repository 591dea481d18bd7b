//! `wq stats`, `wq create` and `wq dead`: show a queue, set it up, and deal
//! with its dead items.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use worker_sdk::{Queue, QueueSettings, RequeueDead, Stats};

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
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
pub(crate) struct DeadArgs {
    /// Move the dead items back to pending, attempts reset (all of them, or those
    /// given with --id).
    #[arg(long)]
    requeue: bool,
    /// With --requeue: only this item (repeatable).
    #[arg(long = "id", value_name = "ITEM_ID", requires = "requeue")]
    ids: Vec<String>,
    /// List at most this many (0: all; the server's pages are followed).
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn stats(q: &Queue, args: StatsArgs) -> Result<i32> {
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
    let rows: [(&str, String); 11] = [
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
        ("state", s.state.to_string()),
    ];
    for (k, v) in rows {
        writeln!(out, "{k:<10} {v}")?;
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

pub(crate) async fn create(q: &Queue, args: CreateArgs) -> Result<i32> {
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

pub(crate) async fn update(q: &Queue, args: CreateArgs) -> Result<i32> {
    let settings = QueueSettings {
        default_lease: args.lease,
        max_attempts: args.max_attempts,
        retry_backoff: args.retry_backoff,
        retry_backoff_max: args.retry_backoff_max,
    };
    let info = q.update(&settings).await?;
    let s = &info.settings;
    let show = |d: Option<Duration>| d.map_or_else(|| "default".to_owned(), |d| format!("{d:?}"));
    println!(
        "updated queue {}: lease {}, max attempts {}, retry back-off {} up to {}",
        q.name(),
        show(s.default_lease),
        s.max_attempts
            .map_or_else(|| "default".to_owned(), |n| n.to_string()),
        show(s.retry_backoff),
        show(s.retry_backoff_max)
    );
    Ok(0)
}

pub(crate) async fn dead(q: &Queue, args: DeadArgs) -> Result<i32> {
    if args.requeue {
        let which = if args.ids.is_empty() {
            RequeueDead::All
        } else {
            RequeueDead::Ids(args.ids.iter().map(worker_sdk::ItemId::new).collect())
        };
        let n = q.requeue_dead(which).await?;
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

pub(crate) fn shorten(s: &str, max: usize) -> String {
    let one_line = s.replace('\n', "\\n");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}
