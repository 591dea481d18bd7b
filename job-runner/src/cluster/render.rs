//! What `job-runner run -f FILE` creates on a cluster, computed without a
//! cluster: the manifests' objects labelled with the run's id and, for
//! work-queue Jobs, the `wq` wrapper injected. `job-runner render` prints
//! exactly this.
//!
//! # The injection
//!
//! For a Job annotated `workq.dev/queue` (unless `--no-inject`):
//!
//! - a volume `workq-bin` (`emptyDir`), mounted at `/workq/bin`;
//! - a first init container `workq-wrapper` (the wrapper image) running
//!   `cp /usr/local/bin/wq /workq/bin/wq`, with a security context that Pod
//!   Security `restricted` accepts (non-root uid 65532, no privilege
//!   escalation, no capabilities, read-only root, `RuntimeDefault` seccomp);
//! - the first container's command becomes
//!   `/workq/bin/wq consume [-c 1] -- <its command>` (its `args` unchanged, so
//!   they follow the original command); `-c 1` for `workq.dev/pattern:
//!   coarse`. A command that already runs `wq consume` only gets the path
//!   of the injected binary;
//! - `WQ_URL` (annotation `workq.dev/queue-url`, else `--pod-queue-url`) and
//!   `WQ_QUEUE` in its environment, and the label `workq.dev/worker: "true"`
//!   on its pods (what `deploy/`'s NetworkPolicy admits);
//! - for a secured queue service (a `grpcs://` URL, or `--pod-token`): a
//!   projected ServiceAccount token volume `workq-token` (audience
//!   `--pod-token-audience`, default `workq`; one hour, rotated by the kubelet)
//!   mounted read-only at `/var/run/secrets/workq/` and `WQ_TOKEN_FILE`
//!   pointing at it; with `--pod-ca-configmap NAME` (or `--pod-ca-secret`), the
//!   CA bundle's `ca.crt` as volume `workq-ca` at `/var/run/secrets/workq-ca/`
//!   and `WQ_CA_FILE`. The queue service checks the token against the
//!   cluster's keys and grants by the pod's ServiceAccount
//!   (`system:serviceaccount:<namespace>:<name>`).
//!
//! A coarse Job with `completions` unset gets the number of its items; a
//! run sets it to the number of items in the sealed queue, which is the same
//! for a new queue (see [`crate::queue::fill_and_seal`]).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, SeccompProfile, SecurityContext,
    Service, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::error::{Error, Result};
use crate::manifest::{Loaded, Object};
use crate::queue::{self, PATTERN};

/// The label on everything a run creates: `workq.dev/run=<id>`.
pub const RUN_LABEL: &str = "workq.dev/run";
/// The annotation naming the queue service's URL as pods reach it.
pub const QUEUE_URL: &str = "workq.dev/queue-url";
/// The wrapper image by default (busybox with a static `/usr/local/bin/wq`).
pub const DEFAULT_WRAPPER_IMAGE: &str = "workq/wq:0.1.0";
/// The queue service's URL inside the cluster, as `deploy/` installs it.
pub const DEFAULT_POD_QUEUE_URL: &str = "grpc://workq.workq.svc:50051";
/// The name of the injected `emptyDir` volume.
pub const WRAPPER_VOLUME: &str = "workq-bin";
/// Where the injected volume is mounted.
pub const WRAPPER_DIR: &str = "/workq/bin";
/// The name of the injected init container.
pub const WRAPPER_CONTAINER: &str = "workq-wrapper";

/// How to render.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The run's id, the value of the `workq.dev/run` label.
    pub run_id: String,
    /// The image of the injected init container.
    pub wrapper_image: String,
    /// `WQ_URL` for pods whose Job has no `workq.dev/queue-url` annotation.
    pub pod_queue_url: String,
    /// Inject the wrapper into work-queue Jobs (`--no-inject` turns it off).
    pub inject: bool,
    /// Mount a projected ServiceAccount token into work-queue pods even when
    /// their URL is plain `grpc://` (`--pod-token`; a `grpcs://` URL always
    /// gets one).
    pub pod_token: bool,
    /// The audience of the projected token (`--pod-token-audience`): what the
    /// queue service's `--auth-audience` expects.
    pub token_audience: String,
    /// The CA bundle work-queue pods trust (`--pod-ca-configmap`,
    /// `--pod-ca-secret`): its key `ca.crt` is mounted and named by `WQ_CA_FILE`.
    pub ca_bundle: Option<CaBundle>,
}

