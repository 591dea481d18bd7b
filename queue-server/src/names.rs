//! Validated identifiers: [`QueueName`], [`ItemId`] and [`LeaseToken`].
//!
//! Each is parsed once at the edge (`FromStr`) with a precise error, and is
//! valid everywhere after that.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Why a queue name, item id or lease token did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// The most characters of a bad value an error message quotes.
pub const QUOTE_CHARS: usize = 64;

/// `s` quoted for an error message: at most its first [`QUOTE_CHARS`]
/// characters, and its length in bytes when it was cut — so that a refusal
/// of a huge value stays small.
pub fn quoted(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
    }
}

/// The longest queue name, as for a Kubernetes DNS-1123 label.
pub const MAX_QUEUE_NAME_LEN: usize = 63;

/// A queue's name: a DNS-1123 label, as Kubernetes names objects — 1 to 63
/// characters, lowercase letters, digits and `-`, starting and ending with a
/// letter or digit (`job1`, `fine-queue-2`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(Arc<str>);

impl QueueName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for QueueName {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = |why: &str| {
            Err(ParseError(format!(
                "invalid queue name {}: {why}; use 1-63 lowercase letters, digits or '-', \
                 starting and ending with a letter or digit (a DNS-1123 label, e.g. \"job-1\")",
                quoted(s)
            )))
        };
        if s.is_empty() {
            return bad("it is empty");
        }
        if s.len() > MAX_QUEUE_NAME_LEN {
            return bad(&format!("it is {} characters long", s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return bad(&format!("it contains {c:?}"));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return bad("it starts or ends with '-'");
        }
        Ok(QueueName(Arc::from(s)))
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// An item's server-assigned id: unique in the server's data directory and
/// increasing in enqueue order. Shown as a decimal number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ItemId(pub u64);

impl FromStr for ItemId {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        s.parse::<u64>().map(ItemId).map_err(|_| {
            ParseError(format!(
                "invalid item id {}: expected a decimal number",
                quoted(s)
            ))
        })
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The fencing token of one lease: the item and the lease's sequence number.
///
/// Sequence numbers are unique for the life of a server process and start at
/// a random point, so a token from before a restart never matches a new lease.
/// Shown as `<item>.<sequence in hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LeaseToken {
    /// The leased item.
    pub item: ItemId,
    /// The lease's sequence number.
    pub seq: u64,
}

impl FromStr for LeaseToken {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || {
            ParseError(format!(
                "invalid lease token {}: pass the lease_token a Lease call returned",
                quoted(s)
            ))
        };
        let (item, seq) = s.split_once('.').ok_or_else(bad)?;
        Ok(LeaseToken {
            item: ItemId(item.parse().map_err(|_| bad())?),
            seq: u64::from_str_radix(seq, 16).map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:x}", self.item, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_dns_1123_labels() {
        for ok in ["a", "job1", "fine-queue-2", &"a".repeat(63)] {
            assert_eq!(
                ok.parse::<QueueName>().map(|n| n.to_string()),
                Ok(ok.to_string())
            );
        }
        for (bad, why) in [
            ("", "empty"),
            ("Job1", "'J'"),
            ("-a", "starts or ends"),
            ("a-", "starts or ends"),
            ("a_b", "'_'"),
            ("a.b", "'.'"),
            (&"a".repeat(64), "64 characters"),
        ] {
            let err = bad.parse::<QueueName>().expect_err(bad);
            assert!(err.0.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn refusals_quote_a_short_prefix_of_a_huge_value() {
        let huge = "X".repeat(1 << 20);
        for err in [
            huge.parse::<QueueName>().expect_err("name"),
            huge.parse::<ItemId>().expect_err("id"),
            huge.parse::<LeaseToken>().expect_err("token"),
        ] {
            assert!(err.0.len() < 400, "{} bytes", err.0.len());
            assert!(err.0.contains("1048576 bytes"), "{}", err.0);
        }
        assert_eq!(quoted("job"), "\"job\"");
    }

    #[test]
    fn lease_tokens_round_trip_and_reject_garbage() {
        let t = LeaseToken {
            item: ItemId(42),
            seq: 0xdead_beef,
        };
        assert_eq!(t.to_string(), "42.deadbeef");
        assert_eq!(t.to_string().parse::<LeaseToken>(), Ok(t));
        for bad in ["", "42", "x.1", "42.zz", "42.1.2"] {
            assert!(bad.parse::<LeaseToken>().is_err(), "{bad}");
        }
    }
}
