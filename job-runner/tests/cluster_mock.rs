//! The cluster logic against kube-rs's mock service (`tower-test`): named
//! scenarios that play the Kubernetes API server — they assert each
//! request's method, path and body, and answer lists and watches with
//! realistic objects and watch events. The queue service is the real one,
//! started in-process on an ephemeral port; the scenarios play the pods by
//! leasing and completing its items.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use job_runner::cluster::{self, Cluster, ClusterRunOptions, Planned, RenderOptions};
use job_runner::output::Output;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

mod common;

/// One request as the fake API server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query.
    uri: String,
    body: Option<Value>,
}

impl Seen {
    fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }
    fn query(&self) -> &str {
        self.uri.split_once('?').map_or("", |(_, q)| q)
    }
    fn is_watch(&self) -> bool {
        self.query().contains("watch=true")
    }
}

enum Reply {
    Json(u16, Value),
    /// A watch response: these events, then the stream ends (the watcher
    /// then watches again from the last resourceVersion).
    Events(Vec<(&'static str, Value)>),
    /// Plain text (a pod's log).
    Text(&'static str),
    /// Never answered (a watch with nothing more to say).
    Hold,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Starts the fake API server; `route` answers each request.
fn fake_api<F, Fut>(route: F) -> (Cluster, Log, tokio::task::JoinHandle<()>)
where
    F: FnMut(Seen) -> Fut + Send + 'static,
    Fut: Future<Output = Reply> + Send,
{
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let seen_log = log.clone();
    let mut route = route;
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let seen = Seen {
                method: parts.method.to_string(),
                uri: parts
                    .uri
                    .path_and_query()
                    .map_or(String::new(), |p| p.to_string()),
                body: serde_json::from_slice(&bytes).ok(),
            };
            seen_log.lock().expect("log").push(seen.clone());
            let response = |code: u16, bytes: Vec<u8>| {
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(bytes))
                    .expect("response")
            };
            match route(seen).await {
                Reply::Json(code, v) => {
                    send.send_response(response(code, serde_json::to_vec(&v).expect("json")))
                }
                Reply::Events(events) => {
                    let mut text = Vec::new();
                    for (kind, object) in events {
                        text.extend(
                            serde_json::to_vec(&json!({"type": kind, "object": object}))
                                .expect("json"),
                        );
                        text.push(b'\n');
                    }
                    send.send_response(response(200, text));
                }
                Reply::Text(text) => send.send_response(
                    Response::builder()
                        .status(200)
                        .header("content-type", "text/plain")
                        .body(Body::from(text.as_bytes().to_vec()))
                        .expect("response"),
                ),
                Reply::Hold => held.push(send),
            }
        }
    });
    let client = kube::Client::new(svc, "default");
    (Cluster::new(client, "default"), log, task)
}

/// Runs `fut` while the fake API server serves; a failed assertion in the
/// server fails the test at once (rather than leaving the watchers to retry).
async fn with_api<T>(api: tokio::task::JoinHandle<()>, fut: impl Future<Output = T>) -> T {
    let mut api = api;
    tokio::select! {
        r = fut => {
            api.abort();
            r
        }
        r = &mut api => match r {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => panic!("the fake API server stopped"),
        },
    }
}

fn planned(file: &str, run_id: &str) -> Vec<Planned> {
    let loaded = job_runner::manifest::load(
        &[common::example(file)],
        &Default::default(),
        &mut std::io::empty(),
    )
    .expect("example loads");
    cluster::plan(&loaded, &RenderOptions::new(run_id)).expect("plan")
}

/// The object as the API server returns it after a create.
fn created(mut body: Value, rv: &str) -> Value {
    body["metadata"]["uid"] = json!(format!(
        "uid-{}",
        body["metadata"]["name"].as_str().unwrap_or("")
    ));
    body["metadata"]["namespace"] = json!("default");
    body["metadata"]["resourceVersion"] = json!(rv);
    body["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    body
}

fn list(kind: &str, items: Vec<Value>, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items})
}

fn with_status(mut job: Value, status: Value, rv: &str) -> Value {
    job["status"] = status;
    job["metadata"]["resourceVersion"] = json!(rv);
    job
}

