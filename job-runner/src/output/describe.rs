//! `kubectl describe`-like text: one block per Job (its spec, pod template,
//! queue, pods, conditions and events) and one per CronJob.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;

use crate::report::{CronSummary, JobReport};

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
    for n in &r.notes {
        field("Note", n.clone());
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

/// A `kubectl describe cronjob`-like text for one CronJob.
pub fn describe_cron(c: &CronSummary) -> String {
    format!(
        "{:<18} {}\n{:<18} {}\n{:<18} {}\n{:<18} {}\n{:<18} {}\n{:<18} {}\n{:<18} {}\n",
        "Name:",
        c.name,
        "Schedule:",
        c.schedule,
        "Time Zone:",
        c.time_zone,
        "Concurrency Policy:",
        c.concurrency_policy,
        "Suspend:",
        c.suspended,
        "Jobs Started:",
        c.jobs_started,
        "Last Schedule Time:",
        c.last_schedule.map_or("<unset>".to_string(), |t| t
            .strftime("%a, %d %b %Y %H:%M:%S %z")
            .to_string()),
    )
}
