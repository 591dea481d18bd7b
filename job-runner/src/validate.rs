//! What the API server (and the local runner) would refuse in a Job or
//! CronJob, each problem one line starting with the field's path, in
//! Kubernetes' words (`Required value`, `Invalid value`, `Unsupported value`).

use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec};

/// Label and annotation keys the Job controller sets.
pub mod keys {
    /// The completion-index annotation (and label) of an Indexed Job's pods.
    pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
    /// The job-name label (legacy and prefixed forms).
    pub const JOB_NAME: &str = "job-name";
    /// The prefixed job-name label.
    pub const BATCH_JOB_NAME: &str = "batch.kubernetes.io/job-name";
    /// The controller-uid label (legacy form).
    pub const CONTROLLER_UID: &str = "controller-uid";
    /// The prefixed controller-uid label.
    pub const BATCH_CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
}

/// Field paths of pod fields the runner can give to a container through the
/// downward API (`env[].valueFrom.fieldRef`, `downwardAPI` volumes).
pub fn supported_field_path(path: &str) -> bool {
    matches!(
        path,
        "metadata.name"
            | "metadata.namespace"
            | "metadata.uid"
            | "metadata.labels"
            | "metadata.annotations"
            | "spec.nodeName"
            | "spec.serviceAccountName"
            | "status.podIP"
            | "status.hostIP"
            | "status.podIPs"
    ) || (path.starts_with("metadata.labels['") && path.ends_with("']"))
        || (path.starts_with("metadata.annotations['") && path.ends_with("']"))
}

/// Checks a Job; an empty list means it can run.
pub fn job(job: &Job) -> Vec<String> {
    let mut out = Vec::new();
    let meta = &job.metadata;
    match (&meta.name, &meta.generate_name) {
        (Some(name), _) => check_name("metadata.name", name, &mut out),
        (None, Some(prefix)) => {
            check_name("metadata.generateName", &format!("{prefix}x"), &mut out)
        }
        (None, None) => {
            out.push("metadata.name: Required value: name or generateName is required".into())
        }
    }
    match &job.spec {
        Some(spec) => job_spec("spec", spec, &mut out),
        None => out.push("spec: Required value".into()),
    }
    out
}

/// Checks a CronJob; an empty list means it can run.
pub fn cron_job(cron: &CronJob) -> Vec<String> {
    let mut out = Vec::new();
    match &cron.metadata.name {
        Some(name) => {
            check_name("metadata.name", name, &mut out);
            if name.len() > 52 {
                out.push(format!(
                    "metadata.name: Invalid value: {name:?}: must be no more than 52 characters"
                ));
            }
        }
        None => out.push("metadata.name: Required value".into()),
    }
    let Some(spec) = &cron.spec else {
        out.push("spec: Required value".into());
        return out;
    };
    if let Err(e) = crate::cron::Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        out.push(e);
    }
    if let Some(policy) = &spec.concurrency_policy
        && !matches!(policy.as_str(), "Allow" | "Forbid" | "Replace")
    {
        out.push(format!(
            "spec.concurrencyPolicy: Unsupported value: {policy:?}: supported values: \"Allow\", \"Forbid\", \"Replace\""
        ));
    }
    if let Some(d) = spec.starting_deadline_seconds
        && d < 0
    {
        out.push(format!(
            "spec.startingDeadlineSeconds: Invalid value: {d}: must be greater than or equal to 0"
        ));
    }
    match &spec.job_template.spec {
        Some(js) => job_spec("spec.jobTemplate.spec", js, &mut out),
        None => out.push("spec.jobTemplate.spec: Required value".into()),
    }
    out
}

fn check_name(path: &str, name: &str, out: &mut Vec<String>) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        out.push(format!(
            "{path}: Invalid value: {name:?}: a lowercase RFC 1123 name of at most 63 characters must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'my-name')"
        ));
    }
}

