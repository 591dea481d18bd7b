//! A Job's pod template made concrete for one pod: its name, labels,
//! annotations, hostname, each container's program, arguments and
//! environment, and its volumes, as the Job controller and the kubelet would
//! fill them in.
//!
//! Containers do not inherit the runner's environment, as in Kubernetes,
//! except for what a program on this host needs to start: `PATH`, `HOME`,
//! `USER`, `LANG`, `LC_ALL`, `TERM`, `TZ` and `TMPDIR`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, EnvVar};

use crate::validate::keys;

/// Characters of generated name suffixes (Kubernetes' alphabet: no vowels,
/// no look-alikes).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Host variables a container inherits.
const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "TERM", "TZ", "TMPDIR",
];

/// `n` random characters from Kubernetes' name alphabet.
pub fn random_suffix(n: usize) -> String {
    let mut out = String::new();
    while out.len() < n {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if out.len() < n {
                out.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
            }
        }
    }
    out
}

/// A volume of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeKind {
    /// An empty directory for the pod's lifetime.
    EmptyDir,
    /// Files holding downward-API values: (relative path, content).
    DownwardApi(Vec<(String, String)>),
}

/// A named volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePlan {
    /// The volume's name.
    pub name: String,
    /// What it holds.
    pub kind: VolumeKind,
}

/// One container made concrete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// The container's name.
    pub name: String,
    /// The image named in the manifest (not pulled).
    pub image: String,
    /// Program and arguments, `$(VAR)` references expanded.
    pub argv: Vec<String>,
    /// The environment, in order.
    pub env: Vec<(String, String)>,
    /// `workingDir`.
    pub working_dir: Option<String>,
    /// (volume name, mount path, read-only).
    pub mounts: Vec<(String, String, bool)>,
}

/// One pod made concrete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// The pod's name (`<job>-<random>`, or `<job>-<index>-<random>`).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its uid.
    pub uid: String,
    /// The owning Job's name.
    pub job: String,
    /// Its completion index (Indexed Jobs).
    pub index: Option<u32>,
    /// Its hostname (`<job>-<index>` for Indexed Jobs, else the pod name).
    pub hostname: String,
    /// `spec.subdomain`.
    pub subdomain: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Init containers, run in order.
    pub init_containers: Vec<ContainerPlan>,
    /// Containers, run together.
    pub containers: Vec<ContainerPlan>,
    /// Volumes.
    pub volumes: Vec<VolumePlan>,
    /// `terminationGracePeriodSeconds` (default 30 s).
    pub grace: Duration,
    /// `restartPolicy: OnFailure`.
    pub restart_on_failure: bool,
    /// The pod's own `activeDeadlineSeconds`: past it the kubelet kills the
    /// pod, which fails with reason `DeadlineExceeded`.
    pub active_deadline: Option<Duration>,
}