/// Where the CA bundle of the queue service's certificate lives in the Jobs'
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaBundle {
    /// A ConfigMap (e.g. one trust-manager writes), key `ca.crt`.
    ConfigMap(String),
    /// A Secret (e.g. cert-manager's, copied), key `ca.crt`.
    Secret(String),
}

/// The label on the pods of injected work-queue Jobs (value `"true"`): the
/// pods `deploy/`'s NetworkPolicy lets reach the queue service.
pub const WORKER_LABEL: &str = "workq.dev/worker";

/// The name of the injected projected-token volume.
pub const TOKEN_VOLUME: &str = "workq-token";
/// Where the projected token is mounted (the SDK's default token file is
/// `token` in it).
pub const TOKEN_DIR: &str = "/var/run/secrets/workq";
/// The name of the injected CA volume.
pub const CA_VOLUME: &str = "workq-ca";
/// Where the CA bundle is mounted.
pub const CA_DIR: &str = "/var/run/secrets/workq-ca";
/// The projected token's audience by default.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "workq";
/// How long a projected token lives (the kubelet rotates it at 80%).
pub const TOKEN_SECONDS: i64 = 3600;

impl RenderOptions {
    /// The defaults, with this run id.
    pub fn new(run_id: impl Into<String>) -> Self {
        RenderOptions {
            run_id: run_id.into(),
            wrapper_image: DEFAULT_WRAPPER_IMAGE.into(),
            pod_queue_url: DEFAULT_POD_QUEUE_URL.into(),
            inject: true,
            pod_token: false,
            token_audience: DEFAULT_TOKEN_AUDIENCE.into(),
            ca_bundle: None,
        }
    }
}

/// A new run id: 8 characters of Kubernetes' name alphabet.
pub fn new_run_id() -> String {
    crate::pod::random_suffix(8)
}

/// The queue of a work-queue Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePlan {
    /// The queue's name (`workq.dev/queue`).
    pub name: String,
    /// Items to push and seal (`None`: the queue is filled by someone else).
    pub items: Option<Vec<String>>,
    /// `workq.dev/pattern: coarse`.
    pub coarse: bool,
    /// `completions` was unset: the run sets it to the sealed queue's size.
    pub completions_from_queue: bool,
    /// The URL pods use (`WQ_URL`).
    pub pod_url: String,
}

/// One object to create.
#[derive(Debug, Clone)]
pub enum Planned {
    /// A Job, and its queue for work-queue Jobs.
    Job {
        /// The Job as it will be created.
        job: Box<Job>,
        /// Its queue.
        queue: Option<QueuePlan>,
    },
    /// A CronJob, created as a CronJob.
    CronJob(Box<CronJob>),
    /// A Service (the headless Services of pod-to-pod Jobs).
    Service(Box<Service>),
}

impl Planned {
    /// `kind.group/name`, as kubectl prints it (`job.batch/job-wq-1`).
    pub fn display_name(&self) -> String {
        match self {
            Planned::Job { job, .. } => format!("job.batch/{}", name_of(&job.metadata)),
            Planned::CronJob(c) => format!("cronjob.batch/{}", name_of(&c.metadata)),
            Planned::Service(s) => format!("service/{}", name_of(&s.metadata)),
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Planned::Job { job, .. } => &job.metadata,
            Planned::CronJob(c) => &c.metadata,
            Planned::Service(s) => &s.metadata,
        }
    }

    /// The object as JSON (with `apiVersion` and `kind`).
    pub fn to_value(&self) -> serde_json::Value {
        let v = match self {
            Planned::Job { job, .. } => serde_json::to_value(job),
            Planned::CronJob(c) => serde_json::to_value(c),
            Planned::Service(s) => serde_json::to_value(s),
        };
        v.unwrap_or_default()
    }
}

pub(crate) fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

fn add_label(meta: &mut ObjectMeta, run_id: &str) {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(RUN_LABEL.into(), run_id.into());
}

