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
        fmt::Display::fmt(&self.0, f)
    }
}

impl ItemId {
    /// The id as the wire shows it (what `to_string` gives, without the
    /// formatting machinery: every enqueued and every leased item is
    /// answered with its id).
    pub fn text(self) -> String {
        let mut buf = [0u8; 20];
        let start = decimal(self.0, &mut buf);
        ascii(&buf[start..])
    }
}

/// The decimal digits of `n` at the end of `buf`; where they start.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return i;
        }
    }
}

/// Text known to be ASCII (digits, hex digits and dots written here).
fn ascii(bytes: &[u8]) -> String {
    std::str::from_utf8(bytes)
        .map(String::from)
        .unwrap_or_default()
}

/// The fencing token of one lease: the item, the lease's sequence number,
/// and 128 bits no one can guess.
///
/// Sequence numbers are unique for the life of a server process and start at
/// a random point, so a token from before a restart never matches a new lease.
/// Ids and sequence numbers count up, so they are easy to guess; the
/// `secret` is not: it is AES-128 of the block (item, sequence) under a
/// 128-bit key drawn from the operating system's CSPRNG once per process
/// ([`LeaseToken::mint`]). A token whose secret does not
/// match is refused exactly as a stale token ([`LeaseToken::is_authentic`],
/// compared in constant time). Nothing is stored per lease for it, and a
/// retried finish presenting the same full token is recognized as before.
///
/// Shown as `<item>.<sequence in hex>.<secret, 32 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LeaseToken {
    /// The leased item.
    pub item: ItemId,
    /// The lease's sequence number.
    pub seq: u64,
    /// The unguessable part (see the type's documentation).
    pub secret: [u8; SECRET_BYTES],
}

/// Bytes of a lease token's secret: 128 bits.
pub const SECRET_BYTES: usize = 16;

/// The process's key for lease-token secrets: AES-128 under a key drawn
/// once from the operating system's generator.
fn token_cipher() -> &'static aes::Aes128 {
    use aes::cipher::KeyInit;
    use ring::rand::SecureRandom;
    static KEY: std::sync::OnceLock<aes::Aes128> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 16];
        // A system without a working CSPRNG cannot hand out safe tokens.
        #[allow(clippy::expect_used)]
        ring::rand::SystemRandom::new()
            .fill(&mut key)
            .expect("the operating system's random number generator failed");
        aes::Aes128::new(&key.into())
    })
}

/// The secret of lease `seq` of `item`: AES-128 of the one block (item,
/// seq) — a pseudorandom permutation, so for blocks never asked it is as
/// unpredictable as a MAC's tag (`docs/SECURITY.md`, "Lease tokens").
fn secret_of(item: ItemId, seq: u64) -> [u8; SECRET_BYTES] {
    use aes::cipher::BlockEncrypt;
    let mut block = [0u8; 16];
    block[..8].copy_from_slice(&item.0.to_be_bytes());
    block[8..].copy_from_slice(&seq.to_be_bytes());
    let mut block = block.into();
    token_cipher().encrypt_block(&mut block);
    block.into()
}

impl LeaseToken {
    /// The token of lease `seq` of `item`, with its secret.
    pub fn mint(item: ItemId, seq: u64) -> Self {
        LeaseToken {
            item,
            seq,
            secret: secret_of(item, seq),
        }
    }

    /// Whether this process minted this token (its secret matches its item
    /// and sequence), compared in constant time.
    pub fn is_authentic(&self) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(secret_of(self.item, self.seq).ct_eq(&self.secret))
    }
}

impl FromStr for LeaseToken {
    type Err = ParseError;

    /// One pass over the bytes for a well-formed token (every completion
    /// parses one, and `str::split` with the digit parsers took a tenth of
    /// the server's CPU); anything else is judged by [`parse_explained`],
    /// which accepts what the fast pass may turn down (a `+` sign) and
    /// says what is wrong with the rest.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match parse_well_formed(s.as_bytes()) {
            Some(token) => Ok(token),
            None => parse_explained(s),
        }
    }
}

/// The value of each byte as a hex digit, or 0xff.
static HEX_VALUE: [u8; 256] = {
    let mut t = [0xff_u8; 256];
    let mut c = 0;
    while c < 256 {
        if let Some(v) = hex_value(c as u8) {
            t[c] = v;
        }
        c += 1;
    }
    t
};

