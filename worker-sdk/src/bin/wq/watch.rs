//! `wq watch`: a live progress bar (or JSON lines) until the queue is drained,
//! watching again with back-off when the server goes away.

use anyhow::{Result, bail};
use clap::Args;
use futures::StreamExt;
use worker_sdk::retry::Backoff;
use worker_sdk::{Queue, Stats};

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Print each update as one JSON line instead of a progress bar.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn watch(q: &Queue, args: WatchArgs) -> Result<i32> {
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
    let mut backoff = Backoff::for_server();
    'connect: loop {
        let mut updates = match q.watch(true).await {
            Ok(u) => u,
            Err(e) if e.is_transient() => {
                bar.set_message(format!("reconnecting: {e}"));
                tokio::time::sleep(backoff.next_delay()).await;
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
            backoff.reset();
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
