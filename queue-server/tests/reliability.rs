//! Faults and floods (docs/RELIABILITY.md): a failed store stops the service
//! honestly, and the connection layer bounds what a client can hold.

mod common;

use queue_server::server::Connections;
use queue_server::store::fault::{FaultKind, Faults, Op};
use queue_server::store::{EmbeddedStore, Store};
use queue_server::{RunningServer, ServerConfig, ServerError};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use workq_proto::v1 as pb;

type Client = pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>;

async fn client(server: &RunningServer) -> Client {
    Client::connect(format!("http://{}", server.grpc_addr()))
        .await
        .expect("connect")
}

fn enqueue_req(queue: &str, payload: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue: queue.into(),
        items: vec![pb::NewItem {
            payload: payload.as_bytes().to_vec().into(),
            ..Default::default()
        }],
        create_queue: true,
        request_id: String::new(),
    }
}

fn lease_req(queue: &str, wait_ms: u64) -> pb::LeaseRequest {
    pb::LeaseRequest {
        queue: queue.into(),
        max_items: 10,
        wait: Some(workq_proto::time::duration(
            std::time::Duration::from_millis(wait_ms),
        )),
        ..Default::default()
    }
}

/// The gRPC health status of `service` ("" for the server as a whole).
async fn health(addr: std::net::SocketAddr, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect health");
    let mut c = HealthClient::new(channel);
    let req = tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    };
    let status = c
        .check(req)
        .await
        .expect("health check")
        .into_inner()
        .status;
    ServingStatus::try_from(status).expect("a known status")
}

/// `GET path` on `addr`: the whole response.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

/// The payloads a fresh lease of `queue` gets, sorted.
async fn lease_all(c: &mut Client, queue: &str) -> Vec<String> {
    let got = c
        .lease(lease_req(queue, 0))
        .await
        .expect("lease")
        .into_inner();
    let mut out: Vec<String> = got
        .items
        .iter()
        .map(|i| String::from_utf8_lossy(&i.payload).into_owned())
        .collect();
    out.sort();
    out
}

/// A failed write: health says NOT_SERVING at once (overall and for the
/// service), `/healthz` 503, a lease parked when the failing enqueue arrives
/// gets UNAVAILABLE and not the item, every later call is UNAVAILABLE with
/// the reason, and the server stops with the store's failure. Restarted on
/// the same directory, every acknowledged item is there once and the failed
/// enqueue's item is not. (Multi-threaded: `/healthz` is read with a
/// blocking client.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_stops_the_service_and_hands_out_nothing_unacknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open_with_faults(dir.path(), faults.clone()).expect("open"));
    let config = ServerConfig {
        fail_exit_grace: Duration::ZERO,
        ..ServerConfig::embedded(dir.path())
    };
    let mut server = queue_server::start_with_store(config, store)
        .await
        .expect("start");
    let (grpc, http) = (server.grpc_addr(), server.http_addr().expect("http"));
    assert_eq!(health(grpc, "").await, ServingStatus::Serving);
    let mut c = client(&server).await;
    c.enqueue(enqueue_req("disk", "kept"))
        .await
        .expect("enqueue");
    let leased = c
        .lease(lease_req("disk", 0))
        .await
        .expect("lease")
        .into_inner();
    assert_eq!(leased.items.len(), 1);

    // A lease parked on the now empty queue, woken by the failing enqueue.
    let mut waiter = c.clone();
    let parked = tokio::spawn(async move { waiter.lease(lease_req("disk", 30_000)).await });
    let name: queue_server::names::QueueName = "disk".parse().expect("name");
    while server.engine().waiting_leases(&name).expect("queue") == 0 {
        tokio::task::yield_now().await;
    }
    faults.fail(Op::Write, 1, FaultKind::NoSpace);
    let failed = c.enqueue(enqueue_req("disk", "lost")).await;
    let err = failed.expect_err("the enqueue fails");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("no space left"), "{}", err.message());

    let parked = parked.await.expect("task");
    match parked {
        Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
        Ok(r) => panic!(
            "the failed enqueue's item was handed out: {:?}",
            r.into_inner()
        ),
    }
    assert_eq!(health(grpc, "").await, ServingStatus::NotServing);
    assert_eq!(
        health(grpc, "workq.v1.QueueService").await,
        ServingStatus::NotServing
    );
    let page = http_get(http, "/healthz");
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    assert!(page.contains("no space left"), "{page}");

    faults.clear(); // the disk is fine again: the server still does not trust itself
    for call in [
        c.lease(lease_req("disk", 0)).await.map(drop),
        c.list_queues(pb::ListQueuesRequest::default())
            .await
            .map(drop),
        c.enqueue(enqueue_req("other", "x")).await.map(drop),
    ] {
        let err = call.expect_err("refused");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("store failed"), "{}", err.message());
    }

    let stopped = server.stopped().await;
    assert!(matches!(stopped, ServerError::StoreFailed(_)), "{stopped}");
    assert!(
        server.shutdown().await.is_err(),
        "closing reports the failure"
    );

    let server = queue_server::start(ServerConfig::embedded(dir.path()))
        .await
        .expect("restart");
    let mut c = client(&server).await;
    assert_eq!(lease_all(&mut c, "disk").await, ["kept"]);
    assert_eq!(health(server.grpc_addr(), "").await, ServingStatus::Serving);
    server.shutdown().await.expect("shutdown");
}

