//! Typed identifiers, so that a user id is never passed where a conversation
//! id is expected. On the wire they are plain integers.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw wire value.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A registered user. Never 0.
    UserId
);
id_type!(
    /// A direct chat, group or channel. Never 0.
    ConversationId
);
id_type!(
    /// Position of a message in its conversation: 1, 2, 3, … without gaps.
    Seq
);

/// Globally unique, time-ordered message id (`spec/messages.md`, "Message").
///
/// Layout, most significant bit first:
///
/// | bits | field |
/// |---|---|
/// | 42 | milliseconds since the Unix epoch (good until the year 2109) |
/// | 10 | generator: the node and shard that assigned it |
/// | 12 | counter within the millisecond |
///
/// Ids from one generator strictly increase; ids from different generators
/// order by time to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MessageId(pub u64);

impl MessageId {
    /// Bits of the generator field.
    pub const GENERATOR_BITS: u32 = 10;
    /// Bits of the counter field.
    pub const COUNTER_BITS: u32 = 12;

    /// Builds an id from its fields; each is truncated to its width.
    pub const fn from_parts(unix_ms: u64, generator: u16, counter: u16) -> Self {
        let gen_mask = (1u64 << Self::GENERATOR_BITS) - 1;
        let ctr_mask = (1u64 << Self::COUNTER_BITS) - 1;
        Self(
            (unix_ms << (Self::GENERATOR_BITS + Self::COUNTER_BITS))
                | ((generator as u64 & gen_mask) << Self::COUNTER_BITS)
                | (counter as u64 & ctr_mask),
        )
    }

    /// Milliseconds since the Unix epoch at which the id was assigned.
    pub const fn unix_ms(self) -> u64 {
        self.0 >> (Self::GENERATOR_BITS + Self::COUNTER_BITS)
    }

    /// The generator (node and shard) that assigned the id.
    pub const fn generator(self) -> u16 {
        ((self.0 >> Self::COUNTER_BITS) & ((1 << Self::GENERATOR_BITS) - 1)) as u16
    }

    /// The counter within the millisecond.
    pub const fn counter(self) -> u16 {
        (self.0 & ((1 << Self::COUNTER_BITS) - 1)) as u16
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_round_trips_its_fields_and_orders_by_time() {
        let a = MessageId::from_parts(1_700_000_000_000, 5, 4095);
        assert_eq!(a.unix_ms(), 1_700_000_000_000);
        assert_eq!(a.generator(), 5);
        assert_eq!(a.counter(), 4095);
        let b = MessageId::from_parts(1_700_000_000_001, 0, 0);
        assert!(b > a);
    }
}