fn pod(job: &str, run_id: &str, name: &str, phase: &str, exit: Option<i32>) -> Value {
    let state = match exit {
        Some(code) => {
            json!({"terminated": {"exitCode": code, "reason": if code == 0 {"Completed"} else {"Error"},
            "startedAt": "2026-01-01T00:00:02Z", "finishedAt": "2026-01-01T00:00:09Z"}})
        }
        None => json!({"running": {"startedAt": "2026-01-01T00:00:02Z"}}),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "20",
            "labels": {"batch.kubernetes.io/job-name": job, "job-name": job, "workq.dev/run": run_id}},
        "spec": {"containers": [{"name": "c", "image": "gcr.io/myproject/job-wq-2"}]},
        "status": {"phase": phase, "startTime": "2026-01-01T00:00:01Z",
            "containerStatuses": [{"name": "c", "image": "gcr.io/myproject/job-wq-2", "imageID": "", "ready": false,
                "restartCount": 0, "state": state}]}
    })
}

fn events(job: &str) -> Value {
    list(
        "EventList",
        vec![json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{job}.1"), "namespace": "default"},
            "involvedObject": {"kind": "Job", "name": job, "namespace": "default"},
            "reason": "SuccessfulCreate", "message": format!("Created pod: {job}-abcde"), "type": "Normal",
            "firstTimestamp": "2026-01-01T00:00:01Z", "lastTimestamp": "2026-01-01T00:00:01Z"
        })],
        "30",
    )
}

async fn queue_service() -> (queue_server::RunningServer, String) {
    let s = queue_server::start(queue_server::ServerConfig::memory())
        .await
        .expect("queue service starts");
    let url = format!("grpc://{}", s.grpc_addr());
    (s, url)
}

/// Plays the pods: takes up to `n` items from the queue and completes each.
async fn work(url: &str, queue: &str, n: usize) -> Vec<String> {
    let client = worker_sdk::connect(url).await.expect("connect");
    let q = client.queue(queue).expect("queue");
    let mut done = Vec::new();
    while done.len() < n {
        let leased = q
            .lease(&worker_sdk::LeaseOptions::default())
            .await
            .expect("lease");
        let Some(item) = leased.items.into_iter().next() else {
            break;
        };
        q.complete(&[item.token]).await.expect("complete");
        done.push(String::from_utf8_lossy(&item.payload).into_owned());
    }
    done
}

fn opts(url: &str) -> ClusterRunOptions {
    ClusterRunOptions {
        queue_url: Some(url.to_string()),
        idle_grace: std::time::Duration::ZERO,
        ..Default::default()
    }
}

fn output() -> Arc<Output> {
    Arc::new(Output::new(true, false))
}

const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";
const PODS: &str = "/api/v1/namespaces/default/pods";
const EVENTS: &str = "/api/v1/namespaces/default/events";

/// The requests a work-queue run makes, in a form to compare.
fn requests(log: &Log) -> Vec<(String, String)> {
    log.lock()
        .expect("log")
        .iter()
        .map(|s| (s.method.clone(), s.path().to_string()))
        .collect()
}

/// What the pods of a scenario do, played when the runner first watches
/// the Jobs: returns the Job statuses to send as watch events, and the pods
/// the cluster then holds.
type Pods =
    Box<dyn FnMut() -> futures::future::BoxFuture<'static, (Vec<Value>, Vec<Value>)> + Send>;

#[derive(Default)]
struct State {
    job: Option<Value>,
    pods: Vec<Value>,
    watched: bool,
    pods_watched: bool,
}

