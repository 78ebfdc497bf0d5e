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