/// The binary, its store failing on the third commit (armed by the hidden
/// `WQ_TEST_FAULT`): the enqueue is refused UNAVAILABLE and the process
/// exits non-zero after its grace; restarted, what was acknowledged is there
/// once.
#[tokio::test]
async fn the_binary_exits_non_zero_when_its_store_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8 path");
    let mut server = common::ServerProcess::start_with_env(
        &["--data-dir", data, "--fail-exit-grace", "50ms"],
        &[("WQ_TEST_FAULT", "commit:3")],
    );
    let mut c = server.client().await;
    // Commit 1 creates the queue, 2 adds "kept", 3 fails.
    c.enqueue(enqueue_req("bin", "kept"))
        .await
        .expect("enqueue");
    let err = c
        .enqueue(enqueue_req("bin", "lost"))
        .await
        .expect_err("the third commit fails");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let status = server.child.wait().expect("wait");
    assert!(!status.success(), "exit status {status}");

    let server = common::ServerProcess::embedded(dir.path());
    let mut c = server.client().await;
    assert_eq!(lease_all(&mut c, "bin").await, ["kept"]);
}

/// A TCP connection that never sends the HTTP/2 preface is closed by the
/// server once the handshake timeout passes.
#[tokio::test]
async fn a_connection_that_never_speaks_http2_is_closed() {
    let config = ServerConfig {
        connections: Connections {
            handshake_timeout: Duration::from_millis(200),
            ..Connections::default()
        },
        ..ServerConfig::memory()
    };
    let server = queue_server::start(config).await.expect("start");
    let addr = server.grpc_addr();
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        // Only a guard against a hang: the server closes long before.
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("task");
    closed.expect("the server closed the silent connection");
    server.shutdown().await.expect("shutdown");
}