fn job_spec(p: &str, spec: &JobSpec, out: &mut Vec<String>) {
    for (field, value) in [
        ("completions", spec.completions),
        ("parallelism", spec.parallelism),
        ("backoffLimit", spec.backoff_limit),
        ("backoffLimitPerIndex", spec.backoff_limit_per_index),
        ("maxFailedIndexes", spec.max_failed_indexes),
    ] {
        if let Some(v) = value
            && v < 0
        {
            out.push(format!(
                "{p}.{field}: Invalid value: {v}: must be greater than or equal to 0"
            ));
        }
    }
    if let Some(d) = spec.active_deadline_seconds
        && d <= 0
    {
        out.push(format!(
            "{p}.activeDeadlineSeconds: Invalid value: {d}: must be greater than 0"
        ));
    }
    let indexed = match spec.completion_mode.as_deref() {
        None | Some("NonIndexed") => false,
        Some("Indexed") => true,
        Some(other) => {
            out.push(format!(
                "{p}.completionMode: Unsupported value: {other:?}: supported values: \"NonIndexed\", \"Indexed\""
            ));
            false
        }
    };
    if indexed && spec.completions.is_none() {
        out.push(format!(
            "{p}.completions: Required value: when completion mode is Indexed"
        ));
    }
    if spec.backoff_limit_per_index.is_some() && !indexed {
        out.push(format!(
            "{p}.backoffLimitPerIndex: Invalid value: requires indexed completion mode"
        ));
    }
    if spec.max_failed_indexes.is_some() && spec.backoff_limit_per_index.is_none() {
        out.push(format!(
            "{p}.maxFailedIndexes: Required value: when maxFailedIndexes is specified, backoffLimitPerIndex must also be specified"
        ));
    }
    if let (Some(m), Some(c)) = (spec.max_failed_indexes, spec.completions)
        && m > c
    {
        out.push(format!(
            "{p}.maxFailedIndexes: Invalid value: {m}: must be less than or equal to completions"
        ));
    }
    let pod = spec.template.spec.as_ref();
    let tp = format!("{p}.template.spec");
    let Some(pod) = pod else {
        out.push(format!("{tp}: Required value"));
        return;
    };
    let restart = pod.restart_policy.as_deref();
    match restart {
        Some("Never" | "OnFailure") => {}
        Some(other) => out.push(format!(
            "{tp}.restartPolicy: Unsupported value: {other:?}: supported values: \"OnFailure\", \"Never\""
        )),
        None => out.push(format!(
            "{tp}.restartPolicy: Required value: a Job's pods need restartPolicy \"OnFailure\" or \"Never\""
        )),
    }
    pod_spec(&tp, pod, out);
    if let Some(policy) = &spec.pod_failure_policy {
        if restart != Some("Never") {
            out.push(format!(
                "{tp}.restartPolicy: Invalid value: {:?}: only \"Never\" is supported when podFailurePolicy is specified",
                restart.unwrap_or("")
            ));
        }
        let names: Vec<&str> = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
            .map(|c| c.name.as_str())
            .collect();
        for (i, rule) in policy.rules.iter().enumerate() {
            let rp = format!("{p}.podFailurePolicy.rules[{i}]");
            match rule.action.as_str() {
                "FailJob" | "Ignore" | "Count" => {}
                "FailIndex" => {
                    if spec.backoff_limit_per_index.is_none() {
                        out.push(format!(
                            "{rp}.action: Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set"
                        ));
                    }
                }
                other => out.push(format!(
                    "{rp}.action: Unsupported value: {other:?}: supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\""
                )),
            }
            match (&rule.on_exit_codes, &rule.on_pod_conditions) {
                (Some(_), Some(_)) | (None, None) => out.push(format!(
                    "{rp}: Invalid value: specify one of onExitCodes and onPodConditions, but not both"
                )),
                (Some(codes), None) => {
                    let ep = format!("{rp}.onExitCodes");
                    if !matches!(codes.operator.as_str(), "In" | "NotIn") {
                        out.push(format!(
                            "{ep}.operator: Unsupported value: {:?}: supported values: \"In\", \"NotIn\"",
                            codes.operator
                        ));
                    }
                    if codes.values.is_empty() {
                        out.push(format!("{ep}.values: Required value"));
                    }
                    if codes.operator == "In" && codes.values.contains(&0) {
                        out.push(format!(
                            "{ep}.values: Invalid value: 0: must not be 0 for the In operator"
                        ));
                    }
                    let mut sorted = codes.values.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    if sorted.len() != codes.values.len() {
                        out.push(format!("{ep}.values: Duplicate value"));
                    }
                    if let Some(name) = &codes.container_name
                        && !names.contains(&name.as_str())
                    {
                        out.push(format!(
                            "{ep}.containerName: Invalid value: {name:?}: must be one of the container or initContainer names in the pod template"
                        ));
                    }
                }
                (None, Some(conds)) => {
                    for (j, c) in conds.iter().enumerate() {
                        if let Some(s) = &c.status
                            && !matches!(s.as_str(), "True" | "False" | "Unknown")
                        {
                            out.push(format!(
                                "{rp}.onPodConditions[{j}].status: Unsupported value: {s:?}: supported values: \"True\", \"False\", \"Unknown\""
                            ));
                        }
                    }
                }
            }
        }
    }
}