/// Computes every object a run creates, in input order.
pub fn plan(loaded: &Loaded, opts: &RenderOptions) -> Result<Vec<Planned>> {
    let mut out = Vec::new();
    for m in &loaded.manifests {
        match &m.object {
            Object::Service(s) => {
                let mut s = (**s).clone();
                add_label(&mut s.metadata, &opts.run_id);
                out.push(Planned::Service(Box::new(s)));
            }
            Object::CronJob(c) => {
                let mut c = (**c).clone();
                add_label(&mut c.metadata, &opts.run_id);
                if let Some(spec) = c.spec.as_mut() {
                    let jt = &mut spec.job_template;
                    add_label(
                        jt.metadata.get_or_insert_with(Default::default),
                        &opts.run_id,
                    );
                    if let Some(js) = jt.spec.as_mut() {
                        add_label(
                            js.template.metadata.get_or_insert_with(Default::default),
                            &opts.run_id,
                        );
                    }
                }
                out.push(Planned::CronJob(Box::new(c)));
            }
            Object::Job(j) => {
                let (job, queue) = plan_job(j, &m.origin.dir, opts)?;
                out.push(Planned::Job {
                    job: Box::new(job),
                    queue,
                });
            }
        }
    }
    Ok(out)
}

fn plan_job(job: &Job, dir: &Path, opts: &RenderOptions) -> Result<(Job, Option<QueuePlan>)> {
    let mut job = job.clone();
    add_label(&mut job.metadata, &opts.run_id);
    if let Some(spec) = job.spec.as_mut() {
        add_label(
            spec.template.metadata.get_or_insert_with(Default::default),
            &opts.run_id,
        );
    }
    let Some((name, items)) = queue::items(&job, dir)? else {
        return Ok((job, None));
    };
    let pod_url = queue::annotation(&job, QUEUE_URL)
        .unwrap_or(&opts.pod_queue_url)
        .to_string();
    let coarse = queue::annotation(&job, PATTERN) == Some("coarse");
    let completions_from_queue = queue::completions_from_queue(&job);
    if completions_from_queue
        && let Some(items) = &items
        && let Some(spec) = job.spec.as_mut()
    {
        // What the run will set on a new queue; the sealed queue's size
        // decides (`queue::fill_and_seal`).
        spec.completions = Some(i32::try_from(items.len()).unwrap_or(i32::MAX));
    }
    if opts.inject {
        inject(&mut job, &name, &pod_url, coarse, &opts.wrapper_image)?;
        let token = (opts.pod_token || pod_url.starts_with("grpcs://"))
            .then_some(opts.token_audience.as_str());
        inject_credentials(&mut job, token, opts.ca_bundle.as_ref())?;
    }
    Ok((
        job,
        Some(QueuePlan {
            name,
            items,
            coarse,
            completions_from_queue,
            pod_url,
        }),
    ))
}

fn set_env(c: &mut Container, name: &str, value: &str) {
    let env = c.env.get_or_insert_with(Vec::new);
    env.retain(|e| e.name != name);
    env.push(EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    });
}

