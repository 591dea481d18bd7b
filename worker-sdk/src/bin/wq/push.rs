//! `wq push`: add items from arguments, a file, standard input or a range.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
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

pub(crate) async fn push(q: &Queue, args: PushArgs) -> Result<i32> {
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
