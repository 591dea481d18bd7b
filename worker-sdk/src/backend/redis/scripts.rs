//! The Lua scripts of the `redis://` backend, one `.lua` file each (in
//! `scripts/`), compiled once per client.
//!
//! Every script that takes lease tokens starts with `check.lua`: it checks, for
//! each token, that its lease key still holds that session id, and the script
//! changes nothing when one does not (the token is fenced off).

use redis::Script;

/// Checks that every lease key `KEYS[first + i]` holds token `ARGV[tok + i]`;
/// answers the 1-based index of the first that does not, or 0. Prefixed to the
/// scripts that take tokens.
const CHECK: &str = include_str!("scripts/check.lua");

/// The scripts, compiled once per client.
pub(super) struct Scripts {
    /// Lease `n` items from the tail of `KEYS[1]` if it still ends with the items the
    /// client read. KEYS: main, processing, attempts, lease keys…; ARGV: lease ms, n,
    /// items (tail first)…, tokens…, digests…. Answers `{-1}` on a mismatch, else
    /// `{0, attempt…}`.
    pub(super) lease: Script,
    /// KEYS: lease keys…; ARGV: lease ms, n, tokens….
    pub(super) renew: Script,
    /// KEYS: processing, attempts, stats, lease keys…; ARGV: n, tokens…, items…, digests….
    pub(super) complete: Script,
    /// KEYS: main, processing, attempts, dead, reasons, stats, lease keys…;
    /// ARGV: n, fatal (0/1), max attempts, reason, tokens…, items…, digests….
    /// Answers `{bad index, 0}` or `{0, dead}`.
    pub(super) fail: Script,
    /// KEYS: main, processing, attempts, lease keys…; ARGV: n, tokens…, items…, digests….
    pub(super) release: Script,
    /// The reaper. KEYS: main, processing, attempts, dead, reasons, stats,
    /// unleased_since, lease keys…; ARGV: grace ms, max attempts, whole list (0/1),
    /// n, items…, digests…. Answers how many items it moved.
    pub(super) reap: Script,
    /// KEYS: main, sealed; ARGV: items…. Answers -1 when sealed, else the list length.
    pub(super) push: Script,
    /// KEYS: settings; ARGV: max attempts, lease ms. Answers 1 created, 0 same, -1 different.
    pub(super) create: Script,
    /// KEYS: main. Answers how many items were removed.
    pub(super) purge: Script,
    /// KEYS: main, dead, reasons, attempts; ARGV: n, items…, digests…. Answers how many moved.
    pub(super) requeue: Script,
}

impl Scripts {
    /// Compiles every script (hashing it; Redis loads it on first use).
    pub(super) fn new() -> Self {
        let checked = |body: &str| Script::new(&format!("{CHECK}{body}"));
        Scripts {
            lease: Script::new(include_str!("scripts/lease.lua")),
            renew: checked(include_str!("scripts/renew.lua")),
            complete: checked(include_str!("scripts/complete.lua")),
            fail: checked(include_str!("scripts/fail.lua")),
            release: checked(include_str!("scripts/release.lua")),
            reap: Script::new(include_str!("scripts/reap.lua")),
            push: Script::new(include_str!("scripts/push.lua")),
            create: Script::new(include_str!("scripts/create.lua")),
            purge: Script::new(include_str!("scripts/purge.lua")),
            requeue: Script::new(include_str!("scripts/requeue.lua")),
        }
    }
}