/// A fake API server for one Job of the run `run_id`: it checks the
/// create's body against the rendered Job, plays `pods` on the first watch,
/// and answers the final pod and event lists; a DELETE must ask for
/// background propagation.
fn job_api(
    run_id: &'static str,
    want_body: Value,
    pods: Pods,
) -> (Cluster, Log, tokio::task::JoinHandle<()>) {
    let state = Arc::new(tokio::sync::Mutex::new(State::default()));
    let pods = Arc::new(tokio::sync::Mutex::new(pods));
    let job_name = want_body["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    fake_api(move |req| {
        let (state, pods, want_body, job_name) = (
            state.clone(),
            pods.clone(),
            want_body.clone(),
            job_name.clone(),
        );
        async move {
            let mut state = state.lock().await;
            let selector = format!("labelSelector=workq.dev%2Frun%3D{run_id}");
            let job_path = format!("{JOBS}/{job_name}");
            match (req.method.as_str(), req.path(), req.is_watch()) {
                ("POST", JOBS, false) => {
                    assert_eq!(
                        req.body.as_ref(),
                        Some(&want_body),
                        "the Job is created as rendered"
                    );
                    let job = created(want_body, "10");
                    state.job = Some(job.clone());
                    Reply::Json(201, job)
                }
                ("GET", JOBS, false) => {
                    assert!(req.query().contains(&selector), "{}", req.uri);
                    Reply::Json(
                        200,
                        list("JobList", state.job.clone().into_iter().collect(), "11"),
                    )
                }
                ("GET", JOBS, true) if !state.watched => {
                    assert!(req.query().contains(&selector), "{}", req.uri);
                    state.watched = true;
                    let (statuses, now_pods) = (pods.lock().await)().await;
                    state.pods = now_pods;
                    let job = state.job.clone().expect("created before watched");
                    let events = statuses
                        .into_iter()
                        .enumerate()
                        .map(|(i, s)| {
                            (
                                "MODIFIED",
                                with_status(job.clone(), s, &format!("{}", 12 + i)),
                            )
                        })
                        .collect();
                    Reply::Events(events)
                }
                ("GET", PODS, false) => {
                    assert!(req.query().contains(&selector), "{}", req.uri);
                    Reply::Json(200, list("PodList", state.pods.clone(), "21"))
                }
                ("GET", PODS, true) if !state.pods_watched => {
                    // The Job controller creates the pods; one starts.
                    assert!(req.query().contains(&selector), "{}", req.uri);
                    state.pods_watched = true;
                    let a = format!("{job_name}-abcde");
                    Reply::Events(vec![
                        ("ADDED", pod(&job_name, run_id, &a, "Pending", None)),
                        ("MODIFIED", pod(&job_name, run_id, &a, "Running", None)),
                    ])
                }
                ("GET", p, false) if p == format!("{PODS}/{job_name}-abcde/log") => {
                    assert!(req.query().contains("follow=true"), "{}", req.uri);
                    assert!(req.query().contains("container=c"), "{}", req.uri);
                    Reply::Text("Working on apple\n")
                }
                ("GET", JOBS | PODS, true) => Reply::Hold,
                ("GET", EVENTS, false) => {
                    let want = format!(
                        "fieldSelector=involvedObject.kind%3DJob%2CinvolvedObject.name%3D{job_name}"
                    );
                    assert!(req.query().contains(&want), "{}", req.uri);
                    Reply::Json(200, events(&job_name))
                }
                ("DELETE", p, false) if p == job_path => {
                    assert_eq!(
                        req.body,
                        Some(json!({"propagationPolicy": "Background"})),
                        "{req:?}"
                    );
                    let mut job = state.job.clone().expect("created");
                    job["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:01:00Z");
                    Reply::Json(200, job)
                }
                _ => panic!("unexpected request: {req:?}"),
            }
        }
    })
}

