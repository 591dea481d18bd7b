//! A worker written against the SDK: squares the numbers in a queue.
//!
//! ```sh
//! wq push -q squares --range 1..100 --seal
//! WQ_QUEUE=squares cargo run -p worker-sdk --example squares
//! ```
//!
//! It works the queue with four items at a time until the queue is drained, and
//! stops cleanly on SIGTERM or Ctrl-C.

use std::time::Duration;

use worker_sdk::{WorkError, WorkerOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("WQ_URL").unwrap_or_else(|_| "grpc://127.0.0.1:50051".into());
    let name = std::env::var("WQ_QUEUE").unwrap_or_else(|_| "squares".into());
    let queue = worker_sdk::connect(&url).await?.queue(&name)?;

    let summary = queue
        .work(
            WorkerOptions::default()
                .concurrency(4)
                .lease(Duration::from_secs(30)),
            |job| async move {
                let text = std::str::from_utf8(job.payload())
                    .map_err(|e| WorkError::fatal(format!("not UTF-8: {e}")))?;
                let n: u64 = text
                    .trim()
                    .parse()
                    .map_err(|e| WorkError::fatal(format!("{text:?} is not a number: {e}")))?;
                println!("{n} squared is {}", n * n);
                Ok(())
            },
        )
        .await?;
    eprintln!(
        "{:?}: {} completed, {} failed",
        summary.stop,
        summary.completed,
        summary.failed + summary.fatal
    );
    Ok(())
}
