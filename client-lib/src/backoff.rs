//! Reconnect delays: exponential backoff with jitter. Sans-IO: the caller
//! supplies the random numbers, so tests are deterministic.

use std::time::Duration;

/// Delays between reconnect attempts.
///
/// The nominal delay starts at `min` and doubles after every attempt up to
/// `max`; each actual delay is drawn uniformly from `[nominal / 2, nominal]`
/// so that clients dropped together by a server restart do not come back
/// together.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    max: Duration,
    nominal: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            max: max.max(min),
            nominal: min,
        }
    }

    /// The delay before the next attempt; `jitter` is uniform in `[0, 1)`.
    pub(crate) fn next_delay(&mut self, jitter: f64) -> Duration {
        let d = self.nominal;
        self.nominal = (self.nominal * 2).min(self.max);
        d.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// The delay a GoAway asks for, plus up to half of it again as jitter
/// (`spec/messages.md`, "GoAway": "after this delay (plus jitter)").
pub(crate) fn go_away_delay(requested: Duration, jitter: f64) -> Duration {
    requested + requested.mul_f64(0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_maximum_within_jitter_bounds() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let highs: Vec<_> = (0..6).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(
            highs,
            [100, 200, 400, 800, 1000, 1000].map(|m| m * MS).to_vec()
        );
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        assert_eq!(b.next_delay(0.0), 50 * MS);
        assert_eq!(b.next_delay(0.5), 150 * MS);
    }

    #[test]
    fn degenerate_settings_stay_usable() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.next_delay(1.0), MS);
        assert_eq!(b.next_delay(1.0), MS);
    }

    #[test]
    fn go_away_adds_up_to_half_again() {
        assert_eq!(go_away_delay(1000 * MS, 0.0), 1000 * MS);
        assert_eq!(go_away_delay(1000 * MS, 1.0), 1500 * MS);
    }
}