/// `<decimal item>.<hex sequence>.<32 hex digits>` with no sign, or `None`.
fn parse_well_formed(b: &[u8]) -> Option<LeaseToken> {
    let (head, secret_hex) = b.split_at_checked(b.len().checked_sub(2 * SECRET_BYTES)?)?;
    let head = head.strip_suffix(b".")?;
    let mut secret = [0u8; SECRET_BYTES];
    let mut bad = 0u8;
    for (out, pair) in secret.iter_mut().zip(secret_hex.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        bad |= hi | lo;
        *out = hi << 4 | (lo & 0xf);
    }
    if bad & 0xf0 != 0 {
        return None;
    }
    let dot = head.iter().position(|&c| c == b'.')?;
    let (item_digits, seq_digits) = (&head[..dot], &head[dot + 1..]);
    if item_digits.is_empty() || seq_digits.is_empty() || seq_digits.len() > 16 {
        return None;
    }
    let mut item = 0u64;
    for &c in item_digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        item = item.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    let mut seq = 0u64;
    for &c in seq_digits {
        let d = HEX_VALUE[usize::from(c)];
        if d > 0xf {
            return None;
        }
        seq = seq << 4 | u64::from(d);
    }
    Some(LeaseToken {
        item: ItemId(item),
        seq,
        secret,
    })
}

/// Parses any token the format allows, or says what is wrong with it.
fn parse_explained(s: &str) -> Result<LeaseToken, ParseError> {
    let bad = |why: &str| {
        ParseError(format!(
            "invalid lease token {}: {why}; pass the lease_token a Lease call returned \
                 (<item>.<sequence>.<32 hex digits>)",
            quoted(s)
        ))
    };
    let mut parts = s.split('.');
    let (Some(item), Some(seq), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("it does not have three parts separated by '.'"));
    };
    let item = ItemId(
        item.parse()
            .map_err(|_| bad("the item id is not a decimal number"))?,
    );
    let seq =
        u64::from_str_radix(seq, 16).map_err(|_| bad("the sequence number is not a hex number"))?;
    if secret.len() != SECRET_BYTES * 2 {
        return Err(bad("the secret is not 32 hex digits"));
    }
    let mut out = [0u8; SECRET_BYTES];
    // Byte by byte: a slice of the text could cut a multi-byte character.
    for (b, pair) in out.iter_mut().zip(secret.as_bytes().chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
            return Err(bad("the secret is not 32 hex digits"));
        };
        *b = hi << 4 | lo;
    }
    Ok(LeaseToken {
        item,
        seq,
        secret: out,
    })
}

/// The value of one hex digit (either case).
const fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lowercase hex digits.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Longest shown token: 20 decimal digits, 16 hex digits, the secret, two dots.
const TOKEN_TEXT_MAX: usize = 20 + 1 + 16 + 1 + 2 * SECRET_BYTES;

impl LeaseToken {
    /// The token's text into `buf`: its length, and the length of the item
    /// id it starts with.
    fn write_text(&self, buf: &mut [u8; TOKEN_TEXT_MAX]) -> (usize, usize) {
        let mut digits = [0u8; 20];
        let start = decimal(self.item.0, &mut digits);
        let id_len = digits.len() - start;
        buf[..id_len].copy_from_slice(&digits[start..]);
        let mut n = id_len;
        let mut put = |c: u8| {
            buf[n] = c;
            n += 1;
        };
        put(b'.');
        let nibbles = (u64::BITS - self.seq.leading_zeros()).div_ceil(4).max(1);
        for i in (0..nibbles).rev() {
            put(HEX[((self.seq >> (4 * i)) & 0xf) as usize]);
        }
        put(b'.');
        for b in self.secret {
            put(HEX[usize::from(b >> 4)]);
            put(HEX[usize::from(b & 0xf)]);
        }
        (n, id_len)
    }

    /// The item's id and the token, as the wire shows them (what
    /// `to_string` gives each), written once: every leased item is answered
    /// with both.
    pub fn texts(&self) -> (String, String) {
        let mut buf = [0u8; TOKEN_TEXT_MAX];
        let (n, id_len) = self.write_text(&mut buf);
        (ascii(&buf[..id_len]), ascii(&buf[..n]))
    }
}

