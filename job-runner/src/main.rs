//! `job-runner`: runs Kubernetes Job and CronJob manifests on this machine
//! or on a cluster.
//!
//! A thin binary: it parses flags (each also an environment variable) and
//! calls the `job_runner` library. Called as `wq` (a link the runner makes
//! for work-queue pods when no `wq` is installed), it acts as `wq consume`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use job_runner::cluster::render::CaBundle;
use job_runner::cluster::{ClusterRunOptions, RenderOptions};
use job_runner::commands::{self, ClusterTarget, View};
use job_runner::local::RunOptions;
use job_runner::template::{TemplateOptions, parse_var};

const AFTER_HELP: &str = "\
Exit codes: 0 every Job completed; 1 a Job failed (or the run was stopped); 2 bad input.";

/// Run Kubernetes batch/v1 Job and CronJob manifests on this machine, with the
/// Job controller's semantics (--local), or on a cluster until the work is really done.
#[derive(Debug, Parser)]
#[command(name = "job-runner", version, after_help = AFTER_HELP)]
struct Cli {
    /// Let a manifest's workq.dev/items-file name a file outside the
    /// manifest's directory (an absolute path, or one through ..).
    #[arg(long, global = true, env = "JOB_RUNNER_ALLOW_ITEMS_OUTSIDE")]
    allow_items_outside: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run Jobs and CronJobs: `job-runner run -f job.yaml --local`, or on a
    /// cluster: `job-runner run -f job.yaml --queue-url grpc://127.0.0.1:50051`.
    ///
    /// --local: every Job in the input starts at once; each pod is a local
    /// process (images are not pulled: commands run from this host). Pod output
    /// is printed prefixed with the pod's name; at the end, a `kubectl describe
    /// job`-like summary (or, with -o json, the final Job objects). Ctrl-C once
    /// evicts the running pods (SIGTERM; condition DisruptionTarget, so
    /// podFailurePolicy rules apply); twice stops everything.
    ///
    /// On a cluster (no --local): work-queue Jobs' queues are filled and sealed
    /// through --queue-url and the wq wrapper is injected (see `render`); the
    /// objects are created labelled workq.dev/run=ID; the Jobs, their pods and
    /// their queues are watched until each Job is Complete or Failed and its
    /// queue drained; then the same summary. Ctrl-C or --timeout stops
    /// watching and leaves the objects (`job-runner delete -l workq.dev/run=ID`).
    #[command(after_help = AFTER_HELP)]
    Run(RunArgs),
    /// Expand templates ($ITEM or Jinja) into manifests, printed on stdout.
    ///
    /// `job-runner expand job-tmpl.yaml --item apple --item banana` is the
    /// tutorial's sed loop; files ending in .jinja2, .jinja or .j2 are Jinja
    /// templates (`item`, `items` and every --set NAME=VALUE are variables).
    Expand(ExpandArgs),
    /// Evict a pod of a running `job-runner run` (SIGTERM; the pod gets the
    /// DisruptionTarget condition, so podFailurePolicy onPodConditions rules apply).
    Evict(EvictArgs),
    /// Print exactly what `job-runner run -f FILE` would create on a cluster,
    /// after expansion and wrapper injection (YAML, or -o json).
    Render(RenderArgs),
    /// List objects by label on the cluster: `job-runner get jobs -l workq.dev/run=ID`.
    Get(GetArgs),
    /// Print the logs of the pods matching a label selector, prefixed
    /// pod/NAME/CONTAINER (`kubectl logs -l … --prefix`).
    Logs(LogsArgs),
    /// Delete the Jobs, CronJobs and Services matching a label selector, with
    /// background propagation (their pods go too), as `kubectl delete -l` does.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
struct ClusterArgs {
    /// The kubeconfig context to use (default: the current context; in a pod:
    /// its service account).
    #[arg(long, value_name = "NAME", env = "JOB_RUNNER_CONTEXT")]
    context: Option<String>,
    /// The namespace (default: the context's, else `default`).
    #[arg(
        short = 'n',
        long,
        value_name = "NAMESPACE",
        env = "JOB_RUNNER_NAMESPACE"
    )]
    namespace: Option<String>,
}

