//! Test helpers shared by workq's crates.
//!
//! # Gating on services and tools
//!
//! Some tests need a part of the machine that a developer's laptop may not
//! have: Redis, RabbitMQ, PostgreSQL, bubblewrap, `amqp-tools`,
//! `kubernetes-validate`. One rule, decided here and nowhere else:
//!
//! - with `WQ_REQUIRE_SERVICES=1` (`.ci/run` sets it), a missing part **fails**
//!   the test with the reason and the fix;
//! - without it, the test writes `skipped: <test>: <why>` to standard error —
//!   past the test harness's capture, so the skip is seen even when the test
//!   is reported as passed — and returns early.
//!
//! ```
//! # fn main() {
//! if !workq_testkit::redis() {
//!     return; // skipped, and said so
//! }
//! # }
//! ```
//!
//! A real Kubernetes cluster is the one exception: no machine of ours has one,
//! so [`cluster`] skips without `KUBECONFIG` whatever `WQ_REQUIRE_SERVICES`
//! says.

mod fuzz;
mod proxy;
pub use fuzz::replay_kept_inputs;
pub use proxy::Proxy;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The variable that turns a missing service or tool from a skip into a failure.
pub const REQUIRE_VAR: &str = "WQ_REQUIRE_SERVICES";

/// The machine's Redis.
pub const REDIS_ADDR: &str = "127.0.0.1:6379";
/// The machine's RabbitMQ (AMQP port).
pub const RABBITMQ_ADDR: &str = "127.0.0.1:5672";
/// The machine's PostgreSQL.
pub const POSTGRES_ADDR: &str = "127.0.0.1:5432";
/// The machine's NATS server.
pub const NATS_ADDR: &str = "127.0.0.1:4222";

/// Whether missing parts fail tests (`WQ_REQUIRE_SERVICES` set to anything
/// but empty or `0`).
pub fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The one decision: `Ok(())` runs the test (`true`); `Err(why)` fails it
/// under [`REQUIRE_VAR`] and otherwise reports the skip and answers `false`.
///
/// # Panics
/// When `check` is an error and [`required`] is true: that is the failure.
pub fn gate(check: Result<(), String>) -> bool {
    match check {
        Ok(()) => true,
        Err(why) if required() => {
            panic!("{why} ({REQUIRE_VAR} is set, so this test may not be skipped)")
        }
        Err(why) => {
            skip(&why);
            false
        }
    }
}

/// Writes `skipped: <test>: <why>` to the process's real standard error (not
/// the harness's captured output), so a skipped test is visible.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
}

/// Whether something listens at `addr` (TCP connect within 2 s).
pub fn reachable(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .ok()
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
        .is_some()
}

/// A service at `addr`, named `what` in the message.
pub fn service(what: &str, addr: &str) -> bool {
    gate(if reachable(addr) {
        Ok(())
    } else {
        Err(format!(
            "{what} is not reachable at {addr}; start it (see .ci/run)"
        ))
    })
}

/// The machine's Redis ([`REDIS_ADDR`]).
pub fn redis() -> bool {
    service("Redis", REDIS_ADDR)
}

/// The machine's RabbitMQ ([`RABBITMQ_ADDR`]).
pub fn rabbitmq() -> bool {
    service("RabbitMQ", RABBITMQ_ADDR)
}

/// The machine's PostgreSQL ([`POSTGRES_ADDR`]).
pub fn postgres() -> bool {
    service("PostgreSQL", POSTGRES_ADDR)
}

/// The machine's NATS server ([`NATS_ADDR`]).
pub fn nats() -> bool {
    service("NATS", NATS_ADDR)
}

/// Where `name` is on `PATH`, if it is.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A command on `PATH`; `install` says how to get it (e.g. the Debian package).
pub fn command(name: &str, install: &str) -> bool {
    gate(match which(name) {
        Some(_) => Ok(()),
        None => Err(format!("`{name}` is not installed; {install}")),
    })
}

/// bubblewrap, which `job-runner --local` uses for pods with volumes.
pub fn bwrap() -> bool {
    command("bwrap", "apt-get install bubblewrap")
}

/// `kubernetes-validate` (PyPI), which checks manifests against the official
/// schemas offline.
pub fn kubernetes_validate() -> bool {
    command("kubernetes-validate", "pip install kubernetes-validate")
}

/// A Python module importable by `python3`.
pub fn python_module(module: &str, install: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    gate(if ok {
        Ok(())
    } else {
        Err(format!("python3 cannot import `{module}`; {install}"))
    })
}

/// The `KUBECONFIG` of a real cluster, if one is configured. Never fails: no
/// machine of ours has a cluster, so without `KUBECONFIG` the test is skipped
/// whatever [`REQUIRE_VAR`] says.
pub fn cluster() -> Option<PathBuf> {
    match std::env::var_os("KUBECONFIG") {
        Some(k) if !k.is_empty() => Some(PathBuf::from(k)),
        _ => {
            skip("no real cluster: KUBECONFIG is not set");
            None
        }
    }
}

/// A name no other test uses: `prefix`, this process's id and a counter, so
/// that tests running at once (here or in another test binary) never share a
/// queue, on a shared Redis or RabbitMQ too.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_met_need_runs_the_test() {
        assert!(gate(Ok(())));
    }

    #[test]
    fn a_missing_need_skips_or_fails_by_the_variable() {
        let outcome = std::panic::catch_unwind(|| gate(Err("nothing here".into())));
        if required() {
            let err = outcome.expect_err("fails under WQ_REQUIRE_SERVICES");
            let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains("nothing here"), "{msg}");
        } else {
            assert_eq!(outcome.ok(), Some(false));
        }
    }

    #[test]
    fn nothing_listens_on_a_closed_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        drop(l);
        assert!(!reachable(&addr));
    }
}
