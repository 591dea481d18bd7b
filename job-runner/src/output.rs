//! What a person sees: pods' output prefixed by pod name (as
//! `kubectl logs -f -l … --prefix`), events and a live view on standard
//! error, and at the end a `kubectl describe job`-like summary — or, with
//! `-o json`, the final Job objects.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Container;

use crate::controller::{Event, Verdict};
use crate::process::Sink;

/// The terminal side of a run.
pub struct Output {
    json: bool,
    multi: Option<MultiProgress>,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    lock: Mutex<()>,
}

impl Output {
    /// `json`: pods' output goes to standard error, leaving standard output
    /// to the JSON document. `live`: show progress bars (only drawn when
    /// standard error is a terminal).
    pub fn new(json: bool, live: bool) -> Self {
        let multi = live.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Output {
            json,
            multi,
            bars: Mutex::new(BTreeMap::new()),
            lock: Mutex::new(()),
        }
    }

    fn write(&self, to_stderr: bool, text: &str) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let print = || {
            if to_stderr {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{text}");
            } else {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
        };
        match &self.multi {
            Some(m) => m.suspend(print),
            None => print(),
        }
    }

    /// An event line (standard error).
    pub fn event(&self, text: &str) {
        self.write(true, text);
    }

    /// Updates the live line of one Job (or queue).
    pub fn progress(&self, key: &str, done: u64, total: Option<u64>, message: String) {
        let Some(multi) = &self.multi else { return };
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bars.entry(key.to_string()).or_insert_with(|| {
            let bar = match total {
                Some(n) => ProgressBar::new(n),
                None => ProgressBar::new_spinner(),
            };
            let style = if total.is_some() {
                ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} {msg}")
            } else {
                ProgressStyle::with_template("{prefix:.bold} {spinner} {msg}")
            };
            if let Ok(style) = style {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(key.to_string());
            multi.add(bar)
        });
        if let Some(n) = total {
            bar.set_length(n);
        }
        bar.set_position(done);
        bar.set_message(message);
        bar.tick();
    }

    /// Removes every live line (before the summary).
    pub fn clear(&self) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        for (_, bar) in std::mem::take(&mut *bars) {
            bar.finish_and_clear();
        }
    }

    /// Prints the summary or the JSON document on standard output.
    pub fn result(&self, text: &str) {
        self.clear();
        self.write(false, text.trim_end());
    }
}

impl Sink for Output {
    fn line(&self, prefix: &str, text: &str) {
        self.write(self.json, &format!("[{prefix}] {text}"));
    }
}

/// One pod as the summary lists it.
#[derive(Debug, Clone)]
pub struct PodSummary {
    /// Its name.
    pub name: String,
    /// Its completion index.
    pub index: Option<u32>,
    /// `Running`, `Succeeded` or `Failed`.
    pub phase: String,
    /// How its containers ended (`main=42`).
    pub exits: String,
    /// What the controller made of it.
    pub note: String,
    /// When it started, from the Job's start.
    pub started: Duration,
    /// When it ended.
    pub ended: Option<Duration>,
}

/// Words for a verdict in the pod list.
pub fn verdict_note(v: &Verdict) -> String {
    match v {
        Verdict::Succeeded => String::new(),
        Verdict::Counted => "counted toward backoffLimit".into(),
        Verdict::Ignored { rule } => format!("ignored (podFailurePolicy rule {rule})"),
        Verdict::IndexFailed => "index failed".into(),
        Verdict::JobFailed => "failed the Job".into(),
        Verdict::AfterFinish => "ended after the Job had ended".into(),
    }
}

/// Queue counters for the summary of a work-queue Job.
#[derive(Debug, Clone, Default)]
pub struct QueueSummary {
    /// The queue's name.
    pub name: String,
    /// The URL its workers used.
    pub url: String,
    /// Items enqueued, completed, dead, retried; still pending or leased.
    pub counters: Vec<(String, u64)>,
    /// Dead items with their reasons.
    pub dead: Vec<String>,
    /// Plain-words notes about the queue and the Job disagreeing (cluster
    /// runs: pods ended with work left, or a drained queue with pods waiting).
    pub notes: Vec<String>,
    /// Work was left in the queue that no pod will take: the run did not
    /// finish its work even if the Job completed.
    pub unfinished: bool,
}

/// Everything the summary shows of one Job.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// The Job, with `status` and the controller's labels filled in.
    pub job: Job,
    /// Its pods.
    pub pods: Vec<PodSummary>,
    /// Its events.
    pub events: Vec<Event>,
    /// The CronJob that made it.
    pub owner: Option<String>,
    /// Not run: `spec.suspend` is true.
    pub suspended: bool,
    /// Deleted by its CronJob (`concurrencyPolicy: Replace`, history limits).
    pub deleted: Option<String>,
    /// Its queue, for work-queue Jobs.
    pub queue: Option<QueueSummary>,
    /// It ran on a cluster (images were pulled there), not on this machine.
    pub on_cluster: bool,
}

