//! KEDA's external scaler (`externalscaler.ExternalScaler`), served on the
//! gRPC port: KEDA asks how many items a queue holds, exactly, and scales a
//! ScaledJob or ScaledObject on the answer (docs/keda.md).
//!
//! A trigger's metadata names the queue and what to count:
//! - `queue` (required): the queue's name;
//! - `count`: `pending+leased` (the default: items ready for a worker and
//!   items workers hold) or `pending` (ready items only); which to pick
//!   depends on what KEDA subtracts (docs/keda.md): `pending+leased` for a
//!   ScaledObject and ScaledJob's `default` strategy, `pending` for
//!   ScaledJob's `accurate` strategy;
//! - `target`: items per pod (default 1).
//!
//! `IsActive` answers whether the count is above zero; `StreamIsActive`
//! sends that answer at once and again each time it flips, following the
//! queue's watch (no polling); `GetMetrics` answers the count itself.
//!
//! # Authorization
//! With authentication on, each call needs `read` on its queue, from the
//! caller the rest of the gRPC port knows: an `authorization: Bearer`
//! header or a client certificate; or, since KEDA's external scaler sends
//! only the trigger's metadata, a bearer token in the metadata entry
//! [`TOKEN_KEY`].

use crate::auth::{Auth, Caller, Verb};
use crate::backend::Backend;
use crate::engine::QueueInfo;
use crate::grpc::{invalid_field, status};
use crate::names::QueueName;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use workq_proto::externalscaler as pb;
use workq_proto::externalscaler::external_scaler_server::{ExternalScaler, ExternalScalerServer};

/// The metadata entry that may carry a bearer token.
pub const TOKEN_KEY: &str = "token";

/// The default of `target`: one item per pod.
pub const DEFAULT_TARGET: i64 = 1;

/// What a trigger counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Items ready for a worker (`pending`): for ScaledJob's `accurate`
    /// strategy, which expects a count without the items in flight and
    /// subtracts only the Jobs not yet running.
    Pending,
    /// Items ready or held by a worker (`pending+leased`, the default): for
    /// a ScaledObject (the HPA sizes the whole Deployment, busy pods
    /// included) and ScaledJob's `default` strategy (which subtracts every
    /// running Job).
    PendingLeased,
}

impl Count {
    /// The names the `count` entry takes.
    pub const NAMES: [&'static str; 2] = ["pending", "pending+leased"];

    fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Count::Pending),
            "pending+leased" => Some(Count::PendingLeased),
            _ => None,
        }
    }

    /// The count of a queue's items.
    pub fn of(self, info: &QueueInfo) -> u64 {
        let c = &info.counters;
        match self {
            Count::Pending => c.pending,
            Count::PendingLeased => c.pending + c.leased,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Count::Pending => "pending",
            Count::PendingLeased => "pending-leased",
        }
    }
}

/// One trigger's metadata, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// The queue.
    pub queue: QueueName,
    /// What to count.
    pub count: Count,
    /// Items per pod.
    pub target: i64,
}

impl Trigger {
    /// Parses a trigger's metadata; INVALID_ARGUMENT naming the entry at
    /// fault and the fix.
    pub fn parse(meta: &HashMap<String, String>) -> Result<Self, Status> {
        let field = |k: &str| format!("scalerMetadata.{k}");
        let queue = match meta.get("queue").map(|s| s.trim()) {
            None | Some("") => {
                return Err(invalid_field(
                    &field("queue"),
                    "the trigger's metadata names no queue: add `queue: <name>` to the \
                     external scaler trigger's metadata",
                ));
            }
            Some(q) => q.parse::<QueueName>().map_err(|e| {
                invalid_field(&field("queue"), format!("metadata `queue`: {}", e.0))
            })?,
        };
        let count = match meta.get("count").map(|s| s.trim()) {
            None | Some("") => Count::PendingLeased,
            Some(c) => Count::parse(c).ok_or_else(|| {
                invalid_field(
                    &field("count"),
                    format!(
                        "metadata `count` is {c:?}: use `pending+leased` (ScaledObject, \
                         ScaledJob's default strategy) or `pending` (ScaledJob's accurate strategy)"
                    ),
                )
            })?,
        };
        let target = match meta.get("target").map(|s| s.trim()) {
            None | Some("") => DEFAULT_TARGET,
            Some(t) => t.parse::<i64>().ok().filter(|t| *t >= 1).ok_or_else(|| {
                invalid_field(
                    &field("target"),
                    format!(
                        "metadata `target` is {t:?}: give the items one pod should take, \
                         a whole number of 1 or more"
                    ),
                )
            })?,
        };
        Ok(Trigger {
            queue,
            count,
            target,
        })
    }

    /// The metric's name: `workq-<queue>-<count>`.
    pub fn metric_name(&self) -> String {
        format!("workq-{}-{}", self.queue, self.count.label())
    }
}

/// The external scaler over the server's [`Backend`].
#[derive(Debug, Clone)]
pub struct KedaScaler {
    engine: Backend,
    auth: Option<Arc<Auth>>,
}

/// The service to add to the gRPC server.
pub fn service(
    engine: impl Into<Backend>,
    auth: Option<Arc<Auth>>,
) -> ExternalScalerServer<KedaScaler> {
    ExternalScalerServer::new(KedaScaler {
        engine: engine.into(),
        auth,
    })
}

/// The queue's description now (the one engine read this module makes).
async fn queue_info(engine: &Backend, name: &QueueName) -> Result<QueueInfo, Status> {
    engine.get_queue(name).await.map_err(status)
}

