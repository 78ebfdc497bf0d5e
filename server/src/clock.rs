//! The server's one source of protocol-visible time: message timestamps,
//! token expiry, typing expiry, last seen, session idle and handshake
//! deadlines, login and send rate limits, media URL expiry and the push
//! outbox's age limit all read a [`Clock`].
//!
//! A `Clock` is carried in [`Config`](crate::Config) and is a cheap handle
//! (an `Option<Arc<_>>`): [`Clock::system`], the default, reads the system
//! clocks; [`Clock::manual`] runs with them but jumps forward whenever a test
//! calls [`Clock::advance`], so a test of a five-second expiry advances five
//! seconds instead of sleeping them. Jumping rather than freezing keeps every
//! timer a test does not care about behaving as it does in production.
//!
//! Code that tokio sleeps on has to notice a jump. Two ways, each where it
//! is cheapest:
//! - Sweeps that already run on a short real tick (typing expiry on the
//!   [`CURSOR_FLUSH_INTERVAL`](crate::owner::CURSOR_FLUSH_INTERVAL) tick,
//!   presence publication) compare stored times against the clock, so a
//!   jump takes effect within one tick, with no extra wake-ups.
//! - A per-connection deadline (Hello, idle timeout) is one timer per
//!   session: polling it on a short tick would cost every idle session
//!   wake-ups. It sleeps until its deadline as measured now and also waits
//!   on [`Clock::jumps`], which never fires on the system clock and fires
//!   once per [`advance`](Self::advance) on a manual one; the deadline is
//!   then measured again.
//!
//! TLS, QUIC and HTTP handshake timeouts, shutdown grace periods, and the
//! push gateway's retry backoff and request timeout stay on tokio's timers:
//! they bound transport work, not protocol-visible state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Wall and monotonic time; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None` for the system clock.
    manual: Option<Arc<Manual>>,
}

/// What the clones of one manual clock share.
#[derive(Debug)]
struct Manual {
    /// Milliseconds advanced in total.
    offset: AtomicU64,
    /// Bumped on every advance, for [`Jumps`].
    jumps: watch::Sender<u64>,
}

/// Advances of a manual clock, one wake-up per advance; see
/// [`Clock::jumps`].
#[derive(Debug)]
pub struct Jumps(Option<watch::Receiver<u64>>);

impl Jumps {
    /// Completes at the next advance; never, for the system clock.
    pub async fn next(&mut self) {
        match &mut self.0 {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // Every clone of the clock is gone: no more jumps.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl Clock {
    /// The system clocks. The default.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that runs with the system clocks and jumps forward by every
    /// [`advance`](Self::advance). Clones share the jumps.
    pub fn manual() -> Self {
        Self {
            manual: Some(Arc::new(Manual {
                offset: AtomicU64::new(0),
                jumps: watch::Sender::new(0),
            })),
        }
    }

    /// Moves a manual clock forward by `by` (rounded down to milliseconds);
    /// every clone sees it at once. Does nothing on the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(m) = &self.manual {
            let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            m.offset.fetch_add(ms, Ordering::Relaxed);
            m.jumps.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes at every later [`advance`](Self::advance), so that a task
    /// sleeping until a deadline measures it again.
    pub fn jumps(&self) -> Jumps {
        Jumps(self.manual.as_ref().map(|m| m.jumps.subscribe()))
    }

    /// A tokio deadline for the clock time `at`: it lies as far in the
    /// future as `at` does now. Re-measure after a [`Jumps`] wake-up.
    pub fn deadline(&self, at: Instant) -> tokio::time::Instant {
        match self.manual {
            // The system clock's time is tokio's: nothing to measure (a
            // session's read loop asks for its deadline at every frame).
            None => tokio::time::Instant::from_std(at),
            Some(_) => tokio::time::Instant::now() + at.saturating_duration_since(self.now()),
        }
    }

    /// How far a manual clock has been advanced in total.
    fn skew(&self) -> Duration {
        self.manual.as_ref().map_or(Duration::ZERO, |m| {
            Duration::from_millis(m.offset.load(Ordering::Relaxed))
        })
    }

    /// Wall-clock Unix milliseconds (0 if the system clock is before 1970).
    pub fn now_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        wall.saturating_add(self.skew().as_millis() as u64)
    }

    /// Monotonic time, for intervals such as rate-limit refills.
    pub fn now(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.skew()).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_jumps_for_every_clone_and_the_system_clock_does_not() {
        let clock = Clock::manual();
        let copy = clock.clone();
        let (wall, mono) = (copy.now_ms(), copy.now());
        clock.advance(Duration::from_secs(5));
        assert!(copy.now_ms() >= wall + 5_000);
        assert!(copy.now() >= mono + Duration::from_secs(5));

        let system = Clock::system();
        let wall = system.now_ms();
        system.advance(Duration::from_secs(3600));
        assert!(system.now_ms() < wall + 3_600_000);
    }

    #[tokio::test]
    async fn an_advance_wakes_a_sleeper_and_moves_its_deadline() {
        let clock = Clock::manual();
        let at = clock.now() + Duration::from_secs(60);
        let mut jumps = clock.jumps();
        let waker = clock.clone();
        let sleeper = tokio::spawn(async move { jumps.next().await });
        tokio::task::yield_now().await;
        waker.advance(Duration::from_secs(60));
        sleeper.await.unwrap();
        assert!(clock.deadline(at) <= tokio::time::Instant::now());
    }
}
