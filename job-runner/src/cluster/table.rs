//! `job-runner get jobs`: a `kubectl get jobs`-like table.

use k8s_openapi::api::batch::v1::Job;

use super::decide::finished_condition;

/// A `kubectl get jobs`-like table: NAME STATUS COMPLETIONS DURATION AGE.
pub fn jobs_table(jobs: &[Job], now: jiff::Timestamp) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "STATUS".into(),
        "COMPLETIONS".into(),
        "DURATION".into(),
        "AGE".into(),
    ]];
    for j in jobs {
        let status = j.status.clone().unwrap_or_default();
        let spec = j.spec.clone().unwrap_or_default();
        let state = match finished_condition(j) {
            Some((true, _)) => "Complete",
            Some((false, _)) => "Failed",
            None if spec.suspend == Some(true) => "Suspended",
            None => "Running",
        };
        let completions = match spec.completions {
            Some(c) => format!("{}/{c}", status.succeeded.unwrap_or(0)),
            None => format!(
                "{}/1 of {}",
                status.succeeded.unwrap_or(0),
                spec.parallelism.unwrap_or(1)
            ),
        };
        let start = status.start_time.as_ref().map(|t| t.0);
        let end = status.completion_time.as_ref().map(|t| t.0).unwrap_or(now);
        let duration = start.map_or("-".into(), |s| short(end.duration_since(s)));
        let age = j
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or("-".into(), |t| short(now.duration_since(t.0)));
        rows.push([
            j.metadata.name.clone().unwrap_or_default(),
            state.into(),
            completions,
            duration,
            age,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn short(d: jiff::SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}
