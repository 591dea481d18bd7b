//! The bodies of `job-runner`'s commands: what each does once its flags are
//! parsed (the binary's `main.rs` only parses them). Each returns the
//! process's exit code and writes to standard output and error as the
//! command's documentation says.
//!
//! # Exit codes
//!
//! 0 every Job completed (or the command did what it was asked); 1 a Job
//! failed, the run was stopped, or something outside the input failed (the
//! cluster, the queue service); 2 bad input (see [`Error::is_bad_input`]).

use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;

use crate::cluster::{self, Cluster, ClusterRunOptions, RenderOptions};
use crate::error::Error;
use crate::local::RunOptions;
use crate::manifest::{self, Loaded};
use crate::output::{Output, print_report};
use crate::process::Sink;
use crate::template::{self, TemplateOptions};

/// Where a cluster command works (`--context`, `-n`).
#[derive(Debug, Clone, Default)]
pub struct ClusterTarget {
    /// The kubeconfig context (default: the current one, or in a pod its
    /// service account).
    pub context: Option<String>,
    /// The namespace (default: the context's, else `default`).
    pub namespace: Option<String>,
}

/// How a run shows itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct View {
    /// `-o json`: the final Job objects on standard output (pods' output then
    /// goes to standard error).
    pub json: bool,
    /// Draw the live progress view (only ever drawn on a terminal).
    pub progress: bool,
}

impl View {
    /// The terminal side of a run shown this way.
    fn output(self) -> Arc<Output> {
        let live = self.progress && std::io::stderr().is_terminal();
        Arc::new(Output::new(self.json, live))
    }
}

/// Prints `error: …` and answers the exit code for it: 2 for bad input, else 1.
pub fn report_error(e: &Error) -> i32 {
    eprintln!("error: {e}");
    if e.is_bad_input() { 2 } else { 1 }
}

/// A tokio runtime, or `None` after saying why there is none.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            None
        }
    }
}

/// Reads the manifests of `-f` (files, directories, `-` for standard input).
fn load(files: &[String], template: &TemplateOptions) -> Result<Loaded, i32> {
    manifest::load(files, template, &mut std::io::stdin()).map_err(|e| report_error(&e))
}

/// `job-runner expand`: prints each template expanded (`$ITEM`, or Jinja for
/// `.jinja2`, `.jinja`, `.j2`); `-` reads standard input.
pub fn expand(templates: &[String], opts: &TemplateOptions) -> i32 {
    for t in templates {
        let (name, text) = if t == "-" {
            let mut s = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                eprintln!("error: cannot read standard input: {e}");
                return 2;
            }
            ("<stdin>".to_string(), s)
        } else {
            match std::fs::read_to_string(t) {
                Ok(s) => (t.clone(), s),
                Err(e) => {
                    eprintln!("error: cannot read {t}: {e}");
                    return 2;
                }
            }
        };
        if !template::is_jinja(&name) && !template::uses_item(&text) {
            eprintln!(
                "error: {name}: not a template: it has no $ITEM and its name does not end in .jinja2, .jinja or .j2"
            );
            return 2;
        }
        match template::expand(&name, &text, opts) {
            Ok(out) => print!("{out}"),
            Err(e) => return report_error(&e),
        }
    }
    0
}

/// `job-runner evict POD…`: asks the running `job-runner run` holding each
/// pod to evict it.
pub fn evict(pods: &[String]) -> i32 {
    let Some(rt) = runtime() else { return 1 };
    let mut code = 0;
    for pod in pods {
        match rt.block_on(crate::control::evict(pod)) {
            Ok(true) => println!("pod/{pod} evicted"),
            Ok(false) => {
                eprintln!(
                    "error: no running `job-runner run` of this user has a running pod named {pod:?}; check the name in its output"
                );
                code = 1;
            }
            Err(e) => {
                eprintln!("error: {e}");
                code = 1;
            }
        }
    }
    code
}

/// `job-runner render`: prints what a cluster run would create, as YAML or
/// (`json`) a v1 List.
pub fn render(
    files: &[String],
    template: &TemplateOptions,
    opts: &RenderOptions,
    json: bool,
) -> i32 {
    let loaded = match load(files, template) {
        Ok(l) => l,
        Err(code) => return code,
    };
    for s in &loaded.skipped {
        eprintln!("warning: {s}");
    }
    let planned = match cluster::plan(&loaded, opts) {
        Ok(p) => p,
        Err(e) => return report_error(&e),
    };
    if json {
        let items: Vec<serde_json::Value> = planned.iter().map(|p| p.to_value()).collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
    } else {
        match cluster::to_yaml(&planned) {
            Ok(text) => print!("{text}"),
            Err(e) => return report_error(&e),
        }
    }
    0
}

