//! A PostgreSQL server of one test's own, on a temporary data directory and
//! a free port (kinder to other tests than restarting the machine's), run
//! as the `postgres` user; stopped when dropped.

use std::path::Path;
use std::process::Command;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running PostgreSQL of the test's own.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnPostgres {
    /// initdb (trust authentication) and start; `None` (skipped, or a
    /// failure under `WQ_REQUIRE_SERVICES`) when the tools are missing.
    pub fn start() -> Option<Self> {
        Self::start_with(&[], |_| {})
    }

    /// As [`OwnPostgres::start`], with `settings` appended to
    /// `postgresql.conf` and `prepare` run on the data directory (as root,
    /// before it is handed to `postgres`) — to put certificates or a
    /// `pg_hba.conf` there.
    pub fn start_with(settings: &[&str], prepare: impl FnOnce(&Path)) -> Option<Self> {
        let ready = if !Path::new(&format!("{PG_BIN}/initdb")).exists() {
            Err(format!(
                "{PG_BIN}/initdb is missing: apt-get install postgresql-15"
            ))
        } else if workq_testkit::which("runuser").is_none() {
            Err("runuser is missing: apt-get install util-linux".to_string())
        } else {
            Ok(())
        };
        if !workq_testkit::gate(ready) {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        chown(dir.path());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let init = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/initdb")])
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("initdb");
        assert!(init.status.success(), "initdb: {init:?}");
        if !settings.is_empty() {
            let conf = data.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
            for s in settings {
                text.push_str(s);
                text.push('\n');
            }
            std::fs::write(&conf, text).expect("postgresql.conf");
        }
        prepare(&data);
        chown(dir.path());
        let pg = OwnPostgres { dir, port };
        pg.ctl("start");
        Some(pg)
    }

    /// `pg_ctl <what>` (start, stop, restart), waiting for it.
    pub fn ctl(&self, what: &str) {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let out = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{PG_BIN}/pg_ctl"),
                "-w",
                "-m",
                "fast",
            ])
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(self.dir.path().join("log"))
            .arg(what)
            .output()
            .expect("pg_ctl");
        assert!(out.status.success(), "pg_ctl {what}: {out:?}");
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` through the server's socket and returns its output.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-tAc", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn chown(path: &Path) {
    let chown = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .expect("chown");
    assert!(chown.success());
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{PG_BIN}/pg_ctl"),
                "-m",
                "immediate",
            ])
            .arg("-D")
            .arg(&data)
            .arg("stop")
            .output();
    }
}
