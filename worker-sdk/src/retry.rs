//! Exponential back-off for transient failures (a lost connection, an
//! unavailable server).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Doubling delays between `initial` and `max`, with up to a quarter of jitter so
/// that many workers that lost the same server do not return in step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff { next: initial, max }
    }

    /// The default for calls to the queue server: 100 ms doubling up to 5 s.
    pub(crate) fn for_server() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The next delay to wait.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = base / 4 * (nanos % 1000) / 1000;
        base - base / 8 + jitter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        for (d, base) in delays.iter().zip([100u64, 200, 400, 400, 400]) {
            let base = Duration::from_millis(base);
            assert!(
                *d >= base - base / 8 && *d <= base + base / 8,
                "{d:?} vs {base:?}"
            );
        }
    }
}