impl JobReport {
    /// The final condition (`Complete`/`Failed`), if any.
    pub fn outcome(&self) -> Option<(&str, &str, &str)> {
        let conds = self.job.status.as_ref()?.conditions.as_ref()?;
        conds
            .iter()
            .rev()
            .find(|c| c.type_ == "Complete" || c.type_ == "Failed")
            .map(|c| {
                (
                    c.type_.as_str(),
                    c.reason.as_deref().unwrap_or(""),
                    c.message.as_deref().unwrap_or(""),
                )
            })
    }

    /// The Job completed.
    pub fn complete(&self) -> bool {
        self.outcome().is_some_and(|o| o.0 == "Complete")
    }
}

fn age(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{}s", d.as_secs_f64().round() as u64)
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

fn map_line(map: Option<&BTreeMap<String, String>>) -> String {
    match map {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n                   "),
        _ => "<none>".into(),
    }
}

fn containers_block(out: &mut String, title: &str, list: &[Container], on_cluster: bool) {
    if list.is_empty() {
        return;
    }
    out.push_str(&format!("  {title}:\n"));
    for c in list {
        out.push_str(&format!("   {}:\n", c.name));
        let image = c.image.as_deref().unwrap_or("<none>");
        if on_cluster {
            out.push_str(&format!("    Image:      {image}\n"));
        } else {
            out.push_str(&format!(
                "    Image:      {image} (not pulled: the command runs from this host)\n"
            ));
        }
        if let Some(cmd) = &c.command {
            out.push_str("    Command:\n");
            for a in cmd {
                out.push_str(&format!("      {}\n", a.replace('\n', "\n      ")));
            }
        }
        if let Some(args) = &c.args {
            out.push_str("    Args:\n");
            for a in args {
                out.push_str(&format!("      {}\n", a.replace('\n', "\n      ")));
            }
        }
        let env: Vec<String> = c
            .env
            .iter()
            .flatten()
            .map(|e| match (&e.value, &e.value_from) {
                (Some(v), _) => format!("{}: {v}", e.name),
                (None, Some(f)) => format!(
                    "{}: ({})",
                    e.name,
                    f.field_ref
                        .as_ref()
                        .map_or("valueFrom", |r| r.field_path.as_str())
                ),
                _ => format!("{}:", e.name),
            })
            .collect();
        out.push_str(&format!(
            "    Environment:{}\n",
            if env.is_empty() {
                " <none>".to_string()
            } else {
                format!("\n      {}", env.join("\n      "))
            }
        ));
        let mounts: Vec<String> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                format!(
                    "{} from {} ({})",
                    m.mount_path,
                    m.name,
                    if m.read_only == Some(true) {
                        "ro"
                    } else {
                        "rw"
                    }
                )
            })
            .collect();
        out.push_str(&format!(
            "    Mounts:{}\n",
            if mounts.is_empty() {
                " <none>".to_string()
            } else {
                format!("\n      {}", mounts.join("\n      "))
            }
        ));
    }
}

