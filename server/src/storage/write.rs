//! The typed write side of the store: one [`Batch`] method per record
//! kind, so each record's keys, keyspaces and encoding are spelled out once
//! and every module that writes one says what it writes, not how.
//!
//! Reads are [`Store`](super::Store)'s methods; the layout of each keyspace
//! is in the `storage` module's docs and `keys`.

use chat_protocol::pb;

use super::writer::Batch;
use super::{Ks, keys};
use crate::records::{
    BanRecord, ConversationRecord, IdempotencyRecord, MemberRecord, PushRegistration,
    ReactionCounts, TokenRecord, UserConversationRecord, UserReactions, UserRecord,
};

impl Batch {
    /// A user's account record.
    pub fn put_user(&mut self, user: u64, record: &UserRecord) {
        self.put_encoded(Ks::Users, keys::id(user), record);
    }

    /// The index from a username to its user.
    pub fn put_username(&mut self, username: &str, user: u64) {
        self.put(Ks::Usernames, username.as_bytes(), keys::id(user));
    }

    /// A session token (by its hash) and the user's index entry for it,
    /// with no push registration yet.
    pub fn put_token(&mut self, hash: &[u8], record: &TokenRecord) {
        self.put_encoded(Ks::Tokens, hash, record);
        self.set_push_registration(record.user_id, hash, None);
    }

    /// Removes a token (by its hash) and its index entry, which holds the
    /// device's push registration.
    pub fn revoke_token(&mut self, user: u64, hash: &[u8]) {
        self.delete(Ks::UserTokens, token_index(user, hash));
        self.delete(Ks::Tokens, hash);
    }

    /// Where the device holding token `hash` of `user` gets push
    /// notifications; `None`: nowhere (the session stays).
    pub fn set_push_registration(
        &mut self,
        user: u64,
        hash: &[u8],
        registration: Option<&PushRegistration>,
    ) {
        let key = token_index(user, hash);
        match registration {
            Some(registration) => {
                self.put_encoded(Ks::UserTokens, key, registration);
            }
            None => self.put(Ks::UserTokens, key, []),
        }
    }

    /// A conversation's record.
    pub fn put_conversation(&mut self, id: u64, record: &ConversationRecord) {
        self.put_encoded(Ks::Conversations, keys::id(id), record);
    }

    /// The unique direct conversation of `a` and `b`.
    pub fn put_direct(&mut self, a: u64, b: u64, conversation: u64) {
        self.put(Ks::Direct, keys::direct(a, b), keys::id(conversation));
    }

    /// A new member: their record in the conversation and the
    /// conversation in their list, joined at `member.joined_seq`.
    pub fn add_member(&mut self, conversation: u64, user: u64, member: &MemberRecord) {
        self.put_member(conversation, user, member);
        let listed = UserConversationRecord {
            joined_seq: member.joined_seq,
        };
        self.put_encoded(
            Ks::UserConversations,
            keys::pair(user, conversation),
            &listed,
        );
    }

    /// A member's changed role or receipt cursors.
    pub fn put_member(&mut self, conversation: u64, user: u64, member: &MemberRecord) {
        self.put_encoded(Ks::Members, keys::pair(conversation, user), member);
    }

    /// A member leaves: both sides of [`add_member`](Self::add_member).
    pub fn remove_member(&mut self, conversation: u64, user: u64) {
        self.delete(Ks::Members, keys::pair(conversation, user));
        self.delete(Ks::UserConversations, keys::pair(user, conversation));
    }

    /// A message, encoded into the batch. Returns the encoding's place in
    /// [`Batch::encoded`], for a push that reuses it.
    pub fn put_message(&mut self, message: &pb::Message) -> std::ops::Range<usize> {
        let key = keys::message(message.conversation_id, message.seq);
        self.put_encoded(Ks::Messages, key, message)
    }

    /// Message `seq` by `sender` mentions `user` (0: everyone).
    pub fn put_mention(&mut self, user: u64, conversation: u64, seq: u64, sender: u64) {
        self.put(
            Ks::Mentions,
            keys::mention(user, conversation, seq),
            keys::id(sender),
        );
    }

    /// Message `seq` no longer mentions `user` (0: everyone): it was deleted.
    pub fn delete_mention(&mut self, user: u64, conversation: u64, seq: u64) {
        self.delete(Ks::Mentions, keys::mention(user, conversation, seq));
    }