#[derive(Debug, Args)]
struct InjectArgs {
    /// Image of the init container that copies the static `wq` into the pod.
    #[arg(long, value_name = "IMAGE", default_value = job_runner::cluster::render::DEFAULT_WRAPPER_IMAGE, env = "JOB_RUNNER_WRAPPER_IMAGE")]
    wrapper_image: String,
    /// WQ_URL for the pods of work-queue Jobs without a workq.dev/queue-url annotation
    /// (the queue service as pods reach it).
    #[arg(long, value_name = "URL", default_value = job_runner::cluster::render::DEFAULT_POD_QUEUE_URL, env = "JOB_RUNNER_POD_QUEUE_URL")]
    pod_queue_url: String,
    /// Leave work-queue Jobs' pod templates alone (for images that already run
    /// `wq` or an SDK worker; WQ_URL/WQ_QUEUE are then not set either).
    #[arg(long, env = "JOB_RUNNER_NO_INJECT")]
    no_inject: bool,
    /// Mount a projected ServiceAccount token (for the queue service's
    /// authentication) into work-queue pods even for a grpc:// URL; a
    /// grpcs:// URL always gets one.
    #[arg(long, env = "JOB_RUNNER_POD_TOKEN")]
    pod_token: bool,
    /// Audience of the projected token: the queue service's --auth-audience.
    #[arg(long, value_name = "AUDIENCE", default_value = job_runner::cluster::render::DEFAULT_TOKEN_AUDIENCE, env = "JOB_RUNNER_POD_TOKEN_AUDIENCE")]
    pod_token_audience: String,
    /// ConfigMap (in the Jobs' namespace) whose key ca.crt is the CA of the
    /// queue service's certificate; mounted into work-queue pods as WQ_CA_FILE.
    #[arg(
        long,
        value_name = "NAME",
        env = "JOB_RUNNER_POD_CA_CONFIGMAP",
        conflicts_with = "pod_ca_secret"
    )]
    pod_ca_configmap: Option<String>,
    /// Like --pod-ca-configmap, from a Secret.
    #[arg(long, value_name = "NAME", env = "JOB_RUNNER_POD_CA_SECRET")]
    pod_ca_secret: Option<String>,
}

impl ClusterArgs {
    fn target(&self) -> ClusterTarget {
        ClusterTarget {
            context: self.context.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

impl InjectArgs {
    fn options(&self, run_id: String) -> RenderOptions {
        RenderOptions {
            run_id,
            wrapper_image: self.wrapper_image.clone(),
            pod_queue_url: self.pod_queue_url.clone(),
            inject: !self.no_inject,
            pod_token: self.pod_token,
            token_audience: self.pod_token_audience.clone(),
            ca_bundle: match (&self.pod_ca_configmap, &self.pod_ca_secret) {
                (Some(name), _) => Some(CaBundle::ConfigMap(name.clone())),
                (None, Some(name)) => Some(CaBundle::Secret(name.clone())),
                (None, None) => None,
            },
        }
    }
}

#[derive(Debug, Args)]
struct RenderArgs {
    /// A manifest file, a directory of them, or - for standard input (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    files: Vec<String>,
    #[command(flatten)]
    template: TemplateArgs,
    #[command(flatten)]
    inject: InjectArgs,
    /// The value of the workq.dev/run label (default: a new random id, as `run` makes).
    #[arg(long, value_name = "ID", env = "JOB_RUNNER_RUN_ID")]
    run_id: Option<String>,
    /// yaml (a multi-document stream) or json (a v1 List).
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "yaml",
        env = "JOB_RUNNER_OUTPUT"
    )]
    output: RenderFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RenderFormat {
    /// Multi-document YAML, as `kubectl create -f` takes it.
    Yaml,
    /// A v1 List.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Resource {
    /// batch/v1 Jobs.
    Jobs,
}

#[derive(Debug, Args)]
struct GetArgs {
    /// What to list (only `jobs`).
    #[arg(value_enum, value_name = "RESOURCE")]
    resource: Resource,
    /// Label selector, e.g. workq.dev/run=ID or jobgroup=jobexample.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", required = true, value_parser = selector)]
    selector: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, Args)]
struct LogsArgs {
    /// Label selector of the pods, e.g. workq.dev/run=ID or job-name=NAME.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", required = true, value_parser = selector)]
    selector: String,
    /// Stream the logs until the containers end.
    #[arg(short = 'f', long)]
    follow: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, Args)]
