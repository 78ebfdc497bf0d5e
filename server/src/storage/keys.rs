//! Key encodings. All integers are big-endian so that keys sort by value.
//! Message keys store the bitwise complement of the seq, so a forward scan of
//! a conversation's prefix yields the newest message first: "the latest N"
//! (first history page, last message, last seq) is a forward read.

/// `u64` as 8 big-endian bytes.
pub fn id(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Two ids, e.g. conversation ‖ user.
pub fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

/// `messages` key: conversation ‖ !seq.
pub fn message(conversation: u64, seq: u64) -> [u8; 16] {
    pair(conversation, !seq)
}

/// Seq from a `messages` key, if it is one.
pub fn message_seq(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(!u64::from_be_bytes(tail))
}

/// The second id of a 16-byte pair key.
pub fn pair_second(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// The first id of a key.
pub fn first(key: &[u8]) -> Option<u64> {
    let head: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

/// `idempotency` key: conversation ‖ sender ‖ client_msg_id.
pub fn idempotency(conversation: u64, sender: u64, client_msg_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + client_msg_id.len());
    k.extend_from_slice(&pair(conversation, sender));
    k.extend_from_slice(client_msg_id.as_bytes());
    k
}

/// `idempotency` key as the index holds it: conversation ‖ sender ‖ the
/// XXH3-128 digest of client_msg_id (big-endian). Fixed-size, so a
/// segment's keys sort and store without an allocation each. Two ids of
/// one sender in one conversation share a digest with probability 2⁻¹²⁸;
/// a sender who built such a pair on purpose only has their own second
/// send answered as a retry of the first.
pub fn idempotency_digest(conversation: u64, sender: u64, client_msg_id: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&pair(conversation, sender));
    k[16..].copy_from_slice(&xxhash_rust::xxh3::xxh3_128(client_msg_id).to_be_bytes());
    k
}

/// The indexed form ([`idempotency_digest`]) of an [`idempotency`] key.
pub fn idempotency_indexed(key: &[u8]) -> Option<[u8; 32]> {
    let (conversation, sender) = (first(key)?, pair_second(key)?);
    Some(idempotency_digest(conversation, sender, key.get(16..)?))
}

/// `reactors` key: conversation ‖ seq ‖ user.
pub fn reactor(conversation: u64, seq: u64, user: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&pair(conversation, seq));
    k[16..].copy_from_slice(&user.to_be_bytes());
    k
}

/// `mentions` key: user (0 for @everyone) ‖ conversation ‖ seq.
pub fn mention(user: u64, conversation: u64, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&pair(user, conversation));
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `direct` key: the two users of a direct conversation, smaller id first.
pub fn direct(a: u64, b: u64) -> [u8; 16] {
    pair(a.min(b), a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_messages_sort_first() {
        assert!(message(7, 2) < message(7, 1));
        assert!(message(7, 1) < message(8, u64::MAX));
        assert_eq!(message_seq(&message(7, 42)), Some(42));
    }
}