fn status(active: i32, succeeded: i32, complete: bool) -> Value {
    let mut s =
        json!({"active": active, "succeeded": succeeded, "startTime": "2026-01-01T00:00:01Z"});
    if complete {
        s["completionTime"] = json!("2026-01-01T00:00:10Z");
        s["conditions"] = json!([
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached"}]);
    }
    s
}

fn counters(r: &job_runner::report::JobReport) -> BTreeMap<String, u64> {
    r.queue
        .as_ref()
        .expect("a queue")
        .counters
        .iter()
        .cloned()
        .collect()
}

/// The fine queue example: the Job is created with the wrapper injected,
/// its two pods work the nine items and exit 0, the Job completes, the
/// queue is drained: the run ends with exit code 0, every item processed
/// once, and the summary lists the pods and events.
#[tokio::test]
async fn fine_queue_job_is_created_watched_and_finished_when_the_queue_is_drained() {
    let (_server, url) = queue_service().await;
    let plan = planned("fine-queue.yaml", "fine1");
    let processed: Arc<Mutex<Vec<String>>> = Arc::default();
    let (u, p) = (url.clone(), processed.clone());
    let pods: Pods = Box::new(move || {
        let (url, processed) = (u.clone(), p.clone());
        Box::pin(async move {
            let items = work(&url, "job2", 100).await;
            processed.lock().expect("processed").extend(items);
            (
                vec![status(2, 0, false), status(0, 2, true)],
                vec![
                    pod("job-wq-2", "fine1", "job-wq-2-abcde", "Succeeded", Some(0)),
                    pod("job-wq-2", "fine1", "job-wq-2-fghjk", "Succeeded", Some(0)),
                ],
            )
        })
    });
    let (cluster, log, api) = job_api("fine1", plan[0].to_value(), pods);
    let opts = ClusterRunOptions {
        follow: true,
        ..opts(&url)
    };
    let report = with_api(api, cluster::run(&cluster, plan, "fine1", opts, output()))
        .await
        .expect("the run ends");
    assert_eq!(report.exit_code(), 0);
    let mut items = processed.lock().expect("processed").clone();
    items.sort();
    let mut want: Vec<String> =
        std::fs::read_to_string(common::repo().join("deploy/examples/fine-queue-items.txt"))
            .expect("items file")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
    want.sort();
    assert_eq!(items, want, "every item processed once");
    let job = &report.jobs[0];
    assert!(job.complete());
    let c = counters(job);
    assert_eq!(
        (c["enqueued"], c["completed"], c["pending"], c["leased"]),
        (9, 9, 0, 0)
    );
    assert!(job.queue.as_ref().is_some_and(|q| q.notes.is_empty()));
    assert_eq!(job.pods.len(), 2);
    assert!(
        job.pods
            .iter()
            .all(|p| p.phase == "Succeeded" && p.exits == "c=0"),
        "{:?}",
        job.pods
    );
    assert_eq!(job.events[0].reason, "SuccessfulCreate");
    let text = job_runner::output::describe(job);
    assert!(text.contains("9 enqueued / 9 completed"), "{text}");
    // The requests, in order: create; the watchers' lists and watches (in
    // either order); the final pods and events.
    let seen = requests(&log);
    assert_eq!(seen[0], ("POST".into(), JOBS.into()));
    let tail: Vec<_> = seen[seen.len() - 2..].to_vec();
    assert_eq!(
        tail,
        vec![("GET".into(), PODS.into()), ("GET".into(), EVENTS.into())]
    );
    for want in [JOBS, PODS] {
        let gets = seen.iter().filter(|(m, p)| m == "GET" && p == want).count();
        assert!(gets >= 2, "{want}: a list and a watch: {seen:?}");
    }
}

/// A coarse Job whose manifest leaves `completions` unset; with `items`,
/// the `workq.dev/items` annotation.
fn coarse_job(queue: &str, items: Option<&str>) -> String {
    let items = items.map_or(String::new(), |i| format!("    workq.dev/items: {i}\n"));
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: coarse-rule\n  annotations:\n    workq.dev/queue: {queue}\n    workq.dev/pattern: coarse\n{items}spec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        image: busybox\n        command: [wq, consume, -c, '1', --, cat]\n"
    )
}

/// Pushes one item to `queue` before the run, as an earlier run could have.
async fn left_over(url: &str, queue: &str) {
    let client = worker_sdk::connect(url).await.expect("connect");
    let q = client.queue(queue).expect("queue");
    q.push(["left-over"]).await.expect("push");
}

/// One rule for a coarse Job's `completions`, `--local` and on a cluster
/// (`queue::fill_and_seal`): left unset by the manifest, it becomes the
/// number of items in the sealed queue — the two pushed plus the one the
/// queue already held — so that every item gets its pod.
#[tokio::test]
async fn a_coarse_jobs_completions_follow_one_rule_locally_and_on_a_cluster() {
    let (_server, url) = queue_service().await;
    let dir = tempfile::tempdir().expect("tempdir");

    // --local, against the same queue service.
    let local_queue = format!("coarse-rule-local-{}", job_runner::pod::random_suffix(5));
    left_over(&url, &local_queue).await;
    let file = common::write(
        dir.path(),
        "local.yaml",
        &coarse_job(&local_queue, Some("apple banana")),
    );
    let mut cmd = common::job_runner();
    cmd.args([
        "run",
        "-f",
        &file,
        "--local",
        "--queue-url",
        &url,
        "-o",
        "json",
    ]);
    let r: common::Run =
        tokio::task::spawn_blocking(move || cmd.output().expect("job-runner starts"))
            .await
            .expect("joined")
            .into();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let job = r.json();
    assert_eq!(job["spec"]["completions"], 3, "local: {}", r.stderr);
    assert_eq!(job["status"]["succeeded"], 3, "local: one pod per item");

    // On a cluster: the Job is created with completions 3.
    let cluster_queue = format!("coarse-rule-cluster-{}", job_runner::pod::random_suffix(5));
    left_over(&url, &cluster_queue).await;
    let file = common::write(
        dir.path(),
        "cluster.yaml",
        &coarse_job(&cluster_queue, Some("apple banana")),
    );
    let loaded = job_runner::manifest::load(&[file], &Default::default(), &mut std::io::empty())
        .expect("manifest loads");
    let plan = cluster::plan(&loaded, &RenderOptions::new("coarserule")).expect("plan");
    let mut want = plan[0].to_value();
    assert_eq!(
        want["spec"]["completions"], 2,
        "render, without the queue, shows the manifest's items"
    );
    want["spec"]["completions"] = json!(3);
    let (u, q) = (url.clone(), cluster_queue.clone());
    let pods: Pods = Box::new(move || {
        let (url, queue) = (u.clone(), q.clone());
        Box::pin(async move {
            assert_eq!(work(&url, &queue, 3).await.len(), 3);
            let pod = pod(
                "coarse-rule",
                "coarserule",
                "coarse-rule-bcdfg",
                "Succeeded",
                Some(0),
            );
            (vec![status(0, 3, true)], vec![pod])
        })
    });
    let (cluster, _log, api) = job_api("coarserule", want, pods);
    let report = with_api(
        api,
        cluster::run(&cluster, plan, "coarserule", opts(&url), output()),
    )
    .await
    .expect("the run ends");
    assert_eq!(report.exit_code(), 0);
    let spec = report.jobs[0].job.spec.as_ref().expect("spec");
    assert_eq!(spec.completions, Some(3), "cluster");
}

/// The rule's other side: on a queue that someone else fills (no items in
/// the manifest) and has not sealed, the number of items is not known yet,
/// so a coarse Job leaving `completions` unset is refused — in both modes,
/// before any pod runs or anything is created.
#[tokio::test]
async fn a_coarse_job_on_an_open_queue_is_refused_locally_and_on_a_cluster() {
    let (_server, url) = queue_service().await;
    let queue = format!("coarse-open-{}", job_runner::pod::random_suffix(5));
    left_over(&url, &queue).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = common::write(dir.path(), "open.yaml", &coarse_job(&queue, None));

    let mut cmd = common::job_runner();
    cmd.args(["run", "-f", &file, "--local", "--queue-url", &url]);
    let r: common::Run =
        tokio::task::spawn_blocking(move || cmd.output().expect("job-runner starts"))
            .await
            .expect("joined")
            .into();
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("is not sealed"), "{}", r.stderr);
    assert!(!r.stderr.contains("Created pod"), "{}", r.stderr);

    let loaded = job_runner::manifest::load(&[file], &Default::default(), &mut std::io::empty())
        .expect("manifest loads");
    let plan = cluster::plan(&loaded, &RenderOptions::new("coarseopen")).expect("plan");
    let (cluster, log, api) = fake_api(|req| async move { panic!("no request expected: {req:?}") });
    let err = with_api(
        api,
        cluster::run(&cluster, plan, "coarseopen", opts(&url), output()),
    )
    .await
    .expect_err("refused");
    assert!(err.is_bad_input());
    assert!(err.to_string().contains("is not sealed"), "{err}");
    assert!(log.lock().expect("log").is_empty());
}

