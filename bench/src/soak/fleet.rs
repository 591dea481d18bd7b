//! What the soak runs and kills: queue-server replicas (each on its own
//! fixed port, restarted there), on the embedded store (one replica, one
//! data directory) or on PostgreSQL (any number of replicas on one
//! database) — and, for `--kill postgres`, a PostgreSQL server of the
//! soak's own on a temporary data directory, crashed with
//! `pg_ctl stop -m immediate` (no shutdown checkpoint: recovery from WAL
//! on the next start, as after a power cut) and started again.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Where PostgreSQL's programs are on Debian.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Which store the replicas use.
pub enum Store {
    /// One data directory (one replica).
    Embedded(tempfile::TempDir),
    /// This database URL.
    Postgres(String),
}

/// The queue-server replicas of a soak.
pub struct Fleet {
    bin: PathBuf,
    store: Store,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl Fleet {
    /// `replicas` replicas of `bin` on `store`, on free ports; none started.
    pub fn new(bin: &Path, store: Store, replicas: usize) -> Result<Fleet> {
        let ports = (0..replicas.max(1))
            .map(|_| free_port())
            .collect::<Result<Vec<_>>>()?;
        Ok(Fleet {
            bin: bin.to_owned(),
            store,
            children: ports.iter().map(|_| None).collect(),
            ports,
        })
    }

    /// The replicas' gRPC addresses (`http://127.0.0.1:port`).
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// How many replicas.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Starts replica `i` (not waiting for it).
    pub fn start(&mut self, i: usize) -> Result<()> {
        self.start_logging(i, false)
    }

    /// [`Fleet::start`], with the replica's info log on a pipe when `log`
    /// is set (for [`Fleet::kill_in_compaction`]).
    pub fn start_logging(&mut self, i: usize, log: bool) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--listen", &format!("127.0.0.1:{}", self.ports[i])])
            .args(["--http-listen", "127.0.0.1:0"])
            .args(["--max-attempts", "1000"]);
        match &self.store {
            Store::Embedded(dir) => {
                cmd.args(["--store", "embedded"])
                    .arg("--data-dir")
                    .arg(dir.path());
            }
            Store::Postgres(url) => {
                cmd.args(["--store", "postgres"])
                    .env("WQ_DATABASE_URL", url);
            }
        }
        let child = cmd
            .env("RUST_LOG", if log { "info" } else { "error" })
            .stdout(Stdio::piped())
            .stderr(if log { Stdio::piped() } else { Stdio::null() })
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Waits until replica `i` printed its address (it is serving).
    pub async fn ready(&mut self, i: usize) -> Result<()> {
        let out = self.children[i]
            .as_mut()
            .and_then(|c| c.stdout.take())
            .context("replica not started")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line).map(|_| line)
        })
        .await
        .context("join")??;
        if !line.contains("grpc=") {
            bail!("replica {i} did not start: {line:?}");
        }
        Ok(())
    }

    /// Kills replica `i` (started with its log on a pipe) as soon as its log
    /// says it is compacting the store; answers whether the kill landed
    /// before it logged the end of the compaction.
    pub async fn kill_in_compaction(&mut self, i: usize) -> Result<bool> {
        let mut child = self.children[i].take().context("replica not started")?;
        tokio::task::spawn_blocking(move || {
            let err = child.stderr.take().context("stderr")?;
            let mut lines = BufReader::new(err).lines();
            let seen = lines
                .by_ref()
                .map_while(std::result::Result::ok)
                .any(|l| l.contains("compacting the store"));
            child.kill().context("kill -9")?;
            child.wait()?;
            let finished = lines
                .map_while(std::result::Result::ok)
                .any(|l| l.contains("store compacted"));
            Ok(seen && !finished)
        })
        .await
        .context("join")?
    }

    /// `kill -9` replica `i`.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.children[i].take() {
            child.kill().context("kill -9")?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM to every replica, then waits for them.
    pub fn stop(&mut self) -> Result<()> {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::as_mut) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A PostgreSQL server of the soak's own, on a temporary directory.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
    /// Run PostgreSQL's programs as this user (it refuses to run as root).
    as_user: Option<String>,
}

impl OwnPostgres {
    /// `initdb` and start.
    pub fn start() -> Result<OwnPostgres> {
        let dir = tempfile::tempdir()?;
        let as_user = is_root().then(|| "postgres".to_string());
        if as_user.is_some() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("chown of {} to postgres failed", dir.path().display());
            }
        }
        let pg = OwnPostgres {
            port: free_port()?,
            dir,
            as_user,
        };
        pg.run(
            "initdb",
            &["-A", "trust", "-U", "postgres", "-D", &pg.data()],
        )?;
        pg.up()?;
        Ok(pg)
    }

    /// Its URL (database `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Starts it (recovering from WAL after a crash); returns once it accepts
    /// connections.
    pub fn up(&self) -> Result<()> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        )
    }

    /// Crashes it: immediate stop, no checkpoint.
    pub fn crash(&self) -> Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let path = format!("{PG_BIN}/{program}");
        let mut cmd = match &self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", &path]);
                c
            }
            None => Command::new(&path),
        };
        let out = cmd
            .args(args)
            .output()
            .with_context(|| format!("run {path} (PostgreSQL 15's server programs)"))?;
        if !out.status.success() {
            bail!(
                "{program} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
