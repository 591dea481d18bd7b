//! Page tokens of ListQueues and ListDead: opaque to clients, the hex of
//! `q:<last queue name>` or `d:<last item id>`. A listing resumes strictly
//! after the key its token names, so that pages stay stable while queues
//! or items come and go.

use crate::error::{Error, Result};
use crate::names::{ItemId, QueueName, quoted};

fn encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode(token: &str, prefix: &str) -> Result<String> {
    let bad = || Error::InvalidPageToken(quoted(token));
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    let s = String::from_utf8(bytes).map_err(|_| bad())?;
    s.strip_prefix(prefix).map(str::to_owned).ok_or_else(bad)
}

/// The token of the ListQueues page after `last`.
pub fn queue_token(last: &QueueName) -> String {
    encode(&format!("q:{last}"))
}

/// The last queue name a ListQueues token names (`None`: the first page).
pub fn after_queue(token: &str) -> Result<Option<QueueName>> {
    if token.is_empty() {
        return Ok(None);
    }
    let name = decode(token, "q:")?;
    name.parse()
        .map(Some)
        .map_err(|_| Error::InvalidPageToken(quoted(token)))
}

/// The token of the ListDead page after `last`.
pub fn dead_token(last: ItemId) -> String {
    encode(&format!("d:{last}"))
}

/// The last item id a ListDead token names (`None`: the first page).
pub fn after_item(token: &str) -> Result<Option<ItemId>> {
    if token.is_empty() {
        return Ok(None);
    }
    decode(token, "d:")?
        .parse()
        .map(Some)
        .map_err(|_| Error::InvalidPageToken(quoted(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_others() {
        let q: QueueName = "jobs-1".parse().expect("name");
        assert_eq!(after_queue(&queue_token(&q)).expect("token"), Some(q));
        assert_eq!(
            after_item(&dead_token(ItemId(42))).expect("token"),
            Some(ItemId(42))
        );
        assert_eq!(after_queue("").expect("first"), None);
        for bad in ["zz", "abc", &dead_token(ItemId(1)), "é"] {
            assert!(
                matches!(after_queue(bad), Err(Error::InvalidPageToken(_))),
                "{bad}"
            );
        }
        assert!(after_item(&queue_token(&"x".parse().expect("name"))).is_err());
    }
}