/// The tutorial's first caveat: completions (2) smaller than the queue (3
/// items). Both pods take one item and exit 0, the Job completes — and one
/// item is left that no pod will ever take. The run says so and exits 1.
#[tokio::test]
async fn pods_ended_with_work_left_is_reported_and_fails_the_run() {
    let (_server, url) = queue_service().await;
    let mut plan = planned("coarse-queue.yaml", "coarse1");
    if let Planned::Job { job, queue } = &mut plan[0] {
        job.spec.as_mut().expect("spec").completions = Some(2);
        let q = queue.as_mut().expect("queue");
        q.items = Some(vec!["apple".into(), "banana".into(), "cherry".into()]);
        q.completions_from_queue = false;
    }
    let u = url.clone();
    let pods: Pods = Box::new(move || {
        let url = u.clone();
        Box::pin(async move {
            assert_eq!(work(&url, "job1", 2).await.len(), 2);
            (
                vec![status(0, 2, true)],
                vec![
                    pod(
                        "job-wq-1",
                        "coarse1",
                        "job-wq-1-bcdfg",
                        "Succeeded",
                        Some(0),
                    ),
                    pod(
                        "job-wq-1",
                        "coarse1",
                        "job-wq-1-hjklm",
                        "Succeeded",
                        Some(0),
                    ),
                ],
            )
        })
    });
    let (cluster, _log, api) = job_api("coarse1", plan[0].to_value(), pods);
    let report = with_api(
        api,
        cluster::run(&cluster, plan, "coarse1", opts(&url), output()),
    )
    .await
    .expect("the run ends");
    assert_eq!(report.exit_code(), 1, "work was left");
    let job = &report.jobs[0];
    assert!(job.complete(), "the Job itself completed");
    let q = job.queue.as_ref().expect("queue");
    assert!(q.unfinished);
    assert!(
        q.notes.iter().any(
            |n| n.contains("still holds 1 item(s) that no pod will take")
                && n.contains("completions 2")
        ),
        "{:?}",
        q.notes
    );
    assert_eq!(counters(job)["pending"], 1);
    assert!(job_runner::output::describe(job).contains("Note:"));
}

