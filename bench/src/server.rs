//! The servers under test: a queue-server process started for the workq
//! systems, and what the bench reads of a server process from `/proc`
//! (resident memory, CPU time).

use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A queue-server process for the workq systems.
pub struct Server {
    pub child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `bin` on `store` (memory or embedded, in a temporary directory).
    pub fn start(bin: &std::path::Path, store: &str) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().to_str().context("utf-8 temp dir")?;
        let mut server = Server::spawn(bin, &["--store", store, "--data-dir", data])?;
        server._dir = dir;
        Ok(server)
    }

    /// Starts `bin` on ephemeral ports with `args` added.
    pub fn spawn(bin: &std::path::Path, args: &[&str]) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            // As deployed: metrics recorded and served.
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("RUST_LOG", "warn");
        let (child, addr) = spawn_listening(&mut cmd, bin)?;
        Ok(Server {
            child,
            url: format!("http://{addr}"),
            _dir: dir,
        })
    }
}

/// Spawns `cmd` (a queue-server, `bin`, started on ephemeral ports) and
/// waits for its `listening` line: the child and its gRPC address
/// (`host:port`).
pub fn spawn_listening(cmd: &mut Command, bin: &std::path::Path) -> Result<(Child, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .with_context(|| format!("no grpc address in {line:?}"))?
        .to_string();
    Ok((child, addr))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn pid_of(name: &str) -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-o", "-f", name])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// How to read a system's server memory, in bytes.
pub enum Memory {
    Pid(u32),
    RedisInfo(String),
    None,
}

impl Memory {
    pub async fn bytes(&self) -> Option<u64> {
        match self {
            Memory::Pid(pid) => rss_kib(*pid, "VmRSS:").map(|k| k * 1024),
            Memory::RedisInfo(url) => {
                let mut c = redis::Client::open(url.as_str())
                    .ok()?
                    .get_multiplexed_async_connection()
                    .await
                    .ok()?;
                let info: String = redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                info.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))?
                    .trim()
                    .parse()
                    .ok()
            }
            Memory::None => None,
        }
    }
}

/// User plus system CPU time of process `pid` so far, in microseconds
/// (`/proc/<pid>/stat` fields 14 and 15, in clock ticks).
pub fn cpu_us(pid: u32) -> Option<f64> {
    Some(stat_times(&format!("/proc/{pid}/stat"))?.own)
}

/// CPU times read from a `/proc/…/stat` file, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// User plus system time of the process itself (all its threads).
    pub own: f64,
    /// User plus system time of its children that exited and were waited
    /// for (fields 16 and 17).
    pub children: f64,
}

/// The command name (field 2) and CPU times of a `/proc/…/stat` file.
fn stat_file(path: &str) -> Option<(String, u32, CpuTimes)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): the parent is field 4, utime 14,
    // stime 15, cutime 16, cstime 17.
    let ppid: u32 = fields.get(1)?.parse().ok()?;
    let tick = |i: usize| -> Option<f64> {
        // USER_HZ: 100 on every Linux the bench runs on (`getconf CLK_TCK`).
        const TICKS_PER_S: f64 = 100.0;
        Some(fields.get(i)?.parse::<f64>().ok()? / TICKS_PER_S * 1e6)
    };
    let times = CpuTimes {
        own: tick(11)? + tick(12)?,
        children: tick(13)? + tick(14)?,
    };
    Some((comm, ppid, times))
}

fn stat_times(path: &str) -> Option<CpuTimes> {
    Some(stat_file(path)?.2)
}

/// This process's CPU times so far.
pub fn own_cpu() -> CpuTimes {
    stat_times("/proc/self/stat").unwrap_or_default()
}

/// CPU time of every process named `comm` on this machine so far, in
/// microseconds, with what their exited children used: each one's own
/// time, plus the waited-for children's time of those whose parent is not
/// a `comm` (the server's root, e.g. PostgreSQL's postmaster, which reaps
/// the backends of closed connections). Read before and after a run, the
/// difference is what the server used meanwhile, connections that came and
/// went included.
pub fn cpu_of_all(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let procs: Vec<(u32, u32, CpuTimes)> = dir
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let (name, ppid, times) = stat_file(&format!("/proc/{pid}/stat"))?;
            (name == comm).then_some((pid, ppid, times))
        })
        .collect();
    let ours = |pid: u32| procs.iter().any(|(p, _, _)| *p == pid);
    procs
        .iter()
        .map(|(_, ppid, t)| t.own + if ours(*ppid) { 0.0 } else { t.children })
        .sum()
}
