//! Assigns time-ordered message ids (`chat_protocol::MessageId`). Sans-IO:
//! the caller passes the time.

use chat_protocol::MessageId;

/// One per shard; ids it returns strictly increase even if the wall clock
/// steps backwards or more than 4096 ids are needed in one millisecond (the
/// generator then borrows from the next millisecond).
#[derive(Debug)]
pub struct MessageIdGenerator {
    generator: u16,
    last_ms: u64,
    counter: u16,
}

impl MessageIdGenerator {
    /// A generator with the given node/shard number (10 bits used).
    pub fn new(generator: u16) -> Self {
        Self {
            generator,
            last_ms: 0,
            counter: 0,
        }
    }

    /// The next id at wall-clock time `now_ms`.
    pub fn next(&mut self, now_ms: u64) -> MessageId {
        const MAX_COUNTER: u16 = (1 << MessageId::COUNTER_BITS) - 1;
        if now_ms > self.last_ms {
            self.last_ms = now_ms;
            self.counter = 0;
        } else if self.counter == MAX_COUNTER {
            self.last_ms += 1;
            self.counter = 0;
        } else {
            self.counter += 1;
        }
        MessageId::from_parts(self.last_ms, self.generator, self.counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_through_clock_steps_and_bursts() {
        let mut g = MessageIdGenerator::new(3);
        let mut last = g.next(1000);
        for now in [1000, 1000, 999, 500, 1001] {
            let id = g.next(now);
            assert!(id > last);
            last = id;
        }
        for _ in 0..10_000 {
            let id = g.next(2000);
            assert!(id > last);
            assert_eq!(id.generator(), 3);
            last = id;
        }
        assert!(
            last.unix_ms() > 2000,
            "a burst borrows from later milliseconds"
        );
    }
}

/// Ids given out in cluster mode are those equal to the node's number
/// modulo this, so that no two nodes give out the same one.
pub const NODE_STRIDE: u64 = 1024;

/// The next user or conversation id after `last` (the highest given out or
/// stored), for node `node` (0: single-node mode, every id in turn).
pub fn next_id(last: &std::sync::atomic::AtomicU64, node: u16) -> u64 {
    use std::sync::atomic::Ordering;
    if node == 0 {
        return last.fetch_add(1, Ordering::Relaxed) + 1;
    }
    let after = |l: u64| {
        let mine = l - l % NODE_STRIDE + u64::from(node);
        if mine > l { mine } else { mine + NODE_STRIDE }
    };
    let mut cur = last.load(Ordering::Relaxed);
    loop {
        let next = after(cur);
        match last.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => cur = seen,
        }
    }
}

#[cfg(test)]
mod node_ids {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn each_node_gives_out_its_own_ids() {
        let last = AtomicU64::new(5000);
        let a = next_id(&last, 3);
        let b = next_id(&last, 3);
        assert_eq!(a % NODE_STRIDE, 3);
        assert!(a > 5000 && b == a + NODE_STRIDE);
        let single = AtomicU64::new(7);
        assert_eq!(next_id(&single, 0), 8);
    }
}