/// The opposite caveat: the queue is drained while one pod still waits
/// (the other succeeded). The run reports it, deletes the idle Job with
/// background propagation (`DELETE …/jobs/NAME`, body
/// `propagationPolicy: Background`), and exits 0: the work is done.
#[tokio::test]
async fn queue_drained_while_pods_wait_deletes_the_idle_job() {
    let (_server, url) = queue_service().await;
    let plan = planned("fine-queue.yaml", "idle1");
    let u = url.clone();
    let pods: Pods = Box::new(move || {
        let url = u.clone();
        Box::pin(async move {
            assert_eq!(work(&url, "job2", 100).await.len(), 9);
            (
                vec![status(1, 1, false)],
                vec![
                    pod("job-wq-2", "idle1", "job-wq-2-abcde", "Succeeded", Some(0)),
                    pod("job-wq-2", "idle1", "job-wq-2-fghjk", "Running", None),
                ],
            )
        })
    });
    let (cluster, log, api) = job_api("idle1", plan[0].to_value(), pods);
    let report = with_api(
        api,
        cluster::run(&cluster, plan, "idle1", opts(&url), output()),
    )
    .await
    .expect("the run ends");
    let seen = requests(&log);
    assert!(
        seen.contains(&("DELETE".into(), format!("{JOBS}/job-wq-2"))),
        "{seen:?}"
    );
    let job = &report.jobs[0];
    assert!(
        job.deleted
            .as_deref()
            .is_some_and(|d| d.contains("idle pod(s)")),
        "{:?}",
        job.deleted
    );
    let q = job.queue.as_ref().expect("queue");
    assert!(
        q.notes
            .iter()
            .any(|n| n.contains("is drained but 1 pod(s) of job.batch/job-wq-2 still run")),
        "{:?}",
        q.notes
    );
    assert!(!q.unfinished);
    assert_eq!(report.exit_code(), 0);
}

