//! Bounded lock-free rings between shards, generic over what they carry
//! (the server's shards carry [`ShardMsg`](crate::shard_msg::ShardMsg)).
//!
//! One ring per ordered pair of shards (`src → dst`), each bounded by
//! `mesh_ring_capacity`. A sender whose ring is full waits for the receiver
//! to make room (backpressure, never loss); the receiving shard's drain loop
//! never waits on a ring itself, so a cycle of full rings cannot deadlock.

use std::pin::pin;

use crossbeam::queue::ArrayQueue;
use tokio::sync::Notify;

/// Index of a shard, `0..nr_shards`.
pub type ShardId = usize;

/// The source index of the cluster link ([`crate::cluster`]): besides the
/// shards, it has one ring towards each shard. Nothing sends towards it.
pub fn link_source(nr_shards: usize) -> ShardId {
    nr_shards
}

/// Messages drained from one ring per turn before the others get their go.
pub const DRAIN_PER_RING: usize = 256;

/// The rings and their wake-ups.
#[derive(Debug)]
pub struct Mesh<T> {
    nr_shards: usize,
    /// `rings[src * nr_shards + dst]`, sources `0..=nr_shards` (the last
    /// is the cluster link, [`link_source`]).
    rings: Vec<ArrayQueue<T>>,
    /// Wakes the receiving shard: `data[dst]`.
    data: Vec<Notify>,
    /// Wakes senders waiting for room: `space[src * nr_shards + dst]`.
    space: Vec<Notify>,
}

impl<T> Mesh<T> {
    /// A mesh of `nr_shards²` rings of `capacity` messages each, and one
    /// from the cluster link to each shard.
    pub fn new(nr_shards: usize, capacity: usize) -> Self {
        let n = (nr_shards + 1) * nr_shards;
        Self {
            nr_shards,
            rings: (0..n).map(|_| ArrayQueue::new(capacity.max(1))).collect(),
            data: (0..nr_shards).map(|_| Notify::new()).collect(),
            space: (0..n).map(|_| Notify::new()).collect(),
        }
    }

    /// Number of shards.
    pub fn nr_shards(&self) -> usize {
        self.nr_shards
    }

    /// The ring from `src` to `dst`; past the end (so no ring) if `dst`
    /// is not a shard.
    fn index(&self, src: ShardId, dst: ShardId) -> usize {
        if dst >= self.nr_shards {
            return usize::MAX;
        }
        src * self.nr_shards + dst
    }

    /// Sends `msg` from `src` to `dst`, waiting while the ring is full.
    pub async fn send(&self, src: ShardId, dst: ShardId, mut msg: T) {
        let i = self.index(src, dst);
        let (Some(ring), Some(space), Some(data)) =
            (self.rings.get(i), self.space.get(i), self.data.get(dst))
        else {
            return;
        };
        loop {
            // Register interest before trying, so a pop between the failed
            // push and the wait is not missed.
            let mut room = pin!(space.notified());
            room.as_mut().enable();
            match ring.push(msg) {
                Ok(()) => {
                    data.notify_one();
                    return;
                }
                Err(back) => msg = back,
            }
            room.await;
        }
    }

    /// [`Mesh::send`] without waiting: gives `msg` back if the ring is full.
    pub fn try_send(&self, src: ShardId, dst: ShardId, msg: T) -> Result<(), T> {
        let i = self.index(src, dst);
        let (Some(ring), Some(data)) = (self.rings.get(i), self.data.get(dst)) else {
            return Ok(());
        };
        ring.push(msg)?;
        data.notify_one();
        Ok(())
    }

    /// Takes up to [`DRAIN_PER_RING`] messages from every ring into `dst`,
    /// handing each to `handle`. Returns how many were taken. Never waits.
    pub fn drain(&self, dst: ShardId, mut handle: impl FnMut(T)) -> usize {
        let mut taken = 0;
        for src in 0..=self.nr_shards {
            let i = self.index(src, dst);
            let Some(ring) = self.rings.get(i) else {
                continue;
            };
            let mut n = 0;
            while n < DRAIN_PER_RING {
                let Some(msg) = ring.pop() else { break };
                handle(msg);
                n += 1;
            }
            if n > 0 {
                if let Some(space) = self.space.get(i) {
                    space.notify_waiters();
                }
            }
            taken += n;
        }
        taken
    }

    /// Waits until a message for `dst` may be available.
    pub async fn readable(&self, dst: ShardId) {
        if let Some(data) = self.data.get(dst) {
            data.notified().await;
        }
    }

    /// Messages queued towards `dst`, for metrics.
    pub fn depth(&self, dst: ShardId) -> usize {
        (0..=self.nr_shards)
            .filter_map(|src| self.rings.get(self.index(src, dst)))
            .map(|r| r.len())
            .sum()
    }
}
