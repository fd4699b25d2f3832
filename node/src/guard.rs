//! Rate limits for what a server sends unasked: `-ERR` replies.
//!
//! Every `-ERR` reply passes two token buckets: one per client address
//! (default burst 32, then 16 per second) and one for the whole server
//! (default 10,000 per second, burst the same). A reply refused by either is
//! not sent and is counted. Per-address buckets live in a fixed table
//! indexed by a keyed hash of the address ([`ERROR_SLOTS`] slots, 24 bytes
//! each): memory is constant however many addresses (forged or not) send,
//! and two addresses that share a slot share a budget, which only makes the
//! limit stricter.

use std::hash::BuildHasher;
use std::net::SocketAddr;

/// Per-address buckets (a fixed table).
pub const ERROR_SLOTS: usize = 16_384;
/// Default per-address burst of error replies.
pub const DEFAULT_ERROR_BURST: u32 = 32;
/// Default per-address error replies per second.
pub const DEFAULT_ERROR_RATE: u32 = 16;
/// Default server-wide error replies per second (also its burst).
pub const DEFAULT_ERROR_RATE_TOTAL: u32 = 10_000;

/// A token bucket over microsecond timestamps.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: u64,
}

impl TokenBucket {
    pub fn full(burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: 0,
        }
    }

    /// Takes one token at `now` (µs) if there is one; refills at `rate`
    /// per second up to `burst`.
    pub fn take(&mut self, now: u64, rate: u32, burst: u32) -> bool {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed as f64 * f64::from(rate) / 1e6).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Limits for [`ErrorLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorLimits {
    /// Per address: burst, then `per_addr_rate` per second.
    pub per_addr_burst: u32,
    pub per_addr_rate: u32,
    /// Whole server, per second (and burst).
    pub total_rate: u32,
}

impl Default for ErrorLimits {
    fn default() -> Self {
        Self {
            per_addr_burst: DEFAULT_ERROR_BURST,
            per_addr_rate: DEFAULT_ERROR_RATE,
            total_rate: DEFAULT_ERROR_RATE_TOTAL,
        }
    }
}

/// Decides whether an error reply may be sent.
pub struct ErrorLimiter {
    limits: ErrorLimits,
    slots: Vec<TokenBucket>,
    total: TokenBucket,
    hasher: std::collections::hash_map::RandomState,
}

impl ErrorLimiter {
    pub fn new(limits: ErrorLimits) -> Self {
        Self {
            limits,
            slots: vec![TokenBucket::full(limits.per_addr_burst); ERROR_SLOTS],
            total: TokenBucket::full(limits.total_rate),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Whether an error reply to `to` may go out at `now` (µs); takes a
    /// token from both buckets when it may.
    pub fn allow(&mut self, to: SocketAddr, now: u64) -> bool {
        let l = self.limits;
        let slot = (self.hasher.hash_one(to) as usize) % ERROR_SLOTS;
        // Check the address first: a flooding address must not drain the
        // server-wide budget that other clients' errors need.
        let mut mine = self.slots[slot];
        if !mine.take(now, l.per_addr_rate, l.per_addr_burst) {
            self.slots[slot] = mine;
            return false;
        }
        if !self.total.take(now, l.total_rate, l.total_rate) {
            return false;
        }
        self.slots[slot] = mine;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn per_address_burst_then_rate() {
        let mut l = ErrorLimiter::new(ErrorLimits::default());
        let allowed = (0..1000).filter(|_| l.allow(a(1), 0)).count();
        assert_eq!(allowed, 32);
        // One second later: 16 more.
        let allowed = (0..1000).filter(|_| l.allow(a(1), 1_000_000)).count();
        assert_eq!(allowed, 16);
        // Another address has its own budget (unless it shares the slot).
        assert!((0..40).filter(|_| l.allow(a(2), 1_000_000)).count() >= 16);
    }

    #[test]
    fn server_wide_cap() {
        let mut l = ErrorLimiter::new(ErrorLimits {
            per_addr_burst: 1000,
            per_addr_rate: 1000,
            total_rate: 100,
        });
        let allowed = (0..1000u16).filter(|p| l.allow(a(*p), 0)).count();
        assert_eq!(allowed, 100);
        let allowed = (0..1000u16).filter(|p| l.allow(a(*p), 500_000)).count();
        assert_eq!(allowed, 50);
    }
}
