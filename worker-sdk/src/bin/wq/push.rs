//! `wq push`: add items from arguments, a file, standard input or a range.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::StreamExt;
use worker_sdk::{NewItem, Queue, QueueSettings};

use crate::show::shorten;

#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// Items to push; a lone `-` reads items from standard input, one per line.
    pub(crate) items: Vec<String>,

    /// Read items from FILE, one per line (`-` for standard input).
    #[arg(short, long, value_name = "FILE", env = "WQ_PUSH_FILE")]
    file: Option<PathBuf>,

    /// Push the integers A..B, both ends included (like the shell's {A..B});
    /// `A..=B` means the same.
    #[arg(long, value_name = "A..B", value_parser = parse_range, env = "WQ_PUSH_RANGE")]
    range: Option<(i64, i64)>,

    /// Items per batch: each batch is added all or nothing, and several are
    /// in flight at once on one stream (at most the server's max_batch_items).
    #[arg(long, default_value_t = 1000, value_name = "N", env = "WQ_PUSH_BATCH",
          value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,

    /// Seal the queue after pushing.
    #[arg(long, env = "WQ_PUSH_SEAL")]
    seal: bool,

    /// Use each item's text as its idempotency key: an item the queue already has
    /// (pending, leased, dead, or completed within the server's window) is not
    /// added again, so a fill step can be re-run safely.
    #[arg(long, env = "WQ_PUSH_DEDUPE")]
    dedupe: bool,
}

/// Longest idempotency key the queue service takes, in bytes.
const MAX_DEDUPE_KEY: usize = 4096;

pub(crate) fn parse_range(s: &str) -> std::result::Result<(i64, i64), String> {
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

/// Batches read ahead of the server's answers.
const READ_AHEAD: usize = 16;

pub(crate) async fn push(q: &Queue, args: PushArgs) -> Result<i32> {
    let stdin_twice = args.items.iter().any(|i| i == "-")
        && args.file.as_ref().is_some_and(|f| f.as_os_str() == "-");
    if stdin_twice {
        bail!("standard input given twice (`-` and --file -)");
    }
    let file = match &args.file {
        Some(f) if f.as_os_str() != "-" => Some((
            std::fs::File::open(f).with_context(|| format!("cannot open {}", f.display()))?,
            f.display().to_string(),
        )),
        _ => None,
    };
    let nothing = args.items.is_empty() && args.file.is_none() && args.range.is_none();
    if nothing && !args.seal {
        bail!("nothing to push: give items, --file FILE, `-` or --range A..B");
    }
    let known_total = (args.file.is_none() && !args.items.iter().any(|i| i == "-")).then(|| {
        args.items.len() as u64
            + args
                .range
                .map_or(0, |(a, b)| u64::try_from(b - a).unwrap_or(0) + 1)
    });

    // Items are read on a thread of their own, a batch at a time, and sent
    // while the next are read: at most READ_AHEAD batches wait.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<NewItem>>(READ_AHEAD);
    let batch = usize::try_from(args.batch).unwrap_or(1000).max(1);
    let (items, range, dedupe, stdin_file) = (
        args.items,
        args.range,
        args.dedupe,
        args.file.as_ref().is_some_and(|f| f.as_os_str() == "-"),
    );
    let reader = tokio::task::spawn_blocking(move || {
        let mut batcher = Batcher {
            tx,
            batch,
            dedupe,
            items: Vec::with_capacity(batch),
        };
        for item in items {
            if item == "-" {
                read_lines(std::io::stdin().lock(), "standard input", &mut batcher)?;
            } else {
                batcher.add(item.into())?;
            }
        }
        if stdin_file {
            read_lines(std::io::stdin().lock(), "standard input", &mut batcher)?;
        }
        if let Some((f, name)) = file {
            read_lines(std::io::BufReader::new(f), &name, &mut batcher)?;
        }
        if let Some((a, b)) = range {
            for n in a..=b {
                batcher.add(NewItem::from(n.to_string()))?;
            }
        }
        batcher.flush()
    });

    let bar = progress(known_total);
    let producer = q.producer().with_in_flight(8);
    let mut answers = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|batch| {
            let producer = producer.clone();
            async move {
                let n = batch.len();
                let pushed = producer.send(batch).await?;
                Ok::<_, anyhow::Error>((n, pushed.iter().filter(|p| p.duplicate).count()))
            }
        })
        .buffered(READ_AHEAD);
    let (mut n, mut duplicates) = (0usize, 0usize);
    while let Some(answer) = answers.next().await {
        match answer {
            Ok((sent, dup)) => {
                n += sent;
                duplicates += dup;
                bar.inc(sent as u64);
            }
            Err(e) if n > 0 => {
                bar.abandon();
                return Err(e.context(format!(
                    "pushing to queue {}: the first {n} items were added, the rest were not",
                    q.name()
                )));
            }
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        }
    }
    bar.finish_and_clear();
    if let Err(e) = reader.await.context("the reading thread failed")? {
        if n > 0 {
            return Err(e.context(format!(
                "pushing to queue {}: the first {n} items were added, the rest were not",
                q.name()
            )));
        }
        return Err(e);
    }
    if n == 0 && !args.seal {
        bail!("nothing to push: the input had no items");
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

/// A progress bar on standard error when it is a terminal; hidden otherwise.
fn progress(total: Option<u64>) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    let template = if total.is_some() {
        "pushing [{bar:40}] {pos}/{len}  {per_sec}  ETA {eta}"
    } else {
        "pushing {pos} items  {per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Gathers items into batches and hands each full one to the sender.
struct Batcher {
    tx: tokio::sync::mpsc::Sender<Vec<NewItem>>,
    batch: usize,
    dedupe: bool,
    items: Vec<NewItem>,
}

impl Batcher {
    fn add(&mut self, mut item: NewItem) -> Result<()> {
        if self.dedupe {
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
        self.items.push(item);
        if self.items.len() >= self.batch {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.items, Vec::with_capacity(self.batch));
        // The sender gone means the push failed; its error is reported there.
        let _ = self.tx.blocking_send(full);
        Ok(())
    }
}

fn read_lines(r: impl BufRead, what: &str, out: &mut Batcher) -> Result<()> {
    for line in r.lines() {
        let line = line.with_context(|| format!("reading {what}"))?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if !line.trim().is_empty() {
            out.add(NewItem::from(line.to_owned()))?;
        }
    }
    Ok(())
}
