//! Random ids: the `request_id` of each Enqueue call, and what the Redis and
//! AMQP backends give sessions, consumers and messages, from a random-number
//! generator (`fastrand`).

/// Random lower-case hex digits: `bytes` random bytes, for session ids,
/// consumer tags and message ids.
pub(crate) fn random_hex(bytes: usize) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        let _ = write!(out, "{:02x}", fastrand::u8(..));
    }
    out
}

/// A random id in the textual form of a version-4 UUID (what the backends
/// used before, so that ids look as they did).
pub(crate) fn random_uuid() -> String {
    let h = random_hex(16);
    // Version 4, variant 10xx.
    let variant = ['8', '9', 'a', 'b'][fastrand::usize(..4)];
    format!(
        "{}-{}-4{}-{}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        variant,
        &h[17..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_look_like_v4_uuids_and_differ() {
        let a = random_uuid();
        let b = random_uuid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let parts: Vec<_> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(a.as_bytes()[14], b'4');
        assert!(matches!(a.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
        assert_eq!(random_hex(3).len(), 6);
    }
}
