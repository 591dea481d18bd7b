//! The web dashboard in a real browser: headless Chromium driven over
//! WebDriver (chromedriver, Debian's `chromium` and `chromium-driver`)
//! against the real `queue-server` binary. The page shows counters that
//! follow enqueues made over gRPC, a dead item's reason and attempts,
//! requeues it with its button and the counters follow; it fits a phone's
//! width; with authentication on, an action without its grant is refused
//! with the gRPC layer's message and changes nothing.
//!
//! Waits are bounded by a generous [`PATIENCE`] (a hang guard, never a
//! speed assertion). With `WQ_SCREENSHOT_DIR` set, the first test saves
//! `dashboard.png` there (docs/dashboard.png was made so).

mod common;

use common::{ServerProcess, Store, unique_queue};
use fantoccini::{Client, ClientBuilder, Locator};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use workq_proto::v1 as pb;

const PATIENCE: Duration = Duration::from_secs(30);

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the browser and its driver are installed (skips or fails by
/// `WQ_REQUIRE_SERVICES`, as every gated test).
fn have_browser() -> bool {
    let install = "apt-get install chromium chromium-driver (.ci/packages)";
    workq_testkit::command("chromedriver", install) && workq_testkit::command("chromium", install)
}

fn start_driver() -> Driver {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromedriver");
    let until = Instant::now() + PATIENCE;
    while !workq_testkit::reachable(&format!("127.0.0.1:{port}")) {
        assert!(Instant::now() < until, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, port }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": workq_testkit::which("chromium").expect("chromium"),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1100,850"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session")
}

fn css(s: &str) -> Locator<'_> {
    Locator::Css(s)
}

fn counter(queue: &str, name: &str) -> String {
    format!("section[data-queue=\"{queue}\"] [data-counter=\"{name}\"]")
}

/// Waits until the text of `selector` satisfies `ok`; its last text.
async fn until_text(c: &Client, selector: &str, ok: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + PATIENCE;
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(css(selector)).await
            && let Ok(t) = e.text().await
        {
            if ok(&t) {
                return t;
            }
            last = t;
        }
        assert!(
            Instant::now() < until,
            "{selector}: still {last:?} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until_counter(c: &Client, queue: &str, name: &str, value: u64) {
    let want = value.to_string();
    until_text(c, &counter(queue, name), |t| t == want).await;
}

async fn click(c: &Client, selector: &str) {
    c.wait()
        .at_most(PATIENCE)
        .for_element(css(selector))
        .await
        .unwrap_or_else(|e| panic!("{selector}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {selector}: {e}"));
}

/// Adds `authorization: Bearer <token>` when it has one.
#[derive(Clone)]
struct Bearer(Option<&'static str>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = self.0 {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| tonic::Status::internal("header"))?;
            r.metadata_mut().insert("authorization", v);
        }
        Ok(r)
    }
}

type Grpc = pb::queue_service_client::QueueServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

async fn grpc(server: &ServerProcess, token: Option<&'static str>) -> Grpc {
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    pb::queue_service_client::QueueServiceClient::with_interceptor(channel, Bearer(token))
}

async fn enqueue(c: &mut Grpc, q: &str, n: usize) {
    c.enqueue(pb::EnqueueRequest {
        queue: q.into(),
        items: (0..n)
            .map(|i| pb::NewItem {
                payload: format!("item {i}").into_bytes().into(),
                ..Default::default()
            })
            .collect(),
        create_queue: true,
        ..Default::default()
    })
    .await
    .expect("enqueue");
}

/// Leases one item of `q` and fails it for good with `reason`: a dead item.
async fn kill_one(c: &mut Grpc, q: &str, reason: &str) -> String {
    let item = c
        .lease(pb::LeaseRequest {
            queue: q.into(),
            max_items: 1,
            ..Default::default()
        })
        .await
        .expect("lease")
        .into_inner()
        .items
        .pop()
        .expect("an item");
    c.fail(pb::FailRequest {
        queue: q.into(),
        lease_tokens: vec![item.lease_token],
        mode: pb::FailMode::Fatal as i32,
        reason: reason.into(),
        ..Default::default()
    })
    .await
    .expect("fail");
    item.id
}

fn page(server: &ServerProcess) -> String {
    format!("http://{}/", server.http.expect("the server serves HTTP"))
}

