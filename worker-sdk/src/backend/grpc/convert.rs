//! Conversions between the SDK's types and the proto's, and the small
//! helpers every call shares (a request with its deadline, token lists).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use workq_proto::time;
use workq_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::types::{
    ItemId, LeaseToken, LeasedItem, NewItem, QueueInfo, QueueName, QueueSettings, QueueState,
    ServerInfo, Stats,
};

/// A listing's next page token: `None` on the last page.
pub(super) fn next_token(token: String) -> Option<String> {
    (!token.is_empty()).then_some(token)
}

pub(super) fn server_info_from_pb(i: pb::GetServerInfoResponse) -> ServerInfo {
    ServerInfo {
        version: i.version,
        max_message_bytes: count(i.max_message_bytes),
        max_batch_items: u32::try_from(i.max_batch_items).unwrap_or(0),
        max_item_bytes: count(i.max_item_bytes),
        max_attributes: u32::try_from(i.max_attributes).unwrap_or(0),
        max_work_credit: count(i.max_work_credit),
        min_lease: opt_duration(i.min_lease.as_ref()),
        max_lease: opt_duration(i.max_lease.as_ref()),
        max_wait: opt_duration(i.max_wait.as_ref()),
        max_delay: opt_duration(i.max_delay.as_ref()),
        idempotency_window: opt_duration(i.idempotency_window.as_ref()),
        max_page_size: u32::try_from(i.max_page_size).unwrap_or(0),
    }
}

/// One outcome per token from a `per_token_results` answer of `n` tokens.
pub(super) fn token_results(
    queue: &QueueName,
    n: usize,
    results: Vec<pb::TokenResult>,
) -> Result<Vec<Result<()>>> {
    if results.len() != n {
        return Err(Error::Protocol(format!(
            "a call with {n} tokens and per_token_results answered {} results",
            results.len()
        )));
    }
    Ok(results
        .into_iter()
        .map(|r| token_outcome(queue, r))
        .collect())
}

/// One token's outcome in a `per_token_results` answer: done now or by an
/// earlier try is `Ok`.
pub(super) fn token_outcome(queue: &QueueName, r: pb::TokenResult) -> Result<()> {
    match pb::TokenOutcome::try_from(r.outcome).unwrap_or(pb::TokenOutcome::Unspecified) {
        pb::TokenOutcome::Done => Ok(()),
        pb::TokenOutcome::AlreadyDone => {
            tracing::debug!(queue = %queue, token = %r.lease_token, "already done by an earlier try");
            Ok(())
        }
        pb::TokenOutcome::Refused | pb::TokenOutcome::Unspecified => {
            let status = r.problem.as_ref().map_or_else(
                || tonic::Status::unknown("token refused without a problem"),
                workq_proto::errors::problem_status,
            );
            Err(Error::from_token_status(queue.as_str(), status))
        }
    }
}

/// A leased item from the wire.
pub(super) fn leased_from_pb(i: pb::LeasedItem) -> LeasedItem {
    LeasedItem {
        id: ItemId(i.id),
        token: LeaseToken(i.lease_token),
        payload: i.payload.into(),
        attributes: i.attributes.into_iter().collect(),
        attempt: u32::try_from(i.attempt).unwrap_or(0),
        lease_deadline: system_time(i.lease_expire_time.as_ref()),
        enqueued_at: system_time(i.enqueue_time.as_ref()),
    }
}

/// A new item for the wire.
pub(super) fn new_item_to_pb(i: NewItem) -> pb::NewItem {
    pb::NewItem {
        payload: i.payload.into(),
        attributes: i.attributes.into_iter().collect(),
        idempotency_key: i.idempotency_key.unwrap_or_default(),
        delay: i.delay.map(time::duration),
    }
}

pub(super) fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(timeout);
    r
}

pub(super) fn token_strings(tokens: &[LeaseToken]) -> Vec<String> {
    tokens.iter().map(|t| t.0.clone()).collect()
}

pub(super) fn settings_to_pb(s: &QueueSettings) -> pb::QueueSettings {
    pb::QueueSettings {
        default_lease: s.default_lease.map(time::duration),
        max_attempts: s.max_attempts.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
        retry_backoff: s.retry_backoff.map(time::duration),
        retry_backoff_max: s.retry_backoff_max.map(time::duration),
    }
}

/// A wire duration the server sent; a malformed one reads as unset.
pub(super) fn opt_duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    d.and_then(|d| time::from_duration("duration", d).ok())
}

/// A wire time the server sent (the epoch when unset).
pub(super) fn system_time(t: Option<&prost_types::Timestamp>) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(t.map_or(0, time::ms_of_timestamp))
}

/// A wire counter (never negative from a sound server).
pub(super) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub(super) fn settings_from_pb(s: pb::QueueSettings) -> QueueSettings {
    QueueSettings {
        default_lease: opt_duration(s.default_lease.as_ref()),
        max_attempts: s.max_attempts.and_then(|n| u32::try_from(n).ok()),
        retry_backoff: opt_duration(s.retry_backoff.as_ref()),
        retry_backoff_max: opt_duration(s.retry_backoff_max.as_ref()),
    }
}

pub(super) fn state_from_pb(state: i32) -> QueueState {
    match pb::QueueState::try_from(state).unwrap_or(pb::QueueState::Unspecified) {
        pb::QueueState::Empty => QueueState::Empty,
        pb::QueueState::Sealed => QueueState::Sealed,
        pb::QueueState::Drained => QueueState::Drained,
        pb::QueueState::Active | pb::QueueState::Unspecified => QueueState::Active,
    }
}

pub(super) fn stats_from_pb(s: pb::QueueStats) -> Stats {
    let state = state_from_pb(s.state);
    Stats {
        queue: s.queue,
        enqueued: count(s.enqueued),
        pending: count(s.pending),
        delayed: count(s.delayed),
        leased: count(s.leased),
        completed: count(s.completed),
        dead: count(s.dead),
        retried: count(s.retried),
        sealed: state.is_sealed(),
        drained: state.is_drained(),
        state,
    }
}

/// The queue of a `call`'s answer, which must carry one.
pub(super) fn info_from_pb(call: &str, q: Option<pb::Queue>) -> Result<QueueInfo> {
    let q = q.ok_or_else(|| Error::Protocol(format!("{call} answered without a queue")))?;
    let mut stats = q.stats.map(stats_from_pb).unwrap_or_default();
    if stats.queue.is_empty() {
        stats.queue = q.name.clone();
    }
    Ok(QueueInfo {
        name: q.name,
        settings: q.settings.map(settings_from_pb).unwrap_or_default(),
        stats,
    })
}
