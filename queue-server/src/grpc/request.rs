//! Reading requests: names, tokens, durations and settings parsed at the
//! edge with a refusal naming the field; and the shapes of batch answers.

use super::convert::opt_duration;
use super::reject::{invalid_field, invalid_field_rejection, rejection};
use crate::names::{LeaseToken, QueueName};
use crate::queue::{Batch, Outcome, TokenResult};
use crate::settings::{QueueSettings, SettingsPatch};
use tonic::Status;
use workq_proto::errors::Rejection;
use workq_proto::v1 as pb;

pub(super) fn queue_name(field: &str, s: &str) -> Result<QueueName, Status> {
    s.parse()
        .map_err(|e: crate::names::ParseError| invalid_field(field, e.0))
}

/// Lease tokens as sent in `field`; the first that does not parse is
/// refused naming its index (`lease_tokens[3]`).
pub fn parse_tokens(field: &str, raw: &[String]) -> Result<Vec<LeaseToken>, Box<Rejection>> {
    raw.iter()
        .enumerate()
        .map(|(i, t)| {
            t.parse().map_err(|e: crate::names::ParseError| {
                Box::new(invalid_field_rejection(&format!("{field}[{i}]"), e.0))
            })
        })
        .collect()
}

pub(super) fn tokens(field: &str, raw: &[String]) -> Result<Vec<LeaseToken>, Status> {
    parse_tokens(field, raw).map_err(|r| r.to_status())
}

pub(super) fn duration(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<std::time::Duration>, Status> {
    opt_duration(field, d).map_err(|e| invalid_field(field, e))
}

pub(super) fn non_negative(field: &str, n: i32) -> Result<usize, Status> {
    usize::try_from(n)
        .map_err(|_| invalid_field(field, format!("{field} is {n}: it must not be negative")))
}

/// The first message of a client stream, which names the queue.
pub(super) async fn first_message<T>(
    inbound: &mut tonic::Streaming<T>,
    what: &str,
) -> Result<T, Status> {
    inbound.message().await?.ok_or_else(|| {
        invalid_field(
            "queue",
            format!("{what} starts with a message naming the queue; none came"),
        )
    })
}

/// Settings as a call gives them, each field set or not.
pub(super) fn settings_of(s: Option<pb::QueueSettings>) -> Result<SettingsPatch, Status> {
    let s = s.unwrap_or_default();
    let max_attempts = match s.max_attempts {
        None => None,
        Some(n) => Some(u32::try_from(n).map_err(|_| {
            invalid_field(
                "settings.max_attempts",
                format!("max_attempts is {n}: use 1 to 1000"),
            )
        })?),
    };
    Ok(SettingsPatch {
        default_lease: duration("settings.default_lease", s.default_lease.as_ref())?,
        max_attempts,
        retry_backoff: duration("settings.retry_backoff", s.retry_backoff.as_ref())?,
        retry_backoff_max: duration("settings.retry_backoff_max", s.retry_backoff_max.as_ref())?,
    })
}

/// The settings an UpdateQueue changes: the paths of `mask` (each set to
/// the value given, or the server's default when unset); every field set
/// when the mask is empty.
pub(super) fn settings_update(
    given: SettingsPatch,
    mask: Option<prost_types::FieldMask>,
    defaults: &QueueSettings,
) -> Result<SettingsPatch, Status> {
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Ok(given);
    }
    let mut out = SettingsPatch::default();
    for path in &paths {
        match path.as_str() {
            "settings" => {
                out = SettingsPatch {
                    default_lease: given.default_lease.or(Some(defaults.default_lease)),
                    max_attempts: given.max_attempts.or(Some(defaults.max_attempts)),
                    retry_backoff: given.retry_backoff.or(Some(defaults.retry_backoff)),
                    retry_backoff_max: given.retry_backoff_max.or(Some(defaults.retry_backoff_max)),
                }
            }
            "settings.default_lease" => {
                out.default_lease = given.default_lease.or(Some(defaults.default_lease));
            }
            "settings.max_attempts" => {
                out.max_attempts = given.max_attempts.or(Some(defaults.max_attempts));
            }
            "settings.retry_backoff" => {
                out.retry_backoff = given.retry_backoff.or(Some(defaults.retry_backoff));
            }
            "settings.retry_backoff_max" => {
                out.retry_backoff_max =
                    given.retry_backoff_max.or(Some(defaults.retry_backoff_max));
            }
            other => {
                return Err(invalid_field(
                    "update_mask",
                    format!(
                        "update_mask path {} is not a queue setting: use \"settings\", \
                         \"settings.default_lease\", \"settings.max_attempts\", \
                         \"settings.retry_backoff\" or \"settings.retry_backoff_max\"",
                        crate::names::quoted(other)
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// A queue's state as a lease saw it.
pub fn lease_state(sealed: bool, empty: bool) -> pb::QueueState {
    match (sealed, empty) {
        (true, true) => pb::QueueState::Drained,
        (true, false) => pb::QueueState::Sealed,
        (false, true) => pb::QueueState::Empty,
        (false, false) => pb::QueueState::Active,
    }
}

/// How a call asks its batch to be judged.
pub(super) fn batch(per_token_results: bool) -> Batch {
    if per_token_results {
        Batch::EachToken
    } else {
        Batch::AllOrNothing
    }
}

/// The wire form of one token's result; refusals carry their problem.
pub fn token_result_pb(r: &TokenResult) -> pb::TokenResult {
    let (outcome, problem) = match &r.outcome {
        Outcome::Done => (pb::TokenOutcome::Done, None),
        Outcome::AlreadyDone => (pb::TokenOutcome::AlreadyDone, None),
        Outcome::Refused(e) => (pb::TokenOutcome::Refused, Some(rejection(e).to_problem())),
    };
    pb::TokenResult {
        lease_token: r.token.to_string(),
        outcome: outcome as i32,
        problem,
        lease_expire_time: r.deadline.map(workq_proto::time::timestamp_ms),
        dead: r.dead,
    }
}

/// The results of a batch for its answer: one per token when asked for.
pub(super) fn results_pb(results: &[TokenResult], per_token_results: bool) -> Vec<pb::TokenResult> {
    if per_token_results {
        results.iter().map(token_result_pb).collect()
    } else {
        Vec::new()
    }
}

pub(super) fn count(results: &[TokenResult], f: impl Fn(&TokenResult) -> bool) -> i32 {
    int32(results.iter().filter(|r| f(r)).count())
}

/// A count as the wire's `int32`.
pub(super) fn int32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