#[tokio::test]
async fn counters_follow_grpc_and_a_dead_item_is_requeued_with_its_button() {
    if !have_browser() {
        return;
    }
    let server = ServerProcess::memory();
    let mut c = grpc(&server, None).await;
    let q = unique_queue("board");
    enqueue(&mut c, &q, 3).await;

    let driver = start_driver();
    let b = browser(&driver).await;
    b.goto(&page(&server)).await.expect("load the page");
    assert_eq!(b.title().await.expect("title"), "workq dashboard");
    until_counter(&b, &q, "pending", 3).await;

    // Enqueues over gRPC show up without a reload.
    enqueue(&mut c, &q, 4).await;
    until_counter(&b, &q, "pending", 7).await;
    until_counter(&b, &q, "enqueued", 7).await;

    // A dead item, with its reason and attempts.
    let id = kill_one(&mut c, &q, "cannot parse item 0").await;
    until_counter(&b, &q, "dead", 1).await;
    until_counter(&b, &q, "pending", 6).await;
    click(
        &b,
        &format!("button[aria-label=\"Dead items of queue {q}\"]"),
    )
    .await;
    let row = format!("section[data-queue=\"{q}\"] li[data-dead=\"{id}\"]");
    let text = until_text(&b, &row, |t| t.contains("cannot parse item 0")).await;
    assert!(text.contains(&id), "{text}");

    if let Some(dir) = std::env::var_os("WQ_SCREENSHOT_DIR") {
        // A second queue with traffic both ways, so that the chart has lines.
        let other = unique_queue("traffic");
        for i in 0..12 {
            enqueue(&mut c, &other, 20 + 3 * i).await;
            let items = c
                .lease(pb::LeaseRequest {
                    queue: other.clone(),
                    max_items: 12 + 2 * i32::try_from(i).unwrap_or(0),
                    ..Default::default()
                })
                .await
                .expect("lease")
                .into_inner()
                .items;
            c.complete(pb::CompleteRequest {
                queue: other.clone(),
                lease_tokens: items.into_iter().map(|i| i.lease_token).collect(),
                per_token_results: false,
            })
            .await
            .expect("complete");
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        let png = b.screenshot().await.expect("screenshot");
        std::fs::write(std::path::Path::new(&dir).join("dashboard.png"), png).expect("write png");
    }

    // The button requeues it; the counters follow.
    click(
        &b,
        &format!("button[aria-label=\"Requeue dead item {id} of queue {q}\"]"),
    )
    .await;
    until_counter(&b, &q, "dead", 0).await;
    until_counter(&b, &q, "pending", 7).await;
    until_text(&b, "#status", |t| t.contains("Requeued 1 item")).await;

    // Usable on a phone: nothing wider than a 375 px viewport.
    b.set_window_size(375, 800).await.expect("resize");
    let fits = b
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            vec![],
        )
        .await
        .expect("measure");
    assert_eq!(
        fits,
        serde_json::Value::Bool(true),
        "the page scrolls sideways at 375 px"
    );

    b.close().await.expect("close the browser");
}

const GRANTS: &str = r#"
- name: viewer
  token: viewer-token
  grants: [{verbs: [read], queues: ["*"]}]
- name: operator
  token: operator-token
  grants: [{verbs: ["*"], queues: ["*"]}]
"#;

#[tokio::test]
async fn with_auth_on_an_action_without_its_grant_is_refused() {
    if !have_browser() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let grants = dir.path().join("grants.yaml");
    std::fs::write(&grants, GRANTS).expect("write grants");
    let server = ServerProcess::start(&[
        "--store",
        "memory",
        "--auth-tokens-file",
        grants.to_str().expect("utf-8"),
    ]);
    let mut c = grpc(&server, Some("operator-token")).await;
    let q = unique_queue("guarded");
    enqueue(&mut c, &q, 2).await;
    let id = kill_one(&mut c, &q, "boom").await;

    let driver = start_driver();
    let b = browser(&driver).await;
    b.goto(&page(&server)).await.expect("load the page");
    // No token: nothing shown, and the page says why.
    until_text(&b, "#problem", |t| t.contains("needs a token")).await;
    assert!(b.find(css(&counter(&q, "dead"))).await.is_err());

    // A token that may read but not administer.
    let input = b.find(css("#token")).await.expect("token field");
    input.send_keys("viewer-token").await.expect("type");
    click(&b, "#use-token").await;
    until_counter(&b, &q, "dead", 1).await;
    click(
        &b,
        &format!("button[aria-label=\"Dead items of queue {q}\"]"),
    )
    .await;
    let requeue = format!("button[aria-label=\"Requeue dead item {id} of queue {q}\"]");
    click(&b, &requeue).await;
    let said = until_text(&b, "#status", |t| t.starts_with("Refused")).await;
    assert!(said.contains("token:viewer may not admin"), "{said}");
    // Seal needs produce: refused too.
    click(&b, &format!("button[aria-label=\"Seal queue {q}\"]")).await;
    let said = until_text(&b, "#status", |t| t.contains("may not produce")).await;
    assert!(said.starts_with("Refused"), "{said}");
    // Nothing changed, as the server reports it over gRPC.
    let info = c
        .get_queue(pb::GetQueueRequest { name: q.clone() })
        .await
        .expect("get")
        .into_inner()
        .queue
        .expect("queue");
    let stats = info.stats.expect("stats");
    let sealed = matches!(
        pb::QueueState::try_from(stats.state),
        Ok(pb::QueueState::Sealed | pb::QueueState::Drained)
    );
    assert_eq!((stats.dead, sealed), (1, false));

    // The operator's token may.
    let input = b.find(css("#token")).await.expect("token field");
    input.clear().await.expect("clear");
    input.send_keys("operator-token").await.expect("type");
    click(&b, "#use-token").await;
    click(&b, &requeue).await;
    until_counter(&b, &q, "dead", 0).await;
    until_counter(&b, &q, "pending", 2).await;

    b.close().await.expect("close the browser");
}