impl PodPlan {
    /// Makes pod `index` of `job` (whose uid is `job_uid`), adding `extra_env`
    /// to every container (before the container's own `env`) and
    /// `extra_annotations` (the controller's, e.g. the index failure count).
    pub fn new(
        job: &Job,
        job_uid: &str,
        index: Option<u32>,
        extra_env: &[(String, String)],
        extra_annotations: &[(String, String)],
    ) -> Self {
        let job_name = job.metadata.name.clone().unwrap_or_default();
        let namespace = job
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let spec = job.spec.clone().unwrap_or_default();
        let template = spec.template;
        let pod_spec = template.spec.unwrap_or_default();
        let meta = template.metadata.unwrap_or_default();
        let suffix = random_suffix(5);
        let name = match index {
            Some(i) => format!("{job_name}-{i}-{suffix}"),
            None => format!("{job_name}-{suffix}"),
        };
        let hostname = pod_spec.hostname.clone().unwrap_or_else(|| match index {
            Some(i) => format!("{job_name}-{i}"),
            None => name.clone(),
        });
        let mut labels = meta.labels.unwrap_or_default();
        for (k, v) in [
            (keys::CONTROLLER_UID, job_uid),
            (keys::BATCH_CONTROLLER_UID, job_uid),
            (keys::JOB_NAME, job_name.as_str()),
            (keys::BATCH_JOB_NAME, job_name.as_str()),
        ] {
            labels.insert(k.to_string(), v.to_string());
        }
        let mut annotations = meta.annotations.unwrap_or_default();
        if let Some(i) = index {
            labels.insert(keys::COMPLETION_INDEX.into(), i.to_string());
            annotations.insert(keys::COMPLETION_INDEX.into(), i.to_string());
        }
        for (k, v) in extra_annotations {
            annotations.insert(k.clone(), v.clone());
        }
        let uid = uuid::Uuid::new_v4().to_string();
        let mut plan = PodPlan {
            name,
            namespace,
            uid,
            job: job_name,
            index,
            hostname,
            subdomain: pod_spec.subdomain.clone(),
            labels,
            annotations,
            init_containers: Vec::new(),
            containers: Vec::new(),
            volumes: Vec::new(),
            grace: Duration::from_secs(
                u64::try_from(pod_spec.termination_grace_period_seconds.unwrap_or(30))
                    .unwrap_or(30),
            ),
            restart_on_failure: pod_spec.restart_policy.as_deref() == Some("OnFailure"),
            active_deadline: pod_spec
                .active_deadline_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
        };
        let mut base_env: Vec<(String, String)> = INHERITED_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        base_env.push(("HOSTNAME".into(), plan.hostname.clone()));
        for (k, v) in extra_env {
            base_env.retain(|(name, _)| name != k);
            base_env.push((k.clone(), v.clone()));
        }
        if let Some(i) = index {
            base_env.push(("JOB_COMPLETION_INDEX".into(), i.to_string()));
        }
        plan.init_containers = pod_spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| plan.container(c, &base_env))
            .collect();
        plan.containers = pod_spec
            .containers
            .iter()
            .map(|c| plan.container(c, &base_env))
            .collect();
        plan.volumes = pod_spec
            .volumes
            .iter()
            .flatten()
            .map(|v| VolumePlan {
                name: v.name.clone(),
                kind: match &v.downward_api {
                    Some(d) => VolumeKind::DownwardApi(
                        d.items
                            .iter()
                            .flatten()
                            .map(|item| {
                                let value = item
                                    .field_ref
                                    .as_ref()
                                    .map(|f| plan.field(&f.field_path))
                                    .unwrap_or_default();
                                (item.path.clone(), value)
                            })
                            .collect(),
                    ),
                    None => VolumeKind::EmptyDir,
                },
            })
            .collect();
        plan
    }

    /// Every container, init containers first.
    pub fn all_containers(&self) -> impl Iterator<Item = &ContainerPlan> {
        self.init_containers.iter().chain(&self.containers)
    }

    /// Whether the pod needs its own mount and UTS namespace: volumes mounted
    /// at their paths, or a hostname other pods resolve.
    pub fn needs_sandbox(&self) -> bool {
        self.subdomain.is_some() || self.all_containers().any(|c| !c.mounts.is_empty())
    }

    /// The value of a downward-API field path.
    pub fn field(&self, path: &str) -> String {
        let map_entry = |prefix: &str, map: &BTreeMap<String, String>| {
            path.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix("']"))
                .and_then(|key| map.get(key).cloned())
                .unwrap_or_default()
        };
        let all = |map: &BTreeMap<String, String>| {
            map.iter()
                .map(|(k, v)| format!("{k}=\"{v}\"\n"))
                .collect::<String>()
        };
        match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            "metadata.uid" => self.uid.clone(),
            "metadata.labels" => all(&self.labels),
            "metadata.annotations" => all(&self.annotations),
            "spec.nodeName" => "localhost".into(),
            "spec.serviceAccountName" => "default".into(),
            "status.podIP" | "status.hostIP" | "status.podIPs" => "127.0.0.1".into(),
            p if p.starts_with("metadata.labels['") => map_entry("metadata.labels['", &self.labels),
            p if p.starts_with("metadata.annotations['") => {
                map_entry("metadata.annotations['", &self.annotations)
            }
            _ => String::new(),
        }
    }

    fn container(&self, c: &Container, base: &[(String, String)]) -> ContainerPlan {
        let mut env: Vec<(String, String)> = base.to_vec();
        for EnvVar {
            name,
            value,
            value_from,
        } in c.env.iter().flatten()
        {
            let v = match (value, value_from) {
                (Some(v), _) => expand_refs(v, &env),
                (None, Some(from)) => from
                    .field_ref
                    .as_ref()
                    .map(|f| self.field(&f.field_path))
                    .unwrap_or_default(),
                (None, None) => String::new(),
            };
            env.retain(|(k, _)| k != name);
            env.push((name.clone(), v));
        }
        let argv = c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .map(|a| expand_refs(a, &env))
            .collect();
        ContainerPlan {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_else(|| "<none>".into()),
            argv,
            env,
            working_dir: c.working_dir.clone(),
            mounts: c
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| {
                    (
                        m.name.clone(),
                        m.mount_path.clone(),
                        m.read_only.unwrap_or(false),
                    )
                })
                .collect(),
        }
    }
}

/// Expands `$(VAR)` references as the kubelet does: a defined variable is
/// replaced, an undefined one is left as written, `$$` is a literal `$`.
pub fn expand_refs(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[pos..pos + 2 + end + 1]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
