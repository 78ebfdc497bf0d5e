//! Sleeping to a send's scheduled time with microsecond precision.
//!
//! tokio's timer rounds every deadline up to the next millisecond tick, so
//! streams paced by it leave together, one burst per tick: at 20,000
//! messages a second, 20 to 40 sends at once instead of one every 50 µs.
//! The server then sees each burst as a queue, and the last send of a
//! burst measures the time the others took. A rate-paced stream sleeps on
//! its own `timerfd` instead, which the kernel fires at the time asked
//! (within the thread's timer slack, 50 µs by default).

use std::io;
use std::time::{Duration, Instant};

use rustix::fd::OwnedFd;
use rustix::thread::Timespec;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_settime,
};
use tokio::io::unix::AsyncFd;

/// One stream's timer.
pub struct Pacer {
    timer: Option<AsyncFd<OwnedFd>>,
}

impl Pacer {
    /// A timer on `CLOCK_MONOTONIC` (the clock of [`Instant`]); where none
    /// can be made, tokio's timer is used.
    pub fn new() -> Self {
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .map_err(io::Error::from)
        // `AsyncFd::new` is deprecated because the descriptor of an inner
        // value that only borrows it could be closed while registered. An
        // `OwnedFd` is closed only when the `AsyncFd` drops it, after it
        // has been deregistered, so this use keeps I/O safety without the
        // `unsafe` of `AsyncFd::register`.
        .and_then(
            #[allow(deprecated)]
            AsyncFd::new,
        );
        Self { timer: timer.ok() }
    }

    /// Returns at `deadline` (at once if it has passed).
    pub async fn sleep_until(&self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if let Some(timer) = &self.timer {
            if wait(timer, left).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Arms `timer` to fire once after `left` and waits until it has.
async fn wait(timer: &AsyncFd<OwnedFd>, left: Duration) -> io::Result<()> {
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let once = Itimerspec {
        it_interval: zero,
        it_value: Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        },
    };
    timerfd_settime(timer.get_ref(), TimerfdTimerFlags::empty(), &once)?;
    loop {
        let mut ready = timer.readable().await?;
        // The expiration count, which is all a read of a timerfd returns.
        let mut count = [0u8; 8];
        match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut count)?)) {
            Ok(read) => return read.map(drop),
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleeps_until_the_deadline_and_not_before() {
        let pacer = Pacer::new();
        assert!(pacer.timer.is_some(), "timerfd is available on Linux");
        for micros in [0u64, 150, 2_500] {
            let deadline = Instant::now() + Duration::from_micros(micros);
            pacer.sleep_until(deadline).await;
            assert!(Instant::now() >= deadline);
        }
    }
}