struct DeleteArgs {
    /// Label selector, e.g. workq.dev/run=ID.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", required = true, value_parser = selector)]
    selector: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, Args)]
struct EvictArgs {
    /// The pod's name, as printed by `job-runner run`.
    #[arg(required = true, value_name = "POD")]
    pods: Vec<String>,
}

#[derive(Debug, Args)]
struct TemplateArgs {
    /// A value for $ITEM (or Jinja's `item`); the template is expanded once per --item.
    /// (No environment variable: items may hold any character.)
    #[arg(long = "item", value_name = "VALUE")]
    items: Vec<String>,
    /// A Jinja variable, NAME=VALUE (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
}

impl TemplateArgs {
    fn options(&self) -> TemplateOptions {
        TemplateOptions {
            items: self.items.clone(),
            vars: self.vars.iter().cloned().collect::<BTreeMap<_, _>>(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// A kubectl-describe-like summary.
    Text,
    /// The final Job object(s), as `kubectl get -o json` prints them.
    Json,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A manifest file, a directory of them, or - for standard input (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    files: Vec<String>,
    /// Run on this machine (pods as local processes); without it, on the
    /// cluster of the kubeconfig (or of the pod job-runner runs in).
    #[arg(long, env = "JOB_RUNNER_LOCAL")]
    local: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    inject: InjectArgs,
    /// Cluster: stop watching after this long (the objects are left running; exit 1).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, env = "JOB_RUNNER_TIMEOUT")]
    timeout: Option<Duration>,
    /// Cluster: stream the pods' logs, prefixed with pod and container names.
    #[arg(long, env = "JOB_RUNNER_FOLLOW")]
    follow: bool,
    /// Cluster: when a Job's queue is drained but some of its pods still wait
    /// (and those that ended succeeded), keep them instead of deleting the Job.
    #[arg(long, env = "JOB_RUNNER_KEEP_IDLE_PODS")]
    keep_idle_pods: bool,
    /// Cluster: how long pods may keep running after their queue is drained
    /// before they count as idle.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration, env = "JOB_RUNNER_IDLE_GRACE")]
    idle_grace: Duration,
    #[command(flatten)]
    template: TemplateArgs,
    /// Output at the end: text (summary) or json (the final Job objects).
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "text",
        env = "JOB_RUNNER_OUTPUT"
    )]
    output: Format,
    /// Base of the pod back-off after a failure (Kubernetes: 10s, doubling up to 6m).
    /// Shorten it only to try things quickly, e.g. --pod-backoff 0s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, env = "JOB_RUNNER_POD_BACKOFF")]
    pod_backoff: Duration,
    /// Run Jobs and CronJobs whose spec.suspend is true.
    #[arg(long, env = "JOB_RUNNER_RESUME")]
    resume: bool,
    /// CronJobs: stop after N Jobs each (default: run until interrupted).
    #[arg(long, value_name = "N", env = "JOB_RUNNER_RUNS")]
    runs: Option<u32>,
    /// CronJobs: start the first Job now (like `kubectl create job --from=cronjob/NAME`),
    /// then follow the schedule.
    #[arg(long, env = "JOB_RUNNER_START_NOW")]
    start_now: bool,
    /// Work-queue Jobs: the queue service job-runner fills and watches
    /// (grpc://host:port). --local: instead of starting one in-process.
    #[arg(long, value_name = "URL", env = "JOB_RUNNER_QUEUE_URL")]
    queue_url: Option<String>,
    /// Do not draw the live progress view (it is drawn only on a terminal anyway).
    #[arg(long, env = "JOB_RUNNER_NO_PROGRESS")]
    no_progress: bool,
}

#[derive(Debug, Args)]
struct ExpandArgs {
    /// Template files (- for standard input).
    #[arg(required = true, value_name = "TEMPLATE")]
    templates: Vec<String>,
    #[command(flatten)]
    template: TemplateArgs,
}

/// A label selector that selects something: an empty one would select
/// every object of the namespace.
fn selector(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("an empty selector would select everything in the namespace; give one, e.g. -l workq.dev/run=ID".into())
    } else {
        Ok(s.to_string())
    }
}

impl RunArgs {
    fn view(&self) -> View {
        View {
            json: self.output == Format::Json,
            progress: !self.no_progress,
        }
    }