fn pod_spec(tp: &str, pod: &PodSpec, out: &mut Vec<String>) {
    if pod.containers.is_empty() {
        out.push(format!("{tp}.containers: Required value"));
    }
    let mut volumes = Vec::new();
    for (i, v) in pod.volumes.iter().flatten().enumerate() {
        volumes.push(v.name.as_str());
        let vp = format!("{tp}.volumes[{i}]");
        if v.empty_dir.is_none() && v.downward_api.is_none() {
            out.push(format!(
                "{vp}: volume {:?} cannot be provided locally: only emptyDir and downwardAPI volumes are supported by --local",
                v.name
            ));
        }
        if let Some(d) = &v.downward_api {
            for (j, item) in d.items.iter().flatten().enumerate() {
                match &item.field_ref {
                    Some(f) if supported_field_path(&f.field_path) => {}
                    Some(f) => out.push(format!(
                        "{vp}.downwardAPI.items[{j}].fieldRef.fieldPath: Unsupported value: {:?}: supported: metadata.name, metadata.namespace, metadata.uid, metadata.labels['KEY'], metadata.annotations['KEY']",
                        f.field_path
                    )),
                    None => out.push(format!(
                        "{vp}.downwardAPI.items[{j}]: only fieldRef items are supported by --local"
                    )),
                }
            }
        }
    }
    let mut seen = Vec::new();
    let groups: [(&str, &[Container]); 2] = [
        (
            "initContainers",
            pod.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", &pod.containers),
    ];
    for (group, containers) in groups {
        for (i, c) in containers.iter().enumerate() {
            let cp = format!("{tp}.{group}[{i}]");
            if seen.contains(&c.name.as_str()) {
                out.push(format!("{cp}.name: Duplicate value: {:?}", c.name));
            }
            seen.push(c.name.as_str());
            if c.restart_policy.is_some() {
                out.push(format!(
                    "{cp}.restartPolicy: not supported by --local (sidecar containers); remove it to run this Job locally"
                ));
            }
            container(&cp, c, &volumes, out);
        }
    }
}

fn container(cp: &str, c: &Container, volumes: &[&str], out: &mut Vec<String>) {
    if c.command.as_ref().is_none_or(|v| v.is_empty()) {
        out.push(format!(
            "{cp}.command: Required value: images are not pulled locally, so container {:?} must name the program to run on this machine in `command` (the image's entrypoint is unknown)",
            c.name
        ));
    }
    for (j, e) in c.env.iter().flatten().enumerate() {
        let Some(from) = &e.value_from else { continue };
        let ep = format!("{cp}.env[{j}].valueFrom");
        match &from.field_ref {
            Some(f) if supported_field_path(&f.field_path) => {}
            Some(f) => out.push(format!(
                "{ep}.fieldRef.fieldPath: Unsupported value: {:?}: supported: metadata.name, metadata.namespace, metadata.uid, metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, spec.serviceAccountName, status.podIP, status.hostIP",
                f.field_path
            )),
            None => out.push(format!(
                "{ep}: env {:?} cannot be resolved locally: only fieldRef is supported by --local (use `value:` instead)",
                e.name
            )),
        }
    }
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        out.push(format!(
            "{cp}.envFrom: not supported by --local (ConfigMaps and Secrets are not read); use env with value"
        ));
    }
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        if !volumes.contains(&m.name.as_str()) {
            out.push(format!(
                "{cp}.volumeMounts[{j}].name: Not found: {:?}",
                m.name
            ));
        }
        if !m.mount_path.starts_with('/') {
            out.push(format!(
                "{cp}.volumeMounts[{j}].mountPath: Invalid value: {:?}: must be an absolute path",
                m.mount_path
            ));
        }
    }
}

#[cfg(test)]
mod tests;
