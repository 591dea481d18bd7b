//! [`Cluster`]: a kube client bound to one namespace, and what the
//! kubectl-shaped commands ask of it (create, list, delete, logs). Every
//! error says what failed and, for the usual causes (403, 409, 404, 401, an
//! unreachable API server), what to do.

use std::sync::Arc;

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};

use super::render::Planned;
use crate::error::{Error, Result};
use crate::process::Sink;

/// A kube client bound to one namespace.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    namespace: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .finish()
    }
}
/// A kube error with what failed and a hint at the usual cause.
pub(super) fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| {
        let hint = match &source {
            kube::Error::Api(s) if s.code == 403 => {
                " (forbidden: give job-runner's user or service account the verbs of deploy/job-runner/rbac.yaml)"
            }
            kube::Error::Api(s) if s.code == 409 => {
                " (it already exists: delete it first, e.g. `job-runner delete -l workq.dev/run=<id>`, or rename it)"
            }
            kube::Error::Api(s) if s.code == 404 => " (not found: check -n/--namespace)",
            kube::Error::Api(s) if s.code == 401 => {
                " (unauthorized: the kubeconfig's credentials were refused; log in again or pick another --context)"
            }
            kube::Error::Service(_) | kube::Error::HyperError(_) => {
                " (the Kubernetes API server cannot be reached: check the kubeconfig's current context with `kubectl cluster-info`, or pick one with --context)"
            }
            kube::Error::Auth(_) => {
                " (the kubeconfig's credentials cannot be used: check its user entry, or pick another --context)"
            }
            _ => "",
        };
        Error::Kube {
            what: format!("{what}{hint}"),
            source,
        }
    }
}

impl Cluster {
    /// A cluster reached through `client`, working in `namespace`.
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        Cluster {
            client,
            namespace: namespace.into(),
        }
    }

    /// Connects as `kubectl` does: the kubeconfig (`KUBECONFIG` or
    /// `~/.kube/config`, its current context or `context`), else the
    /// in-cluster service account. `namespace` defaults to the context's.
    pub async fn connect(context: Option<&str>, namespace: Option<&str>) -> Result<Self> {
        let config = match context {
            Some(ctx) => {
                let opts = kube::config::KubeConfigOptions {
                    context: Some(ctx.to_string()),
                    ..Default::default()
                };
                kube::Config::from_kubeconfig(&opts).await.map_err(|e| {
                    Error::Cluster(format!(
                        "cannot use context {ctx:?} of the kubeconfig: {e}; list them with `kubectl config get-contexts`"
                    ))
                })?
            }
            None => kube::Config::infer().await.map_err(|e| {
                Error::Cluster(format!(
                    "no cluster to talk to ({e}); set KUBECONFIG or create ~/.kube/config (kind and k3d write it), run inside a pod, or add --local to run on this machine"
                ))
            })?,
        };
        let namespace = namespace
            .map(String::from)
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config).map_err(kube_error("creating the client"))?;
        Ok(Cluster::new(client, namespace))
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The API of one namespaced resource kind, in this namespace.
    pub(super) fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates one planned object.
    pub async fn create(&self, p: &Planned) -> Result<()> {
        let pp = PostParams::default();
        let what = format!("creating {}", p.display_name());
        match p {
            Planned::Job { job, .. } => {
                self.api::<Job>()
                    .create(&pp, job)
                    .await
                    .map_err(kube_error(what))?;
            }
            Planned::CronJob(c) => {
                self.api::<CronJob>()
                    .create(&pp, c)
                    .await
                    .map_err(kube_error(what))?;
            }
            Planned::Service(s) => {
                self.api::<Service>()
                    .create(&pp, s)
                    .await
                    .map_err(kube_error(what))?;
            }
        }
        Ok(())
    }

    /// The Jobs matching a label selector (`get jobs -l`).
    pub async fn get_jobs(&self, selector: &str) -> Result<Vec<Job>> {
        let list = self
            .api::<Job>()
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(kube_error("listing jobs"))?;
        Ok(list.items)
    }

    /// Deletes the Jobs, CronJobs and Services matching a label selector,
    /// with background propagation (as `kubectl delete` does: the Jobs'
    /// pods are deleted by the garbage collector). Returns what was deleted,
    /// as `kind.group/name`.
    pub async fn delete(&self, selector: &str) -> Result<Vec<String>> {
        let lp = ListParams::default().labels(selector);
        let dp = DeleteParams::background();
        let mut out = Vec::new();
        let jobs = self.api::<Job>();
        for j in jobs.list(&lp).await.map_err(kube_error("listing jobs"))? {
            let name = j.metadata.name.unwrap_or_default();
            jobs.delete(&name, &dp)
                .await
                .map_err(kube_error(format!("deleting job.batch/{name}")))?;
            out.push(format!("job.batch/{name}"));
        }
        let crons = self.api::<CronJob>();
        for c in crons
            .list(&lp)
            .await
            .map_err(kube_error("listing cronjobs"))?
        {
            let name = c.metadata.name.unwrap_or_default();
            crons
                .delete(&name, &dp)
                .await
                .map_err(kube_error(format!("deleting cronjob.batch/{name}")))?;
            out.push(format!("cronjob.batch/{name}"));
        }
        let services = self.api::<Service>();
        for s in services
            .list(&lp)
            .await
            .map_err(kube_error("listing services"))?
        {
            let name = s.metadata.name.unwrap_or_default();
            services
                .delete(&name, &dp)
                .await
                .map_err(kube_error(format!("deleting service/{name}")))?;
            out.push(format!("service/{name}"));
        }
        Ok(out)
    }

    /// Prints the logs of every container of the pods matching a selector,
    /// each line prefixed `pod/NAME/CONTAINER` (`kubectl logs -l … --prefix`);
    /// with `follow`, streams them until the containers end. Returns the
    /// number of pods.
    pub async fn logs(&self, selector: &str, follow: bool, sink: Arc<dyn Sink>) -> Result<usize> {
        let pods = self
            .api::<Pod>()
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(kube_error("listing pods"))?;
        let mut tasks = Vec::new();
        let n = pods.items.len();
        for p in pods.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            for c in p.spec.map(|s| s.containers).unwrap_or_default() {
                let prefix = format!("pod/{name}/{}", c.name);
                if follow {
                    tasks.push(tokio::spawn(follow_log(
                        self.api::<Pod>(),
                        name.clone(),
                        c.name.clone(),
                        prefix,
                        sink.clone(),
                    )));
                } else {
                    let lp = LogParams {
                        container: Some(c.name.clone()),
                        ..Default::default()
                    };
                    let text = self
                        .api::<Pod>()
                        .logs(&name, &lp)
                        .await
                        .map_err(kube_error(format!("reading the log of {prefix}")))?;
                    for line in text.lines() {
                        sink.line(&prefix, line);
                    }
                }
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(n)
    }
}
/// Streams one container's log into `sink`, each line prefixed `prefix`,
/// until the container ends.
pub(super) async fn follow_log(
    api: Api<Pod>,
    pod: String,
    container: String,
    prefix: String,
    sink: Arc<dyn Sink>,
) {
    let lp = LogParams {
        container: Some(container),
        follow: true,
        ..Default::default()
    };
    match api.log_stream(&pod, &lp).await {
        Ok(reader) => {
            let mut lines = reader.lines();
            while let Some(Ok(line)) = lines.next().await {
                sink.line(&prefix, &line);
            }
        }
        Err(e) => sink.line(&prefix, &format!("(cannot stream the log: {e})")),
    }
}