/// The limit on concurrent streams per connection is in the server's
/// HTTP/2 SETTINGS, where every client reads it.
#[tokio::test]
async fn the_stream_limit_is_announced_to_clients() {
    let config = ServerConfig {
        connections: Connections {
            max_concurrent_streams: 7,
            ..Connections::default()
        },
        ..ServerConfig::memory()
    };
    let server = queue_server::start(config).await.expect("start");
    let addr = server.grpc_addr();
    let settings = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .expect("preface");
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).expect("settings");
        // The server's first frame is its SETTINGS.
        let mut head = [0u8; 9];
        s.read_exact(&mut head).expect("frame header");
        assert_eq!(head[3], 4, "a SETTINGS frame");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).expect("frame body");
        body.chunks(6)
            .map(|c| {
                let id = u16::from_be_bytes([c[0], c[1]]);
                let value = u32::from_be_bytes([c[2], c[3], c[4], c[5]]);
                (id, value)
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("task");
    // SETTINGS_MAX_CONCURRENT_STREAMS is 0x3.
    assert!(settings.contains(&(3, 7)), "{settings:?}");
    server.shutdown().await.expect("shutdown");
}

/// CPU time (user + system) of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which ends with ')'): utime is the
    // 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// Out of file descriptors (a child server under `ulimit -n 64` and 200
/// connections that hold them): the accept loop backs off instead of
/// spinning, and once the connections close `/healthz` answers again. The
/// CPU time over a second with the descriptors exhausted is printed (see
/// docs/RELIABILITY.md), not asserted.
#[test]
fn out_of_descriptors_the_server_recovers_and_health_answers() {
    use std::io::BufRead;
    let bin = env!("CARGO_BIN_EXE_queue-server");
    let mut child = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "ulimit -n 64 && exec '{bin}' --store memory --listen 127.0.0.1:0 \
                 --http-listen 127.0.0.1:0 --handshake-timeout 1h"
            ),
        ])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let field = |k: &str| -> std::net::SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
    };
    let (grpc, http) = (field("grpc="), field("http="));
    let held: Vec<_> = (0..200)
        .filter_map(|_| std::net::TcpStream::connect(grpc).ok())
        .collect();
    assert!(held.len() > 64, "only {} connections", held.len());
    // Once the process's table is full, its descriptor count stops growing.
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", child.id())).map_or(0, |d| d.count());
    while fds() < 64 {
        std::thread::yield_now();
    }
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_secs(1));
    let ticks = cpu_ticks(child.id()) - before;
    eprintln!("CPU with descriptors exhausted: {ticks} ticks in 1 s (100 ticks = one core)");

    drop(held);
    let mut s = std::net::TcpStream::connect(http).expect("connect http");
    // Only a guard against a hang.
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut page = String::new();
    s.read_to_string(&mut page).expect("health answers");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "16m") on `dir`: only as root, on
    /// Linux, with `mount` at hand.
    fn mount(dir: &std::path::Path, size: &str) -> Result<Tmpfs, String> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Grows it to `size`: the disk freed.
    fn grow(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("remount");
        assert!(ok.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A real full disk (a 16 MiB tmpfs as the data directory, where the
/// machine lets the test mount one): enqueues of 256 KiB items until one is
/// refused UNAVAILABLE; the binary exits non-zero; with space freed and the
/// server restarted, every acknowledged item is there once.
#[tokio::test]
async fn a_full_disk_stops_the_binary_and_acknowledged_items_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mounted = Tmpfs::mount(dir.path(), "16m");
    if !workq_testkit::gate(mounted.as_ref().map(drop).map_err(Clone::clone)) {
        return;
    }
    let tmpfs = mounted.expect("mounted");
    let data = dir.path().join("data");
    let data_s = data.to_str().expect("utf-8 path").to_string();
    let mut server =
        common::ServerProcess::start(&["--data-dir", &data_s, "--fail-exit-grace", "50ms"]);
    let mut c = server.client().await;
    let payload = "x".repeat(256 * 1024);
    let mut acked = Vec::new();
    let err = loop {
        let tag = format!("{:06}", acked.len());
        match c
            .enqueue(enqueue_req("full", &format!("{tag}{payload}")))
            .await
        {
            Ok(_) => acked.push(tag),
            Err(e) => break e,
        }
        assert!(acked.len() < 1000, "the 16 MiB disk never filled");
    };
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let status = server.child.wait().expect("wait");
    assert!(!status.success(), "exit status {status}");

    tmpfs.grow("64m");
    let server = common::ServerProcess::start(&["--data-dir", &data_s]);
    let mut c = server.client().await;
    let mut got = Vec::new();
    loop {
        let req = pb::LeaseRequest {
            max_items: 10,
            ..lease_req("full", 0)
        };
        let resp = c.lease(req).await.expect("lease").into_inner();
        if resp.items.is_empty() {
            break;
        }
        got.extend(
            resp.items
                .iter()
                .map(|i| String::from_utf8_lossy(&i.payload[..6]).into_owned()),
        );
    }
    got.sort();
    let mut kept = got.clone();
    kept.dedup();
    assert_eq!(kept.len(), got.len(), "an item came back twice");
    for tag in &acked {
        assert!(got.contains(tag), "acknowledged item {tag} lost");
    }
    assert!(
        got.len() <= acked.len() + 1,
        "{} items, {} acknowledged",
        got.len(),
        acked.len()
    );
    drop(server);
}

/// Health follows the real state: once the server begins stopping, gRPC
/// health watchers see NOT_SERVING, overall and for the service.
#[tokio::test]
async fn a_stopping_server_reports_not_serving() {
    let server = queue_server::start(ServerConfig::memory())
        .await
        .expect("start");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    for service in ["", "workq.v1.QueueService"] {
        let mut c = HealthClient::new(channel.clone());
        let req = tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        };
        let mut watch = c.watch(req).await.expect("watch").into_inner();
        let first = watch.message().await.expect("status").expect("a status");
        if service.is_empty() {
            assert_eq!(first.status, ServingStatus::Serving as i32);
            server.engine().begin_shutdown();
        }
        let mut last = first.status;
        while last != ServingStatus::NotServing as i32 {
            match watch.message().await {
                Ok(Some(m)) => last = m.status,
                other => panic!("{service:?}: the watch ended before NOT_SERVING: {other:?}"),
            }
        }
    }
    server.shutdown().await.expect("shutdown");
}