/// `job-runner run --local`: runs the manifests on this machine
/// ([`crate::local::run`]) and prints the report.
pub fn run_local(
    files: &[String],
    template: &TemplateOptions,
    opts: RunOptions,
    view: View,
) -> i32 {
    let loaded = match load(files, template) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let out = view.output();
    let Some(rt) = runtime() else { return 1 };
    let report = match rt.block_on(crate::local::run(loaded, opts, out.clone())) {
        Ok(r) => r,
        Err(e) => return report_error(&e),
    };
    print_report(&out, view.json, &report);
    report.exit_code()
}

/// `job-runner run` without `--local`: plans the manifests with `render`
/// (whose run id labels everything), runs them on the cluster
/// ([`cluster::run`]) and prints the report. Without `-n`, the namespace the
/// manifests name, if they name one.
pub fn run_on_cluster(
    files: &[String],
    template: &TemplateOptions,
    render: &RenderOptions,
    target: &ClusterTarget,
    opts: ClusterRunOptions,
    view: View,
) -> i32 {
    let loaded = match load(files, template) {
        Ok(l) => l,
        Err(code) => return code,
    };
    for s in &loaded.skipped {
        eprintln!("warning: {s}");
    }
    let run_id = render.run_id.clone();
    let planned = match cluster::plan(&loaded, render) {
        Ok(p) => p,
        Err(e) => return report_error(&e),
    };
    let out = view.output();
    let Some(rt) = runtime() else { return 1 };
    let report = rt.block_on(async {
        let namespace = target
            .namespace
            .clone()
            .or_else(|| cluster::manifest_namespace(&planned));
        let cluster = Cluster::connect(target.context.as_deref(), namespace.as_deref()).await?;
        out.event(&format!(
            "run {run_id} in namespace {}: everything is labelled {}={run_id}",
            cluster.namespace(),
            cluster::RUN_LABEL
        ));
        cluster::run(&cluster, planned, &run_id, opts, out.clone()).await
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => return report_error(&e),
    };
    print_report(&out, view.json, &report);
    report.exit_code()
}

/// Connects to the cluster and runs `f`; its result is the exit code.
fn with_cluster<F, Fut>(target: &ClusterTarget, f: F) -> i32
where
    F: FnOnce(Cluster) -> Fut,
    Fut: Future<Output = crate::Result<i32>>,
{
    let Some(rt) = runtime() else { return 1 };
    rt.block_on(async {
        let cluster =
            Cluster::connect(target.context.as_deref(), target.namespace.as_deref()).await?;
        f(cluster).await
    })
    .unwrap_or_else(|e| report_error(&e))
}

/// `job-runner get jobs -l SELECTOR`: the matching Jobs as a table.
pub fn get_jobs(target: &ClusterTarget, selector: &str) -> i32 {
    with_cluster(target, |c| async move {
        let jobs = c.get_jobs(selector).await?;
        if jobs.is_empty() {
            eprintln!("No resources found in {} namespace.", c.namespace());
        } else {
            print!("{}", cluster::jobs_table(&jobs, jiff::Timestamp::now()));
        }
        Ok(0)
    })
}

/// `job-runner logs -l SELECTOR [-f]`: the matching pods' logs, prefixed.
pub fn logs(target: &ClusterTarget, selector: &str, follow: bool) -> i32 {
    with_cluster(target, |c| async move {
        let sink: Arc<dyn Sink> = Arc::new(Output::new(false, false));
        let n = c.logs(selector, follow, sink).await?;
        if n == 0 {
            eprintln!("No resources found in {} namespace.", c.namespace());
        }
        Ok(0)
    })
}

/// `job-runner delete -l SELECTOR`: deletes the matching Jobs, CronJobs and
/// Services, and prints each.
pub fn delete(target: &ClusterTarget, selector: &str) -> i32 {
    with_cluster(target, |c| async move {
        let deleted = c.delete(selector).await?;
        if deleted.is_empty() {
            eprintln!("No resources found");
        }
        for d in deleted {
            println!("{d} deleted");
        }
        Ok(0)
    })
}

/// The embedded `wq consume` (the runner called as `wq`): works queue `queue`
/// of the service at `url` (with the CA, token and client certificate of
/// `security`) with `wq consume`'s flags `args`. Errors are prefixed `wq: error:`; 2
/// when the queue or service is not given or the queue name is invalid.
pub fn consume(
    url: Option<String>,
    queue: Option<String>,
    security: &worker_sdk::ConnectOptions,
    args: &worker_sdk::cli::ConsumeArgs,
) -> i32 {
    let (Some(url), Some(queue)) = (url, queue) else {
        eprintln!(
            "wq: error: give the queue with -q/--queue (or WQ_QUEUE) and the service with --url (or WQ_URL)"
        );
        return 2;
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wq: error: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let client = match worker_sdk::Client::connect_with(
            &url,
            worker_sdk::client::DEFAULT_CONNECT_TIMEOUT,
            security,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("wq: error: {e}");
                return 1;
            }
        };
        let q = match client.queue(&queue) {
            Ok(q) => q,
            Err(e) => {
                eprintln!("wq: error: {e}");
                return 2;
            }
        };
        match worker_sdk::cli::consume(&q, args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("wq: error: {e}");
                1
            }
        }
    })
}