/// A CronJob is created as a CronJob, labelled on itself, its Job template
/// and its pod template, and not waited for.
#[tokio::test]
async fn cronjob_is_created_as_a_cronjob() {
    let plan = planned("cronjob.yaml", "cron1");
    let want = plan[0].to_value();
    assert_eq!(
        want["spec"]["jobTemplate"]["metadata"]["labels"]["workq.dev/run"],
        "cron1"
    );
    assert_eq!(
        want["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]["workq.dev/run"],
        "cron1"
    );
    let (cluster, log, api) = fake_api(move |req| {
        let want = want.clone();
        async move {
            assert_eq!(
                (req.method.as_str(), req.path()),
                ("POST", "/apis/batch/v1/namespaces/default/cronjobs")
            );
            assert_eq!(req.body.as_ref(), Some(&want));
            Reply::Json(201, created(want, "5"))
        }
    });
    let report = with_api(
        api,
        cluster::run(
            &cluster,
            plan,
            "cron1",
            ClusterRunOptions::default(),
            output(),
        ),
    )
    .await
    .expect("created");
    assert_eq!(report.exit_code(), 0);
    assert!(report.jobs.is_empty());
    assert_eq!(log.lock().expect("log").len(), 1, "nothing but the create");
}

/// The pod-to-pod example: the headless Service is created before the Job.
#[tokio::test]
async fn pod_to_pod_service_is_created_before_its_job() {
    let plan = planned("pod-to-pod.yaml", "p2p1");
    let (cluster, log, api) = fake_api(|req| async move {
        match (req.method.as_str(), req.path()) {
            ("POST", _) => {
                let body = req.body.clone().expect("body");
                assert_eq!(body["metadata"]["labels"]["workq.dev/run"], "p2p1");
                Reply::Json(201, created(body, "5"))
            }
            _ if req.is_watch() => Reply::Hold,
            ("GET", JOBS) => Reply::Json(200, list("JobList", vec![], "6")),
            ("GET", PODS) => Reply::Json(200, list("PodList", vec![], "6")),
            ("GET", EVENTS) => Reply::Json(200, list("EventList", vec![], "6")),
            _ => panic!("unexpected request: {req:?}"),
        }
    });
    // The Job never ends here: a timeout of zero stops the watch once both
    // objects are created.
    let opts = ClusterRunOptions {
        timeout: Some(std::time::Duration::ZERO),
        ..Default::default()
    };
    let report = with_api(api, cluster::run(&cluster, plan, "p2p1", opts, output()))
        .await
        .expect("stopped by the timeout");
    assert!(report.interrupted);
    assert_eq!(report.exit_code(), 1);
    let seen = requests(&log);
    assert_eq!(
        seen[..2],
        [
            ("POST".into(), "/api/v1/namespaces/default/services".into()),
            ("POST".into(), JOBS.into()),
        ]
    );
}

/// `delete -l`: lists Jobs, CronJobs and Services by the selector and
/// deletes each with background propagation.
#[tokio::test]
async fn delete_by_label_uses_background_propagation() {
    let (cluster, log, api) = fake_api(|req| async move {
        let item = |kind: &str, name: &str| json!({"apiVersion": "batch/v1", "kind": kind, "metadata": {"name": name, "namespace": "default"}});
        match (req.method.as_str(), req.path()) {
            ("GET", JOBS) => {
                assert!(
                    req.query().contains("labelSelector=workq.dev%2Frun%3Dr1"),
                    "{}",
                    req.uri
                );
                Reply::Json(
                    200,
                    list("JobList", vec![item("Job", "a"), item("Job", "b")], "1"),
                )
            }
            ("GET", "/apis/batch/v1/namespaces/default/cronjobs") => {
                Reply::Json(200, list("CronJobList", vec![item("CronJob", "c")], "1"))
            }
            ("GET", "/api/v1/namespaces/default/services") => {
                Reply::Json(200, list("ServiceList", vec![], "1"))
            }
            ("DELETE", p) => {
                assert_eq!(
                    req.body,
                    Some(json!({"propagationPolicy": "Background"})),
                    "{p}"
                );
                let name = p.rsplit('/').next().unwrap_or("");
                let kind = if p.contains("cronjobs") {
                    "CronJob"
                } else {
                    "Job"
                };
                Reply::Json(200, item(kind, name))
            }
            _ => panic!("unexpected request: {req:?}"),
        }
    });
    let deleted = with_api(api, cluster.delete("workq.dev/run=r1"))
        .await
        .expect("deleted");
    assert_eq!(deleted, ["job.batch/a", "job.batch/b", "cronjob.batch/c"]);
    let seen = requests(&log);
    assert_eq!(
        seen,
        [
            ("GET".to_string(), JOBS.to_string()),
            ("DELETE".into(), format!("{JOBS}/a")),
            ("DELETE".into(), format!("{JOBS}/b")),
            (
                "GET".into(),
                "/apis/batch/v1/namespaces/default/cronjobs".into()
            ),
            (
                "DELETE".into(),
                "/apis/batch/v1/namespaces/default/cronjobs/c".into()
            ),
            ("GET".into(), "/api/v1/namespaces/default/services".into()),
        ]
    );
}

/// A forbidden create names the RBAC fix.
#[tokio::test]
async fn forbidden_create_names_the_rbac_fix() {
    let plan = planned("indexed-job.yaml", "rbac1");
    let (cluster, _log, api) = fake_api(|_req| async move {
        Reply::Json(
            403,
            json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
            "message": "jobs.batch is forbidden: User \"system:serviceaccount:workq:default\" cannot create resource \"jobs\""}),
        )
    });
    let err = with_api(
        api,
        cluster::run(
            &cluster,
            plan,
            "rbac1",
            ClusterRunOptions::default(),
            output(),
        ),
    )
    .await
    .expect_err("forbidden");
    let text = err.to_string();
    assert!(text.contains("creating job.batch/indexed-job"), "{text}");
    assert!(text.contains("deploy/job-runner/rbac.yaml"), "{text}");
}

/// A work-queue Job with no --queue-url is one clear error, before
/// anything is created.
#[tokio::test]
async fn work_queue_job_without_queue_url_is_refused_before_creating_anything() {
    let plan = planned("fine-queue.yaml", "nourl");
    let (cluster, log, api) = fake_api(|req| async move { panic!("no request expected: {req:?}") });
    let err = with_api(
        api,
        cluster::run(
            &cluster,
            plan,
            "nourl",
            ClusterRunOptions::default(),
            output(),
        ),
    )
    .await
    .expect_err("refused");
    assert!(err.is_bad_input());
    assert!(err.to_string().contains("--queue-url grpc://"), "{err}");
    assert!(log.lock().expect("log").is_empty());
}

