//! Homes: keyed check-then-write without a lock shared between shards.
//!
//! A few writes must not interleave with another of the same key: a
//! username is taken once, two users have one direct chat, a user record is
//! read, changed and written whole. Each such key has a home shard (a hash
//! of the key, [`home_of`]). The write runs on a blocking thread of the home
//! shard while that shard's lane is held: two writes of one key never
//! overlap, and writes of keys homed on other shards never wait for it. The
//! lane belongs to its shard alone (only that shard's tasks take it), so no
//! shard ever waits on a lock another shard holds; work for another home
//! travels over the mesh as a [`Job`].
//!
//! Failed logins are counted at home too: a username's failures on the
//! username's home shard, an address's on the address's, each in that
//! shard's [`LoginLimiter`], touched only on its thread. Both limits hold
//! exactly however a client spreads its attempts over connections and
//! shards.
//!
//! Password hashing is bounded per shard: each shard runs at most its share
//! of the machine's cores of argon2 at once ([`Home::hashing`]).

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::time::{Duration, Instant};

use chat_protocol::UserId;
use tokio::sync::{Semaphore, oneshot};

use crate::limits::{LoginKey, LoginLimiter};
use crate::mesh::ShardId;

/// A key whose writes are serialised at its home shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A username being taken (Register).
    Username(String),
    /// A user record being read, changed and written (profile, password).
    User(UserId),
    /// The direct chat of two users (the smaller id first).
    DirectPair(UserId, UserId),
    /// A login-limit key (never a lane: failures are counted at home).
    Login(LoginKey),
}

impl Key {
    /// The direct-chat key of `a` and `b`, in either order.
    pub fn direct(a: UserId, b: UserId) -> Self {
        Key::DirectPair(a.min(b), a.max(b))
    }
}

/// The home shard of `key` among `nr_shards`. Stable for a process's life
/// (the hash has fixed keys); nothing stored depends on it.
pub fn home_of(key: &Key, nr_shards: usize) -> ShardId {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % nr_shards.max(1) as u64) as ShardId
}

/// Blocking work for a key's home shard. `work` runs on a blocking thread
/// of the home shard (holding its lane when `serial`) and sends its own
/// answer; dropped unrun (the home shutting down), its answer channel
/// closes.
pub struct Job {
    /// Holds the home's lane while running.
    pub serial: bool,
    /// The work.
    pub work: Box<dyn FnOnce() + Send>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("serial", &self.serial).finish()
    }
}

/// A failed-login count operation for a key's home shard.
#[derive(Debug)]
pub enum LoginOp {
    /// May an attempt counted against `key` proceed? `Err` says how long
    /// to wait.
    Check {
        /// The key.
        key: LoginKey,
        /// The time of the attempt.
        now: Instant,
        /// The answer.
        answer: oneshot::Sender<Result<(), Duration>>,
    },
    /// An attempt counted against `key` failed.
    Failed {
        /// The key.
        key: LoginKey,
        /// The time of the attempt.
        now: Instant,
    },
}

/// What a shard keeps as the home of its keys.
#[derive(Debug)]
pub struct Home {
    lane: Rc<tokio::sync::Mutex<()>>,
    logins: RefCell<LoginLimiter>,
    /// Password hashes (Register, Login, ChangePassword) this shard computes
    /// at once. Each holds `argon2_memory_kib` and a blocking thread for tens
    /// of milliseconds; a flood of logins waits here instead of taking every
    /// blocking thread (which store reads need) and gigabytes of memory.
    pub hashing: Semaphore,
}

impl Home {
    /// A home counting at most `per_username` and `per_address` failed
    /// logins a minute, hashing at most `hashing` passwords at once.
    pub fn new(per_username: u32, per_address: u32, hashing: usize) -> Self {
        Self {
            lane: Rc::new(tokio::sync::Mutex::new(())),
            logins: RefCell::new(LoginLimiter::new(
                per_username,
                per_address,
                Duration::from_secs(60),
            )),
            hashing: Semaphore::new(hashing.max(1)),
        }
    }

    /// Runs `job` on this shard's blocking pool, in lane order if serial.
    /// Must be called on this home's shard thread.
    pub fn run(&self, job: Job) {
        let lane = self.lane.clone();
        tokio::task::spawn_local(async move {
            let _held = if job.serial {
                Some(lane.lock().await)
            } else {
                None
            };
            // A panic in the work drops its answer channel: the caller
            // sees the home fail, not a hang.
            let _ = tokio::task::spawn_blocking(job.work).await;
        });
    }

    /// Carries out a failed-login count operation.
    pub fn login(&self, op: LoginOp) {
        let mut logins = self.logins.borrow_mut();
        match op {
            LoginOp::Check { key, now, answer } => {
                let _ = answer.send(logins.check(&key, now));
            }
            LoginOp::Failed { key, now } => logins.failed(key, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_shards_and_stay_put() {
        let shards: std::collections::HashSet<ShardId> =
            (0..64).map(|u| home_of(&Key::User(UserId(u)), 4)).collect();
        assert_eq!(shards.len(), 4);
        let k = Key::Username("alice".into());
        assert_eq!(home_of(&k, 4), home_of(&k.clone(), 4));
        assert_eq!(
            Key::direct(UserId(7), UserId(3)),
            Key::direct(UserId(3), UserId(7))
        );
        assert_eq!(home_of(&k, 1), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serial_jobs_of_a_home_never_overlap() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let home = Home::new(1, 1, 1);
                let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let mut answers = Vec::new();
                for _ in 0..8 {
                    let (tx, rx) = oneshot::channel();
                    let running = running.clone();
                    home.run(Job {
                        serial: true,
                        work: Box::new(move || {
                            use std::sync::atomic::Ordering::SeqCst;
                            let overlapped = running.fetch_add(1, SeqCst) != 0;
                            std::thread::sleep(Duration::from_millis(2));
                            running.fetch_sub(1, SeqCst);
                            let _ = tx.send(overlapped);
                        }),
                    });
                    answers.push(rx);
                }
                for rx in answers {
                    assert_eq!(rx.await, Ok(false));
                }
            })
            .await;
    }

    #[test]
    fn failures_are_counted_per_key() {
        let home = Home::new(1, 5, 1);
        let now = Instant::now();
        let key = LoginKey::Username("alice".into());
        home.login(LoginOp::Failed {
            key: key.clone(),
            now,
        });
        let (tx, mut rx) = oneshot::channel();
        home.login(LoginOp::Check {
            key,
            now,
            answer: tx,
        });
        assert!(matches!(rx.try_recv(), Ok(Err(_))));
    }
}