impl fmt::Display for LeaseToken {
    /// Written into a buffer on the stack and handed over at once: tokens
    /// are shown once per lease and once per finish, on the hot path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; TOKEN_TEXT_MAX];
        let (n, _) = self.write_text(&mut buf);
        // Only ASCII digits and dots were written.
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
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
        let t = LeaseToken::mint(ItemId(42), 0xdead_beef);
        let shown = t.to_string();
        assert!(shown.starts_with("42.deadbeef."), "{shown}");
        assert_eq!(shown.len(), "42.deadbeef.".len() + 32);
        assert_eq!(shown.parse::<LeaseToken>(), Ok(t));
        assert!(t.is_authentic());
        // As the format machinery would show it, at the edges too.
        for (item, seq) in [(0, 0), (1, 0xf), (u64::MAX, u64::MAX), (10, 0x10)] {
            let t = LeaseToken::mint(ItemId(item), seq);
            let mut expected = format!("{item}.{seq:x}.");
            t.secret
                .iter()
                .for_each(|b| expected.push_str(&format!("{b:02x}")));
            assert_eq!(t.to_string(), expected);
            assert_eq!(expected.parse::<LeaseToken>(), Ok(t));
            assert_eq!(expected.to_uppercase().parse::<LeaseToken>(), Ok(t));
        }
        let zero = "0".repeat(32);
        for bad in [
            "",
            "42",
            "x.1",
            "42.zz",
            "42.1",
            "42.1.2",
            &format!("42.1.{zero}.1"),
            &format!("42.1.{}", "g".repeat(32)),
            &format!("42.1.{}", "é".repeat(16)),
            // 32 bytes whose pairs cut a three-byte character.
            &format!("42.1.ab{}", "€".repeat(10)),
        ] {
            assert!(bad.parse::<LeaseToken>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_fast_pass_and_the_explaining_parser_agree() {
        let secret = "0123456789abcdefABCDEF0123456789";
        let mut inputs: Vec<String> = Vec::new();
        for item in [
            "0",
            "7",
            "+7",
            "-7",
            "",
            "18446744073709551615",
            "18446744073709551616",
            "00042",
        ] {
            for seq in [
                "0",
                "f",
                "+f",
                "",
                "ffffffffffffffff",
                "1ffffffffffffffff",
                "0000000000000000a",
                "g",
            ] {
                inputs.push(format!("{item}.{seq}.{secret}"));
                inputs.push(format!("{item}.{seq}.{}", &secret[1..]));
                inputs.push(format!("{item}.{seq}.{secret}0"));
                inputs.push(format!("{item}.{seq}.{}", secret.replace('7', "g")));
                inputs.push(format!("{item}.{seq}.x.{secret}"));
                inputs.push(format!("{item}{seq}.{secret}"));
            }
        }
        for s in &inputs {
            let fast = parse_well_formed(s.as_bytes());
            let explained = parse_explained(s);
            if let Some(t) = fast {
                assert_eq!(explained, Ok(t), "{s}");
            }
            assert_eq!(s.parse::<LeaseToken>(), explained, "{s}");
        }
        // The wire texts are what `to_string` gives.
        for (item, seq) in [(0, 0), (9, 1), (10, 0x10), (u64::MAX, u64::MAX)] {
            let t = LeaseToken::mint(ItemId(item), seq);
            assert_eq!(t.texts(), (item.to_string(), t.to_string()));
            assert_eq!(ItemId(item).text(), item.to_string());
        }
        // Every token the server shows takes the fast pass.
        for (item, seq) in [(0, 0), (42, 1), (u64::MAX, u64::MAX), (1 << 40, 0xabc)] {
            let t = LeaseToken::mint(ItemId(item), seq);
            assert_eq!(parse_well_formed(t.to_string().as_bytes()), Some(t));
            let upper = t.to_string().to_uppercase();
            assert_eq!(parse_well_formed(upper.as_bytes()), Some(t));
        }
    }

    #[test]
    fn a_secret_that_does_not_match_is_not_authentic() {
        let t = LeaseToken::mint(ItemId(7), 9);
        for forged in [
            LeaseToken { seq: 10, ..t },
            LeaseToken {
                item: ItemId(8),
                ..t
            },
            LeaseToken {
                secret: [0; SECRET_BYTES],
                ..t
            },
        ] {
            assert!(!forged.is_authentic(), "{forged}");
        }
    }

    #[test]
    fn secrets_look_nothing_like_their_item_and_sequence() {
        let mut seen = std::collections::HashSet::new();
        for seq in 0..1000u64 {
            let t = LeaseToken::mint(ItemId(7), seq);
            assert!(t.is_authentic());
            let mut plain = [0u8; SECRET_BYTES];
            plain[..8].copy_from_slice(&7u64.to_be_bytes());
            plain[8..].copy_from_slice(&seq.to_be_bytes());
            assert_ne!(t.secret, plain, "the block itself is not a secret");
            assert!(seen.insert(t.secret), "a secret repeated at sequence {seq}");
        }
    }
}
