//! `workq-bench resources`: two figures of docs/RELIABILITY.md, rerunnable.
//!
//! - Resident memory of the server with `--payload-mib` of payload queued
//!   (items of `--item-bytes`), on the memory store, on the embedded store,
//!   and on the embedded store again after a restart (`VmRSS` from
//!   `/proc/PID/status`).
//! - The server's CPU with its descriptor limit reached: started under
//!   `ulimit -n 64`, `--connections` TCP connections opened and held (the
//!   accept loop meets EMFILE), then its CPU time over `--cpu-seconds` read
//!   from `/proc/PID/stat` (utime + stime).

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;
use workq_proto::v1 as pb;

type Client = pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>;

/// `workq-bench resources`' flags.
#[derive(Debug, clap::Args)]
pub struct ResourcesArgs {
    /// MiB of payload queued for the memory figure (0: skip it).
    #[arg(long, default_value_t = 256)]
    payload_mib: u64,
    /// Bytes per item.
    #[arg(long, default_value_t = 4096)]
    item_bytes: usize,
    /// Connections held open for the CPU figure (0: skip it).
    #[arg(long, default_value_t = 200)]
    connections: usize,
    /// Seconds the CPU is measured for.
    #[arg(long, default_value_t = 10)]
    cpu_seconds: u64,
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin` under `sh -c 'ulimit -n N; exec …'` when `nofile` is set.
fn start(bin: &Path, store: &str, dir: &Path, nofile: Option<u32>) -> Result<Server> {
    let args: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--http-listen".into(),
        "127.0.0.1:0".into(),
        "--store".into(),
        store.into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--max-queued-bytes".into(),
        (4u64 << 30).to_string(),
    ];
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    args.iter().for_each(|a| {
        cmd.arg(a);
    });
    cmd.env("RUST_LOG", "error");
    let (child, addr) = crate::server::spawn_listening(&mut cmd, bin)?;
    Ok(Server { child, addr })
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

async fn fill(addr: &str, args: &ResourcesArgs) -> Result<u64> {
    let mut c = Client::connect(format!("http://{addr}"))
        .await?
        .max_encoding_message_size(64 << 20);
    let total = (args.payload_mib << 20) / args.item_bytes as u64;
    let per_call = 256u64;
    let mut sent = 0;
    while sent < total {
        let n = per_call.min(total - sent);
        let items = (0..n)
            .map(|i| pb::NewItem {
                payload: vec![(i % 251) as u8; args.item_bytes].into(),
                ..Default::default()
            })
            .collect();
        c.enqueue(pb::EnqueueRequest {
            queue: "rss".into(),
            items,
            create_queue: true,
            request_id: String::new(),
        })
        .await
        .context("enqueue")?;
        sent += n;
    }
    Ok(total)
}

async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Runs both measurements and prints them.
pub async fn resources(args: &ResourcesArgs, bin: &Path) -> Result<()> {
    if !bin.exists() {
        bail!("{} not found: pass --server", bin.display());
    }
    println!("server: {}", bin.display());
    if args.payload_mib > 0 {
        let items = (args.payload_mib << 20) / args.item_bytes as u64;
        let goal_payload = (items * (args.item_bytes as u64 + 200)) as f64 / 1048576.0;
        println!(
            "memory: {} MiB of payload, {items} items of {} bytes (payload + 200 B/item = {goal_payload:.0} MiB; 1.3x = {:.0} MiB)",
            args.payload_mib,
            args.item_bytes,
            goal_payload * 1.3
        );
        let dir = tempfile::tempdir()?;
        let mem = {
            let s = start(bin, "memory", dir.path(), None)?;
            let idle = rss_mib(s.child.id())?;
            fill(&s.addr, args).await?;
            settle().await;
            let rss = rss_mib(s.child.id())?;
            println!("  memory store: idle {idle:.0} MiB, queued {rss:.0} MiB");
            rss
        };
        let s = start(bin, "embedded", dir.path(), None)?;
        let idle = rss_mib(s.child.id())?;
        fill(&s.addr, args).await?;
        settle().await;
        let rss = rss_mib(s.child.id())?;
        println!(
            "  embedded store: idle {idle:.0} MiB, queued {rss:.0} MiB ({:.2}x the memory store, {:.2}x payload + 200 B/item)",
            rss / mem,
            rss / goal_payload
        );
        drop(s);
        let s = start(bin, "embedded", dir.path(), None)?;
        settle().await;
        let rss = rss_mib(s.child.id())?;
        println!(
            "  embedded store after a restart: {rss:.0} MiB ({:.2}x the memory store, {:.2}x payload + 200 B/item)",
            rss / mem,
            rss / goal_payload
        );
    }
    if args.connections > 0 {
        let dir = tempfile::tempdir()?;
        let s = start(bin, "memory", dir.path(), Some(64))?;
        let mut held = Vec::new();
        for _ in 0..args.connections {
            match tokio::net::TcpStream::connect(&s.addr).await {
                Ok(c) => held.push(c),
                Err(e) => {
                    println!("  connect failed after {}: {e}", held.len());
                    break;
                }
            }
        }
        // Let the accept loop meet the limit.
        settle().await;
        let pid = s.child.id();
        let before = cpu_ticks(pid)?;
        tokio::time::sleep(Duration::from_secs(args.cpu_seconds)).await;
        let after = cpu_ticks(pid)?;
        let ticks = after - before;
        // CLK_TCK is 100 on Linux.
        let pct = ticks as f64 / (args.cpu_seconds as f64 * 100.0) * 100.0;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        println!(
            "descriptor limit: ulimit -n 64, {} connections held, server holds {fds} descriptors; CPU {ticks} ticks in {} s = {pct:.1}% of a core",
            held.len(),
            args.cpu_seconds
        );
        drop(held);
        settle().await;
        let c = Client::connect(format!("http://{}", s.addr)).await;
        println!(
            "  after closing them, a new client connects: {}",
            if c.is_ok() { "yes" } else { "no" }
        );
    }
    Ok(())
}
