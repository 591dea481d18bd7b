//! The headers workq puts on AMQP messages: attempts, and why and when an
//! item died; and the reading of headers a publisher set (attributes).

use std::collections::BTreeMap;

use lapin::BasicProperties;
use lapin::types::AMQPValue;

/// The header counting an item's failed attempts.
pub const ATTEMPTS_HEADER: &str = "x-workq-attempts";

/// The header giving a dead item's reason.
pub const REASON_HEADER: &str = "x-workq-reason";

/// The header giving when an item died (unix ms).
pub const DIED_AT_HEADER: &str = "x-workq-died-at";

/// An integer header, whatever integer type the publisher chose.
pub(super) fn int_header(props: &BasicProperties, key: &str) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongString(s) => s.to_string().trim().parse().ok(),
        _ => None,
    }
}

/// `props` with `extra` headers set (replacing ones of the same name).
pub(super) fn with_headers(
    props: &BasicProperties,
    extra: Vec<(&str, AMQPValue)>,
) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    for (k, v) in extra {
        headers.insert(k.into(), v);
    }
    props.clone().with_headers(headers).with_delivery_mode(2)
}

/// The text headers of a message, as item attributes (headers of other types
/// are not attributes).
pub(super) fn attributes(props: &BasicProperties) -> BTreeMap<String, String> {
    props
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter_map(|(k, v)| match v {
                    AMQPValue::LongString(s) => Some((k.to_string(), s.to_string())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}