/// A `kubectl describe job`-like text for one Job.
pub fn describe(r: &JobReport) -> String {
    let job = &r.job;
    let spec = job.spec.clone().unwrap_or_default();
    let status = job.status.clone().unwrap_or_default();
    let meta = &job.metadata;
    let mut o = String::new();
    let mut field = |k: &str, v: String| o.push_str(&format!("{:<18} {v}\n", format!("{k}:")));
    field("Name", meta.name.clone().unwrap_or_default());
    field(
        "Namespace",
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
    );
    field("Labels", map_line(meta.labels.as_ref()));
    field("Annotations", map_line(meta.annotations.as_ref()));
    if let Some(owner) = &r.owner {
        field("Controlled By", format!("CronJob/{owner}"));
    }
    field("Parallelism", spec.parallelism.unwrap_or(1).to_string());
    field(
        "Completions",
        spec.completions.map_or("<unset>".into(), |c| c.to_string()),
    );
    field(
        "Completion Mode",
        spec.completion_mode
            .clone()
            .unwrap_or_else(|| "NonIndexed".into()),
    );
    field("Suspend", (r.suspended).to_string());
    field(
        "Backoff Limit",
        spec.backoff_limit.map_or("6".into(), |b| b.to_string()),
    );
    if let Some(b) = spec.backoff_limit_per_index {
        field("Backoff Limit Per Index", b.to_string());
    }
    if let Some(m) = spec.max_failed_indexes {
        field("Max Failed Indexes", m.to_string());
    }
    if let Some(d) = spec.active_deadline_seconds {
        field("Active Deadline Seconds", format!("{d}s"));
    }
    if let Some(t) = &status.start_time {
        field(
            "Start Time",
            t.0.strftime("%a, %d %b %Y %H:%M:%S %z").to_string(),
        );
    }
    if let (Some(s), Some(c)) = (&status.start_time, &status.completion_time) {
        field(
            "Completed At",
            c.0.strftime("%a, %d %b %Y %H:%M:%S %z").to_string(),
        );
        let d = c.0.duration_since(s.0);
        field(
            "Duration",
            age(Duration::from_millis(
                u64::try_from(d.as_millis()).unwrap_or(0),
            )),
        );
    }
    field(
        "Pods Statuses",
        format!(
            "{} Active / {} Succeeded / {} Failed",
            status.active.unwrap_or(0),
            status.succeeded.unwrap_or(0),
            status.failed.unwrap_or(0)
        ),
    );
    if spec.completion_mode.as_deref() == Some("Indexed") {
        field(
            "Completed Indexes",
            status
                .completed_indexes
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "<none>".into()),
        );
        if spec.backoff_limit_per_index.is_some() {
            field(
                "Failed Indexes",
                status
                    .failed_indexes
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "<none>".into()),
            );
        }
    }
    if let Some(d) = &r.deleted {
        field("Deleted", d.clone());
    }
    o.push_str("Pod Template:\n");
    let pod_spec = spec.template.spec.clone().unwrap_or_default();
    containers_block(
        &mut o,
        "Init Containers",
        pod_spec.init_containers.as_deref().unwrap_or(&[]),
        r.on_cluster,
    );
    containers_block(&mut o, "Containers", &pod_spec.containers, r.on_cluster);
    let volumes = pod_spec.volumes.clone().unwrap_or_default();
    if volumes.is_empty() {
        o.push_str("  Volumes:        <none>\n");
    } else {
        o.push_str("  Volumes:\n");
        for v in volumes {
            let kind = if v.empty_dir.is_some() {
                "EmptyDir (a temporary directory that shares a pod's lifetime)"
            } else {
                "DownwardAPI (a volume populated by information about the pod)"
            };
            o.push_str(&format!("   {}:\n    Type:       {kind}\n", v.name));
        }
    }
    if let Some(q) = &r.queue {
        o.push_str(&format!("Work Queue:        {} at {}\n", q.name, q.url));
        let counters: Vec<String> = q.counters.iter().map(|(k, v)| format!("{v} {k}")).collect();
        o.push_str(&format!("  Items:           {}\n", counters.join(" / ")));
        if !q.dead.is_empty() {
            o.push_str("  Dead Items:\n");
            for d in &q.dead {
                o.push_str(&format!("    {d}\n"));
            }
        }
        for n in &q.notes {
            o.push_str(&format!("  Note:            {n}\n"));
        }
    }
    if !r.pods.is_empty() {
        o.push_str("Pods:\n");
        let w = r
            .pods
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        o.push_str(&format!(
            "  {:<w$}  {:<5}  {:<9}  {:<8}  {:<16}  {}\n",
            "Name", "Index", "Phase", "Duration", "Exit Codes", "Note"
        ));
        for p in &r.pods {
            let dur = p
                .ended
                .map_or("-".to_string(), |e| age(e.saturating_sub(p.started)));
            o.push_str(&format!(
                "  {:<w$}  {:<5}  {:<9}  {:<8}  {:<16}  {}\n",
                p.name,
                p.index.map_or("-".into(), |i| i.to_string()),
                p.phase,
                dur,
                if p.exits.is_empty() { "-" } else { &p.exits },
                p.note
            ));
        }
    }
    let conds = status.conditions.clone().unwrap_or_default();
    if conds.is_empty() {
        o.push_str("Conditions:        <none>\n");
    } else {
        o.push_str("Conditions:\n  Type                Status  Reason                    Message\n  ----                ------  ------                    -------\n");
        for c in conds {
            o.push_str(&format!(
                "  {:<18}  {:<6}  {:<24}  {}\n",
                c.type_,
                c.status,
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default()
            ));
        }
    }
    if r.events.is_empty() {
        o.push_str("Events:            <none>\n");
    } else {
        o.push_str("Events:\n  Type     Reason                    At     From            Message\n  ----     ------                    --     ----            -------\n");
        for e in &r.events {
            o.push_str(&format!(
                "  {:<7}  {:<24}  {:<5}  job-controller  {}\n",
                if e.warning { "Warning" } else { "Normal" },
                e.reason,
                age(e.at),
                e.message
            ));
        }
    }
    o
}

/// The JSON document for `-o json`: one Job, or a `v1` `List` of them.
pub fn json(reports: &[JobReport]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = reports
        .iter()
        .filter_map(|r| serde_json::to_value(&r.job).ok())
        .collect();
    if items.len() == 1 {
        items.into_iter().next().unwrap_or_default()
    } else {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
    }
}