/// An object of another namespace than the run's is refused before
/// anything is created, naming the fix.
#[tokio::test]
async fn object_of_another_namespace_is_refused() {
    let mut loaded = job_runner::manifest::Loaded::default();
    let text = std::fs::read_to_string(common::example("indexed-job.yaml"))
        .expect("example")
        .replacen(
            "  name: 'indexed-job'\n",
            "  name: 'indexed-job'\n  namespace: batch\n",
            1,
        );
    job_runner::manifest::parse_text(
        "j.yaml",
        std::path::Path::new("."),
        &text,
        &Default::default(),
        &mut loaded,
    )
    .expect("parses");
    let plan = cluster::plan(&loaded, &RenderOptions::new("ns1")).expect("plan");
    assert_eq!(cluster::manifest_namespace(&plan).as_deref(), Some("batch"));
    let (cluster, log, api) = fake_api(|req| async move { panic!("no request expected: {req:?}") });
    let err = with_api(
        api,
        cluster::run(
            &cluster,
            plan,
            "ns1",
            ClusterRunOptions::default(),
            output(),
        ),
    )
    .await
    .expect_err("refused");
    assert!(err.to_string().contains("pass -n batch"), "{err}");
    assert!(log.lock().expect("log").is_empty());
}

struct Lines(Mutex<Vec<String>>);

impl job_runner::process::Sink for Lines {
    fn line(&self, prefix: &str, text: &str) {
        self.0
            .lock()
            .expect("lines")
            .push(format!("[{prefix}] {text}"));
    }
}

/// `logs -l`: lists the pods by the selector, reads each container's log
/// and prefixes every line with pod and container.
#[tokio::test]
async fn logs_by_label_prefix_pod_and_container() {
    let (cluster, log, api) = fake_api(|req| async move {
        match (req.method.as_str(), req.path()) {
            ("GET", PODS) => {
                assert!(
                    req.query().contains("labelSelector=job-name%3Djob-wq-2"),
                    "{}",
                    req.uri
                );
                Reply::Json(
                    200,
                    list(
                        "PodList",
                        vec![pod("job-wq-2", "r", "job-wq-2-abcde", "Succeeded", Some(0))],
                        "1",
                    ),
                )
            }
            ("GET", "/api/v1/namespaces/default/pods/job-wq-2-abcde/log") => {
                assert!(req.query().contains("container=c"), "{}", req.uri);
                Reply::Text("Working on apple\nWorking on banana\n")
            }
            _ => panic!("unexpected request: {req:?}"),
        }
    });
    let lines = Arc::new(Lines(Mutex::new(Vec::new())));
    let n = with_api(api, cluster.logs("job-name=job-wq-2", false, lines.clone()))
        .await
        .expect("logs");
    assert_eq!(n, 1);
    assert_eq!(
        *lines.0.lock().expect("lines"),
        [
            "[pod/job-wq-2-abcde/c] Working on apple",
            "[pod/job-wq-2-abcde/c] Working on banana"
        ]
    );
    assert_eq!(log.lock().expect("log").len(), 2);
}

/// `get jobs -l`: one list request with the selector; the table reads like kubectl's.
#[tokio::test]
async fn get_jobs_by_label() {
    let plan = planned("fine-queue.yaml", "get1");
    let job = created(plan[0].to_value(), "3");
    let (cluster, _log, api) = fake_api(move |req| {
        let job = job.clone();
        async move {
            assert_eq!((req.method.as_str(), req.path()), ("GET", JOBS));
            assert!(
                req.query().contains("labelSelector=workq.dev%2Frun%3Dget1"),
                "{}",
                req.uri
            );
            Reply::Json(
                200,
                list(
                    "JobList",
                    vec![with_status(job, status(0, 2, true), "4")],
                    "4",
                ),
            )
        }
    });
    let jobs = with_api(api, cluster.get_jobs("workq.dev/run=get1"))
        .await
        .expect("jobs");
    let table = cluster::jobs_table(&jobs, "2026-01-01T00:05:00Z".parse().expect("ts"));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("job-wq-2   Complete   2/1 of 2      9s         5m0s"),
        "{table}"
    );
}