/// Rewrites a work-queue Job's pod template so that an unchanged image
/// works the queue (see the module docs).
pub fn inject(job: &mut Job, queue: &str, pod_url: &str, coarse: bool, image: &str) -> Result<()> {
    let job_name = name_of(&job.metadata).to_string();
    let invalid = |msg: String| Error::Invalid {
        origin: format!("Job/{job_name}"),
        problems: vec![msg],
    };
    if let Some(spec) = job.spec.as_mut() {
        // What deploy/'s NetworkPolicy lets reach the queue service.
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(WORKER_LABEL.into(), "true".into());
    }
    let pod = job
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .ok_or_else(|| invalid("spec.template.spec: Required value".into()))?;
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    if volumes.iter().any(|v| v.name == WRAPPER_VOLUME) {
        return Err(invalid(format!(
            "spec.template.spec.volumes: the name {WRAPPER_VOLUME:?} is taken by the wq wrapper; rename the volume, or pass --no-inject"
        )));
    }
    volumes.push(Volume {
        name: WRAPPER_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    let mount = VolumeMount {
        name: WRAPPER_VOLUME.into(),
        mount_path: WRAPPER_DIR.into(),
        ..Default::default()
    };
    let wq = format!("{WRAPPER_DIR}/wq");
    let c = pod.containers.first_mut().ok_or_else(|| {
        invalid(
            "spec.template.spec.containers: Required value: one container works the queue".into(),
        )
    })?;
    let Some(command) = c.command.clone().filter(|c| !c.is_empty()) else {
        return Err(invalid(format!(
            "spec.template.spec.containers[0].command: Required value: the wq wrapper runs the container's program, and an image's ENTRYPOINT cannot be seen from the manifest; set command (e.g. command: [\"/app/worker\"]), or pass --no-inject when the image runs wq or the SDK itself (container {:?})",
            c.name
        )));
    };
    let already = Path::new(&command[0])
        .file_name()
        .is_some_and(|n| n == "wq")
        && command.get(1).is_some_and(|a| a == "consume");
    c.command = Some(if already {
        let mut v = command;
        v[0] = wq.clone();
        v
    } else {
        let mut v = vec![wq.clone(), "consume".into()];
        if coarse {
            v.extend(["-c".into(), "1".into()]);
        }
        v.push("--".into());
        v.extend(command);
        v
    });
    set_env(c, "WQ_URL", pod_url);
    set_env(c, "WQ_QUEUE", queue);
    c.volume_mounts
        .get_or_insert_with(Vec::new)
        .push(mount.clone());
    pod.init_containers.get_or_insert_with(Vec::new).insert(
        0,
        Container {
            name: WRAPPER_CONTAINER.into(),
            image: Some(image.into()),
            command: Some(vec!["cp".into(), "/usr/local/bin/wq".into(), wq]),
            volume_mounts: Some(vec![mount]),
            security_context: Some(wrapper_security_context()),
            ..Default::default()
        },
    );
    Ok(())
}

/// Gives a work-queue Job's pods their credentials for a secured queue
/// service: a projected ServiceAccount token of `audience` (when given) and
/// the CA bundle (when given), mounted read-only into the first container,
/// with `WQ_TOKEN_FILE` and `WQ_CA_FILE` naming them.
pub fn inject_credentials(
    job: &mut Job,
    audience: Option<&str>,
    ca: Option<&CaBundle>,
) -> Result<()> {
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, KeyToPath, ProjectedVolumeSource, SecretVolumeSource,
        ServiceAccountTokenProjection, VolumeProjection,
    };
    if audience.is_none() && ca.is_none() {
        return Ok(());
    }
    let job_name = name_of(&job.metadata).to_string();
    let invalid = |msg: String| Error::Invalid {
        origin: format!("Job/{job_name}"),
        problems: vec![msg],
    };
    let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
        return Err(invalid("spec.template.spec: Required value".into()));
    };
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    for taken in [TOKEN_VOLUME, CA_VOLUME] {
        if volumes.iter().any(|v| v.name == taken) {
            return Err(invalid(format!(
                "spec.template.spec.volumes: the name {taken:?} is taken by the injected credentials; rename the volume, or pass --no-inject"
            )));
        }
    }
    let mut mounts = Vec::new();
    let mut env = Vec::new();
    if let Some(audience) = audience {
        volumes.push(Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(audience.into()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        env.push(("WQ_TOKEN_FILE", format!("{TOKEN_DIR}/token")));
    }
    if let Some(ca) = ca {
        let items = Some(vec![KeyToPath {
            key: "ca.crt".into(),
            path: "ca.crt".into(),
            ..Default::default()
        }]);
        volumes.push(Volume {
            name: CA_VOLUME.into(),
            config_map: match ca {
                CaBundle::ConfigMap(name) => Some(ConfigMapVolumeSource {
                    name: name.clone(),
                    items: items.clone(),
                    ..Default::default()
                }),
                CaBundle::Secret(_) => None,
            },
            secret: match ca {
                CaBundle::Secret(name) => Some(SecretVolumeSource {
                    secret_name: Some(name.clone()),
                    items,
                    ..Default::default()
                }),
                CaBundle::ConfigMap(_) => None,
            },
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: CA_VOLUME.into(),
            mount_path: CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        env.push(("WQ_CA_FILE", format!("{CA_DIR}/ca.crt")));
    }
    let Some(c) = pod.containers.first_mut() else {
        return Err(invalid(
            "spec.template.spec.containers: Required value: one container works the queue".into(),
        ));
    };
    for (name, value) in env {
        set_env(c, name, &value);
    }
    c.volume_mounts.get_or_insert_with(Vec::new).extend(mounts);
    Ok(())
}

/// The injected init container's security context: what Pod Security
/// `restricted` asks of a container, so that the wrapper is never the reason
/// a pod is refused (it only copies a file into the `emptyDir`, which any
/// user may write).
fn wrapper_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The planned objects as a multi-document YAML stream (what `render`
/// prints).
pub fn to_yaml(planned: &[Planned]) -> Result<String> {
    let mut out = String::new();
    for (i, p) in planned.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let text = serde_saphyr::to_string(&p.to_value()).map_err(|e| Error::Yaml {
            source_name: p.display_name(),
            message: e.to_string(),
        })?;
        out.push_str(&text);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