    /// `user` asked to upload media `id`.
    pub fn put_user_media(&mut self, user: u64, id: &str) {
        self.put(Ks::UserMedia, user_media_key(user, id), Vec::new());
    }

    /// Forgets that `user` uploaded media `id`.
    pub fn delete_user_media(&mut self, user: u64, id: &str) {
        self.delete(Ks::UserMedia, user_media_key(user, id));
    }

    /// Forgets when `user` was last online.
    pub fn delete_last_seen(&mut self, user: u64) {
        self.delete(Ks::LastSeen, keys::id(user));
    }

    /// `user` is banned from `conversation`.
    pub fn put_ban(&mut self, conversation: u64, user: u64, record: &BanRecord) {
        self.put_encoded(Ks::Bans, keys::pair(conversation, user), record);
    }

    /// `user`'s ban from `conversation` is lifted.
    pub fn delete_ban(&mut self, conversation: u64, user: u64) {
        self.delete(Ks::Bans, keys::pair(conversation, user));
    }

    /// `blocker` blocks `blocked`.
    pub fn put_block(&mut self, blocker: u64, blocked: u64) {
        self.put(Ks::Blocks, keys::pair(blocker, blocked), Vec::new());
    }

    /// `blocker` lifts the block of `blocked`.
    pub fn delete_block(&mut self, blocker: u64, blocked: u64) {
        self.delete(Ks::Blocks, keys::pair(blocker, blocked));
    }

    /// A message's reaction counts; none left deletes the record.
    pub fn put_reaction_counts(&mut self, conversation: u64, seq: u64, counts: &ReactionCounts) {
        let key = keys::pair(conversation, seq);
        if counts.counts.is_empty() {
            self.delete(Ks::Reactions, key);
        } else {
            self.put_encoded(Ks::Reactions, key, counts);
        }
    }

    /// The emoji `user` reacted to a message with; none deletes the record.
    pub fn put_user_reactions(
        &mut self,
        conversation: u64,
        seq: u64,
        user: u64,
        mine: &UserReactions,
    ) {
        let key = keys::reactor(conversation, seq, user);
        if mine.emoji.is_empty() {
            self.delete(Ks::Reactors, key);
        } else {
            self.put_encoded(Ks::Reactors, key, mine);
        }
    }

    /// The ack of `sender`'s send with `client_msg_id`, for retries.
    pub fn put_idempotency(
        &mut self,
        conversation: u64,
        sender: u64,
        client_msg_id: &str,
        record: &IdempotencyRecord,
    ) {
        // The key of `keys::idempotency`, written in place.
        let key = [
            &keys::pair(conversation, sender)[..],
            client_msg_id.as_bytes(),
        ];
        self.put_encoded_parts(Ks::Idempotency, &key, record);
    }

    /// When `user` was last online, in Unix milliseconds.
    pub fn put_last_seen(&mut self, user: u64, at_ms: u64) {
        self.put(Ks::LastSeen, keys::id(user), at_ms.to_be_bytes());
    }

    /// A push notification of message `seq` of `conversation` not yet
    /// handed to the gateway.
    pub fn put_outbox(&mut self, conversation: u64, seq: u64) {
        self.put(Ks::PushOutbox, keys::pair(conversation, seq), []);
    }

    /// A push notification handed to the gateway (or given up), by its key.
    pub fn delete_outbox(&mut self, key: [u8; 16]) {
        self.delete(Ks::PushOutbox, key);
    }
}

/// `user_tokens` key: user ‖ token hash.
pub fn token_index(user: u64, hash: &[u8]) -> Vec<u8> {
    let mut key = keys::id(user).to_vec();
    key.extend_from_slice(hash);
    key
}

impl Batch {
    /// Cluster mode: marks stream sequence `seq` as applied, in the same
    /// commit as its writes.
    pub fn put_cluster_applied(&mut self, seq: u64) {
        self.put(Ks::Meta, super::CLUSTER_APPLIED, keys::id(seq));
    }
}

/// `user_media` key: user ‖ media id.
fn user_media_key(user: u64, id: &str) -> Vec<u8> {
    let mut k = keys::id(user).to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}
