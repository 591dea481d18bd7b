//! `--scale-depths`, `--scale-consumers`, `--scale-queues`: how each system
//! scales with queue depth, waiting consumers and the number of queues,
//! instead of the comparison.

use anyhow::Result;
use std::time::{Duration, Instant};

use crate::{Args, Target, connect_all, consume, consume_with, produce, seconds};

/// Lease+complete `measured` items (batch as configured) from a queue
/// holding `depth` items; returns items/s and the server's memory per item.
async fn scale_depth(args: &Args, t: &Target, depth: u64) -> Result<(f64, Option<f64>)> {
    let q = format!("bench-depth-{}-{depth}-{}", t.name, std::process::id());
    t.system.reset(&q).await?;
    let before = t.memory.bytes().await;
    produce(
        &t.system,
        &q,
        depth,
        1000.min(args.batch.max(100)),
        args.producers,
        args.payload,
    )
    .await?;
    let after = t.memory.bytes().await;
    let measured = depth.min(50_000);
    let s = seconds(consume(
        &t.system,
        &q,
        measured,
        args.batch,
        args.consumers,
        Duration::ZERO,
    ))
    .await?;
    t.system.drop_queue(&q).await?;
    let per_item = match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / depth as f64),
        _ => None,
    };
    Ok((measured as f64 / s, per_item))
}

/// End to end with `consumers` waiting consumers spread over `queues` queues.
async fn scale_e2e(args: &Args, t: &Target, consumers: usize, queues: usize) -> Result<f64> {
    let names: Vec<String> = (0..queues)
        .map(|i| {
            format!(
                "bench-scale-{}-{consumers}-{queues}-{i}-{}",
                t.name,
                std::process::id()
            )
        })
        .collect();
    for q in &names {
        t.system.reset(q).await?;
    }
    let per_queue = (args.items / queues as u64).max(1);
    let consumers_per_queue = (consumers / queues).max(1);
    // Every consumer is connected before the clock starts: the rate is of
    // the work, not of opening a thousand connections.
    let mut conns = Vec::new();
    for q in &names {
        conns.push(connect_all(&t.system, q, consumers_per_queue).await?);
    }
    let start = Instant::now();
    let mut work = Vec::new();
    for (q, conns) in names.iter().zip(conns) {
        let sys = t.system.clone();
        let q = q.clone();
        let (batch, producers, size) = (args.batch, 1, args.payload);
        work.push(async move {
            // try_join: a failed producer must not leave its consumer waiting forever.
            tokio::try_join!(
                produce(&sys, &q, per_queue, batch, producers, size),
                // A worker's long-poll: idle consumers wait in one call
                // instead of asking again and again.
                consume_with(conns, per_queue, batch, Duration::from_secs(5))
            )
            .map(|_| ())
        });
    }
    for r in futures::future::join_all(work).await {
        r?;
    }
    let rate = (per_queue * queues as u64) as f64 / start.elapsed().as_secs_f64();
    for q in &names {
        t.system.drop_queue(q).await?;
    }
    Ok(rate)
}

pub async fn scaling(args: &Args, targets: &[Target]) -> Result<()> {
    let mut rows = Vec::new();
    for t in targets {
        for &depth in &args.scale_depths {
            let (rate, mem) = scale_depth(args, t, depth).await?;
            eprintln!(
                "  {:<15} depth {depth:>9}: {rate:>10.0} items/s lease+complete, {} bytes/item",
                t.name,
                mem.map_or("–".into(), |m| format!("{m:.0}"))
            );
            rows.push(serde_json::json!({"system": t.name, "scale": "depth", "n": depth, "items_per_s": rate, "bytes_per_item": mem}));
        }
        for &c in &args.scale_consumers {
            let rate = scale_e2e(args, t, c, 1).await?;
            eprintln!(
                "  {:<15} {c:>5} waiting consumers: {rate:>10.0} items/s end to end",
                t.name
            );
            rows.push(serde_json::json!({"system": t.name, "scale": "consumers", "n": c, "items_per_s": rate}));
        }
        for &q in &args.scale_queues {
            let rate = scale_e2e(args, t, q.max(args.consumers), q).await?;
            eprintln!(
                "  {:<15} {q:>5} queues: {rate:>10.0} items/s end to end",
                t.name
            );
            rows.push(serde_json::json!({"system": t.name, "scale": "queues", "n": q, "items_per_s": rate}));
        }
    }
    println!("{}", serde_json::to_string_pretty(&rows)?);
    Ok(())
}