    fn local_options(&self) -> RunOptions {
        RunOptions {
            pod_backoff: self.pod_backoff,
            resume: self.resume,
            runs: self.runs,
            start_now: self.start_now,
            queue_url: self.queue_url.clone(),
        }
    }

    fn cluster_options(&self) -> ClusterRunOptions {
        ClusterRunOptions {
            queue_url: self.queue_url.clone(),
            timeout: self.timeout,
            follow: self.follow,
            delete_idle: !self.keep_idle_pods,
            idle_grace: self.idle_grace,
        }
    }
}

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let called_as_wq = std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "wq");
    let code = if called_as_wq {
        wq::main()
    } else {
        let cli = Cli::parse();
        job_runner::queue::allow_items_outside(cli.allow_items_outside);
        match cli.command {
            Command::Run(args) if args.local => commands::run_local(
                &args.files,
                &args.template.options(),
                args.local_options(),
                args.view(),
            ),
            Command::Run(args) => commands::run_on_cluster(
                &args.files,
                &args.template.options(),
                &args
                    .inject
                    .options(job_runner::cluster::render::new_run_id()),
                &args.cluster.target(),
                args.cluster_options(),
                args.view(),
            ),
            Command::Expand(args) => commands::expand(&args.templates, &args.template.options()),
            Command::Evict(args) => commands::evict(&args.pods),
            Command::Render(args) => commands::render(
                &args.files,
                &args.template.options(),
                &args.inject.options(
                    args.run_id
                        .clone()
                        .unwrap_or_else(job_runner::cluster::render::new_run_id),
                ),
                args.output == RenderFormat::Json,
            ),
            Command::Get(args) => {
                let Resource::Jobs = args.resource;
                commands::get_jobs(&args.cluster.target(), &args.selector)
            }
            Command::Logs(args) => {
                commands::logs(&args.cluster.target(), &args.selector, args.follow)
            }
            Command::Delete(args) => commands::delete(&args.cluster.target(), &args.selector),
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// The `wq consume` the runner provides to work-queue pods when no `wq` is
/// installed: its flags (a copy of `wq consume`'s), read into
/// `worker_sdk::ConsumeOptions` for [`job_runner::commands::consume`].
mod wq {
    use clap::{Parser, Subcommand};
    use worker_sdk::cli::ConsumeArgs;

    /// wq (as provided by job-runner): only `wq consume` is available here;
    /// install the full `wq` with `cargo install --path worker-sdk --features cli`.
    #[derive(Debug, Parser)]
    #[command(name = "wq")]
    struct WqCli {
        /// Queue service URL (grpc://host:port, or grpcs://host:port over TLS).
        #[arg(long, env = "WQ_URL", global = true)]
        url: Option<String>,
        /// Queue name.
        #[arg(short, long, env = "WQ_QUEUE", global = true)]
        queue: Option<String>,
        #[command(flatten)]
        security: worker_sdk::cli::ConnectArgs,
        #[command(subcommand)]
        command: WqCommand,
    }

    #[derive(Debug, Subcommand)]
    enum WqCommand {
        /// Run a program once per item, the item on its standard input: the
        /// same flags and exit codes as `wq consume`.
        Consume(ConsumeArgs),
    }

    pub(super) fn main() -> i32 {
        let cli = WqCli::parse();
        let WqCommand::Consume(args) = cli.command;
        job_runner::commands::consume(cli.url, cli.queue, &cli.security.options(), &args)
    }
}
