//! Rate-limit arithmetic. Hosts keep the state and make each step atomic; the core owns the math.

use serde::{Deserialize, Serialize};

/// A limit of `limit` requests per `window_ms` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub limit: u64,
    /// Window length in milliseconds.
    pub window_ms: u64,
}

/// The ledger's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Admission {
    /// Counted. `remaining` requests are left until `reset_ms` (epoch milliseconds).
    Admitted {
        /// The window's limit.
        limit: u64,
        /// Requests left in this window after this one.
        remaining: u64,
        /// When the window ends, epoch milliseconds.
        reset_ms: u64,
    },
    /// Not counted: the window is full until `reset_ms`.
    Refused {
        /// The window's limit.
        limit: u64,
        /// When the window ends, epoch milliseconds.
        reset_ms: u64,
    },
}

/// A fixed window counter: `count` requests since `start_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedWindow {
    /// Start of the current window, epoch milliseconds, aligned to the window length.
    pub start_ms: u64,
    /// Requests admitted in the current window.
    pub count: u64,
}

impl FixedWindow {
    /// Admits one request at `now_ms` if the window has room, updating the counter.
    ///
    /// Windows are aligned to multiples of `window_ms`, so every host and every replica agrees on
    /// where a window starts. A zero-length window is treated as one millisecond.
    pub fn admit(&mut self, now_ms: u64, limit: RateLimit) -> Admission {
        let window = limit.window_ms.max(1);
        let start = now_ms - now_ms % window;
        if start != self.start_ms {
            *self = FixedWindow { start_ms: start, count: 0 };
        }
        let reset_ms = start.saturating_add(window);
        if self.count < limit.limit {
            self.count += 1;
            Admission::Admitted { limit: limit.limit, remaining: limit.limit - self.count, reset_ms }
        } else {
            Admission::Refused { limit: limit.limit, reset_ms }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER_MIN: fn(u64) -> RateLimit = |limit| RateLimit { limit, window_ms: 60_000 };

    #[test]
    fn admits_up_to_the_limit_then_refuses_until_the_window_ends() {
        let mut w = FixedWindow::default();
        let t0 = 1_800_000_040_000; // 40 s into a minute
        assert_eq!(w.admit(t0, PER_MIN(2)), Admission::Admitted { limit: 2, remaining: 1, reset_ms: 1_800_000_060_000 });
        assert_eq!(w.admit(t0 + 1, PER_MIN(2)), Admission::Admitted { limit: 2, remaining: 0, reset_ms: 1_800_000_060_000 });
        assert_eq!(w.admit(t0 + 19_999, PER_MIN(2)), Admission::Refused { limit: 2, reset_ms: 1_800_000_060_000 });
        // The next window starts fresh.
        assert_eq!(w.admit(t0 + 20_000, PER_MIN(2)), Admission::Admitted { limit: 2, remaining: 1, reset_ms: 1_800_000_120_000 });
    }

    #[test]
    fn zero_limit_refuses_everything_and_zero_window_does_not_divide_by_zero() {
        let mut w = FixedWindow::default();
        assert!(matches!(w.admit(5, PER_MIN(0)), Admission::Refused { .. }));
        assert!(matches!(w.admit(5, RateLimit { limit: 1, window_ms: 0 }), Admission::Admitted { .. }));
        assert!(matches!(w.admit(5, RateLimit { limit: 1, window_ms: 0 }), Admission::Refused { .. }));
        assert!(matches!(w.admit(6, RateLimit { limit: 1, window_ms: 0 }), Admission::Admitted { .. }));
    }

    #[test]
    fn never_admits_more_than_the_limit_in_any_window() {
        // A deterministic sweep standing in for a property test: many arrival patterns, one invariant.
        for limit in 0..5u64 {
            for step in [1u64, 7, 333, 1_000, 59_999] {
                let mut w = FixedWindow::default();
                let mut per_window = std::collections::BTreeMap::<u64, u64>::new();
                for i in 0..500u64 {
                    let now = 1_000_000 + i * step;
                    if let Admission::Admitted { .. } = w.admit(now, PER_MIN(limit)) {
                        *per_window.entry(now / 60_000).or_default() += 1;
                    }
                }
                assert!(per_window.values().all(|&n| n <= limit), "limit {limit} step {step}: {per_window:?}");
            }
        }
    }
}