impl KedaScaler {
    /// Parses the trigger and checks that the caller may read its queue.
    fn admit<T>(
        &self,
        req: &Request<T>,
        meta: &HashMap<String, String>,
    ) -> Result<Trigger, Status> {
        if let Some(err) = self.engine.failure() {
            return Err(status(crate::Error::Store(err)));
        }
        let caller = self.caller(req, meta)?;
        let trigger = Trigger::parse(meta)?;
        if let Some(c) = caller {
            c.check(Verb::Read, trigger.queue.as_str())?;
        }
        Ok(trigger)
    }

    /// Who calls: `None` with authentication off.
    fn caller<T>(
        &self,
        req: &Request<T>,
        meta: &HashMap<String, String>,
    ) -> Result<Option<Caller>, Status> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let header = req.metadata().get("authorization").is_some();
        match meta.get(TOKEN_KEY).map(|t| t.trim()) {
            Some(token) if !header && !token.is_empty() => {
                let bearer = format!("Bearer {token}");
                let peer = req
                    .extensions()
                    .get::<crate::server::ConnInfo>()
                    .map(|c| &c.peer);
                auth.authenticate(Some(bearer.as_bytes()), peer).map(Some)
            }
            _ => auth.authenticate_request(req).map(Some),
        }
    }
}

type Stream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::IsActiveResponse, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl ExternalScaler for KedaScaler {
    async fn is_active(
        &self,
        req: Request<pb::ScaledObjectRef>,
    ) -> Result<Response<pb::IsActiveResponse>, Status> {
        let t = self.admit(&req, &req.get_ref().scaler_metadata)?;
        let info = queue_info(&self.engine, &t.queue).await?;
        Ok(Response::new(pb::IsActiveResponse {
            result: t.count.of(&info) > 0,
        }))
    }

    type StreamIsActiveStream = Stream;

    async fn stream_is_active(
        &self,
        req: Request<pb::ScaledObjectRef>,
    ) -> Result<Response<Stream>, Status> {
        let t = self.admit(&req, &req.get_ref().scaler_metadata)?;
        let rx = self.engine.watch(&t.queue).await.map_err(status)?;
        let engine = self.engine.clone();
        // State: the receiver and the answer last sent (`None`: none yet).
        let stream = futures::stream::unfold((rx, None::<bool>), move |(mut rx, last)| {
            let engine = engine.clone();
            async move {
                loop {
                    if last.is_some() {
                        tokio::select! {
                            changed = rx.changed() => changed.ok()?,
                            () = engine.stopping() => return None,
                        }
                    }
                    // A deleted queue ends the stream (KEDA calls again).
                    let active = t.count.of(rx.borrow_and_update().as_ref()?) > 0;
                    if last != Some(active) {
                        let msg = pb::IsActiveResponse { result: active };
                        return Some((Ok(msg), (rx, Some(active))));
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_metric_spec(
        &self,
        req: Request<pb::ScaledObjectRef>,
    ) -> Result<Response<pb::GetMetricSpecResponse>, Status> {
        // The queue need not exist yet: KEDA asks for the spec when the
        // ScaledObject is applied, maybe before anything created the queue.
        // IsActive and GetMetrics answer NOT_FOUND until it exists.
        let t = self.admit(&req, &req.get_ref().scaler_metadata)?;
        Ok(Response::new(pb::GetMetricSpecResponse {
            metric_specs: vec![pb::MetricSpec {
                metric_name: t.metric_name(),
                target_size: t.target,
                target_size_float: t.target as f64,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        req: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        let meta = req
            .get_ref()
            .scaled_object_ref
            .as_ref()
            .map(|r| r.scaler_metadata.clone())
            .ok_or_else(|| {
                invalid_field(
                    "scaledObjectRef",
                    "GetMetrics carries no scaledObjectRef: send the trigger's metadata in it",
                )
            })?;
        let t = self.admit(&req, &meta)?;
        let info = queue_info(&self.engine, &t.queue).await?;
        let n = t.count.of(&info);
        let metric_name = match req.get_ref().metric_name.as_str() {
            "" => t.metric_name(),
            given => given.to_owned(),
        };
        Ok(Response::new(pb::GetMetricsResponse {
            metric_values: vec![pb::MetricValue {
                metric_name,
                metric_value: i64::try_from(n).unwrap_or(i64::MAX),
                metric_value_float: n as f64,
            }],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn metadata_parses_with_defaults() {
        let t = Trigger::parse(&meta(&[("queue", "jobs")])).expect("parses");
        assert_eq!(t.count, Count::PendingLeased);
        assert_eq!(t.target, 1);
        assert_eq!(t.metric_name(), "workq-jobs-pending-leased");
        let t = Trigger::parse(&meta(&[
            ("queue", "jobs"),
            ("count", "pending"),
            ("target", "5"),
        ]))
        .expect("parses");
        assert_eq!((t.count, t.target), (Count::Pending, 5));
        assert_eq!(t.metric_name(), "workq-jobs-pending");
    }

    #[test]
    fn bad_metadata_names_the_entry() {
        for (m, entry) in [
            (meta(&[]), "queue"),
            (meta(&[("queue", "bad name!")]), "queue"),
            (meta(&[("queue", "q"), ("count", "all")]), "count"),
            (meta(&[("queue", "q"), ("target", "0")]), "target"),
            (meta(&[("queue", "q"), ("target", "x")]), "target"),
        ] {
            let err = Trigger::parse(&m).expect_err("refused");
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains(entry), "{entry}: {}", err.message());
        }
    }
}