// ---- The JSON API without a browser ----

/// `method path` on the HTTP port with `headers` and `body`: the status
/// code and the body.
fn http(
    server: &ServerProcess,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = server.http.expect("the server serves HTTP");
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

const JSON: &str = "Content-Type: application/json";

#[tokio::test]
async fn the_api_checks_grants_and_refuses_with_the_grpc_message() {
    the_api_checks_grants(Store::Memory).await;
}

#[tokio::test]
async fn the_api_checks_grants_and_refuses_with_the_grpc_message_on_postgres() {
    the_api_checks_grants(Store::Postgres).await;
}

async fn the_api_checks_grants(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let grants = dir.path().join("grants.yaml");
    std::fs::write(&grants, GRANTS).expect("write grants");
    let Some(server) = ServerProcess::on(
        store,
        &["--auth-tokens-file", grants.to_str().expect("utf-8")],
    ) else {
        return;
    };
    let mut c = grpc(&server, Some("operator-token")).await;
    let q = unique_queue("api");
    enqueue(&mut c, &q, 3).await;
    let id = kill_one(&mut c, &q, "bad").await;
    let viewer = "Authorization: Bearer viewer-token";
    let operator = "Authorization: Bearer operator-token";

    // The page itself needs no credential; the data does.
    let (code, page) = http(&server, "GET", "/", &[], "");
    assert_eq!(code, 200);
    assert!(page.contains("<title>workq dashboard</title>"));
    let (code, body) = http(&server, "GET", "/api/queues", &[], "");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("UNAUTHENTICATED"), "{body}");

    let (code, body) = http(&server, "GET", "/api/queues", &[viewer], "");
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).expect("json");
    let mine = view["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|v| v["name"] == q.as_str())
        .expect("the queue");
    assert_eq!(
        (mine["pending"].as_u64(), mine["dead"].as_u64()),
        (Some(2), Some(1))
    );
    let (code, body) = http(
        &server,
        "GET",
        &format!("/api/queues/{q}/dead"),
        &[viewer],
        "",
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!("\"id\":\"{id}\"")) && body.contains("bad"),
        "{body}"
    );

    // Actions: the verbs of their gRPC siblings.
    let requeue = format!("/api/queues/{q}/requeue-dead");
    let one = format!("{{\"ids\":[\"{id}\"]}}");
    let (code, body) = http(&server, "POST", &requeue, &[viewer, JSON], &one);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("token:viewer may not admin"), "{body}");
    let (code, body) = http(
        &server,
        "POST",
        &format!("/api/queues/{q}/seal"),
        &[viewer, JSON],
        "{}",
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("may not produce"), "{body}");
    let (code, body) = http(
        &server,
        "POST",
        &format!("/api/queues/{q}/purge"),
        &[viewer, JSON],
        "{}",
    );
    assert_eq!(code, 403, "{body}");
    // Without a JSON body (what a form of another site could send): refused.
    let (code, _) = http(&server, "POST", &requeue, &[operator], &one);
    assert_eq!(code, 415);
    // Bad input and unknown queues, with the gRPC layer's messages.
    let (code, body) = http(&server, "POST", &requeue, &[operator, JSON], "{}");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("give ids, or set all"), "{body}");
    let (code, body) = http(
        &server,
        "POST",
        "/api/queues/nope/seal",
        &[operator, JSON],
        "{}",
    );
    assert_eq!(code, 404, "{body}");
    // The operator may.
    let (code, body) = http(&server, "POST", &requeue, &[operator, JSON], &one);
    assert_eq!((code, body.as_str()), (200, "{\"requeued\":1}"));
    let (code, body) = http(
        &server,
        "POST",
        &format!("/api/queues/{q}/seal"),
        &[operator, JSON],
        "{}",
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"sealed\":true"), "{body}");
    let (code, body) = http(
        &server,
        "POST",
        &format!("/api/queues/{q}/purge"),
        &[operator, JSON],
        "{}",
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"purged\":3"), "{body}");
}
