//! Rate limits. Sans-IO: times are arguments.
//!
//! - [`TokenBucket`]: messages per second per connection and per user.
//! - [`LoginLimiter`]: failed logins per username and per address in a
//!   sliding minute, to slow password guessing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A `rate` of 0 means unlimited.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// What failed logins are counted against: the username tried, and the
/// address it was tried from. Each is counted on its own (on the key's home
/// shard, [`crate::home`]), so either limit holds however attempts spread.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LoginKey {
    /// A username (one that cannot exist is counted as the empty name).
    Username(String),
    /// A client address.
    Address(IpAddr),
}

/// Failed login attempts per username and per address within a window.
#[derive(Debug)]
pub struct LoginLimiter {
    per_username: u32,
    per_address: u32,
    window: Duration,
    hits: HashMap<LoginKey, Vec<Instant>>,
}

/// Entries kept at most; past it, expired entries are dropped and, if
/// still full, the table is cleared (an attacker cycling through names
/// cannot grow memory; the limit then restarts from zero).
const LOGIN_TABLE_MAX: usize = 100_000;

impl LoginLimiter {
    /// At most `per_username` and `per_address` failures per `window`
    /// (0: unlimited).
    pub fn new(per_username: u32, per_address: u32, window: Duration) -> Self {
        Self {
            per_username,
            per_address,
            window,
            hits: HashMap::new(),
        }
    }

    /// Whether an attempt counted against `key` may proceed; if not, how
    /// long to wait.
    pub fn check(&mut self, key: &LoginKey, now: Instant) -> Result<(), Duration> {
        let limit = match key {
            LoginKey::Username(_) => self.per_username,
            LoginKey::Address(_) => self.per_address,
        };
        let window = self.window;
        let Some(hits) = self.hits.get_mut(key) else {
            return Ok(());
        };
        hits.retain(|t| now.saturating_duration_since(*t) < window);
        match hits.first() {
            Some(first) if limit > 0 && hits.len() >= limit as usize => {
                Err(window.saturating_sub(now.saturating_duration_since(*first)))
            }
            _ => Ok(()),
        }
    }

    /// Records a failed attempt against `key`.
    pub fn failed(&mut self, key: LoginKey, now: Instant) {
        prune(&mut self.hits, self.window, now);
        self.hits.entry(key).or_default().push(now);
    }
}

fn prune<K: std::hash::Hash + Eq>(
    m: &mut HashMap<K, Vec<Instant>>,
    window: Duration,
    now: Instant,
) {
    if m.len() >= LOGIN_TABLE_MAX {
        m.retain(|_, v| {
            v.retain(|t| now.saturating_duration_since(*t) < window);
            !v.is_empty()
        });
        if m.len() >= LOGIN_TABLE_MAX {
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        assert!((0..3).all(|_| b.take(t0).is_ok()));
        let wait = b.take(t0).expect_err("empty");
        assert!(wait <= Duration::from_millis(100));
        assert!(b.take(t0 + Duration::from_millis(100)).is_ok());
        let mut unlimited = TokenBucket::new(0, 1, t0);
        assert!((0..1000).all(|_| unlimited.take(t0).is_ok()));
    }

    #[test]
    fn failed_logins_are_limited_per_username_and_address() {
        let t0 = Instant::now();
        let addr = LoginKey::Address(IpAddr::from([127, 0, 0, 2]));
        let name = |n: &str| LoginKey::Username(n.to_owned());
        let mut l = LoginLimiter::new(2, 3, Duration::from_secs(60));
        for _ in 0..2 {
            assert!(l.check(&name("alice"), t0).is_ok());
            assert!(l.check(&addr, t0).is_ok());
            l.failed(name("alice"), t0);
            l.failed(addr.clone(), t0);
        }
        assert!(l.check(&name("alice"), t0).is_err(), "username limit");
        assert!(l.check(&name("bob"), t0).is_ok());
        assert!(l.check(&addr, t0).is_ok());
        l.failed(name("bob"), t0);
        l.failed(addr.clone(), t0);
        assert!(l.check(&addr, t0).is_err(), "address limit");
        let later = t0 + Duration::from_secs(61);
        assert!(l.check(&name("alice"), later).is_ok(), "window slides");
        assert!(l.check(&addr, later).is_ok());
    }
}
