//! Durable state: a commit log ([`log`]) that makes writes durable, and
//! fjall, an embedded LSM store, that holds and indexes them.
//!
//! Every call here blocks (disk reads, fsync): shard threads never call it
//! directly. Reads run on the runtime's blocking pool; writes go through the
//! single [`writer::Writer`] thread, which group-commits them to the log and
//! hands them to an apply thread that writes them into fjall.
//!
//! Keyspaces (README, "Storage layout"):
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `users` | user id | [`UserRecord`] |
//! | `usernames` | username | user id |
//! | `tokens` | SHA-256(token) | [`TokenRecord`] |
//! | `user_tokens` | user ‖ SHA-256(token) | `PushRegistration` (empty if none) |
//! | `conversations` | conversation id | [`ConversationRecord`] |
//! | `members` | conversation ‖ user | [`MemberRecord`] |
//! | `user_conversations` | user ‖ conversation | [`UserConversationRecord`] |
//! | `direct` | min user ‖ max user | conversation id |
//! | `messages` | conversation ‖ !seq | `pb::Message` |
//! | `last_seen` | user id | Unix ms when the user's last session ended |
//! | `idempotency` | conversation ‖ sender ‖ client_msg_id | [`IdempotencyRecord`] |

pub mod keys;
pub mod log;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chat_protocol::pb;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use prost::Message;

use self::writer::Progress;
use crate::records::{
    ConversationRecord, IdempotencyRecord, MemberRecord, PushRegistration, TokenRecord,
    UserConversationRecord, UserRecord,
};

/// Storage failures. Any of them means the store can no longer be trusted
/// to keep what it acknowledges; the server stops accepting writes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// fjall reported an error (I/O, corruption, poisoned after a failed fsync).
    #[error("store: {0}")]
    Fjall(#[from] fjall::Error),
    /// Reading or writing the commit log failed.
    #[error("commit log: {0}")]
    Log(#[from] std::io::Error),
    /// A stored record does not decode.
    #[error("corrupt record in {keyspace}: {detail}")]
    Corrupt {
        /// Where it was read.
        keyspace: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The writer thread is gone (shutdown or an earlier failure).
    #[error("storage writer stopped")]
    WriterStopped,
}

/// Longest key fjall accepts (it panics beyond). Lookups by a longer
/// client-supplied key find nothing instead of reaching fjall.
const MAX_KEY_BYTES: usize = u16::MAX as usize;

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, StorageError>;

/// Sampled state of the store's background work.
#[derive(Debug, Clone, Copy)]
pub struct StoreGauges {
    /// Bytes in memtables, active and sealed, all keyspaces.
    pub write_buffer_bytes: u64,
    /// Sealed memtables waiting for their flush.
    pub flushes_pending: usize,
    /// Journal files kept (each holds writes of a memtable not yet flushed).
    pub journal_files: usize,
    /// Commits acknowledged (in the commit log) but not yet in fjall.
    pub unapplied_commits: u64,
}

/// Names a keyspace in a [`writer::Batch`]. The discriminant is the
/// keyspace's code in the commit log: part of the log's format, so new
/// keyspaces take new numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Ks {
    /// `users`
    Users = 0,
    /// `usernames`
    Usernames = 1,
    /// `tokens`
    Tokens = 2,
    /// `user_tokens`
    UserTokens = 3,
    /// `conversations`
    Conversations = 4,
    /// `members`
    Members = 5,
    /// `user_conversations`
    UserConversations = 6,
    /// `direct`
    Direct = 7,
    /// `messages`
    Messages = 8,
    /// `idempotency`
    Idempotency = 9,
    /// `last_seen`
    LastSeen = 10,
    /// `push_outbox`
    PushOutbox = 11,
}

impl Ks {
    /// Every keyspace.
    const ALL: [Ks; 12] = [
        Ks::Users,
        Ks::Usernames,
        Ks::Tokens,
        Ks::UserTokens,
        Ks::Conversations,
        Ks::Members,
        Ks::UserConversations,
        Ks::Direct,
        Ks::Messages,
        Ks::Idempotency,
        Ks::LastSeen,
        Ks::PushOutbox,
    ];

    /// The keyspace's code in the commit log.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The keyspace with log code `code`.
    pub fn from_code(code: u8) -> Option<Ks> {
        Self::ALL.iter().copied().find(|k| k.code() == code)
    }
}

/// The keyspaces, one per kind of record.
#[derive(Clone)]
struct Keyspaces {
    users: Keyspace,
    usernames: Keyspace,
    tokens: Keyspace,
    user_tokens: Keyspace,
    conversations: Keyspace,
    members: Keyspace,
    user_conversations: Keyspace,
    direct: Keyspace,
    messages: Keyspace,
    idempotency: Keyspace,
    last_seen: Keyspace,
    push_outbox: Keyspace,
}

/// Handles to the database and its keyspaces. Cheap to clone; safe to use
/// from any thread.
///
/// Every read first waits until fjall holds every commit acknowledged
/// before it (see [`writer::Progress`]): a write is acknowledged once it is
/// in the commit log, and reaches fjall a moment later.
#[derive(Clone)]
pub struct Store {
    db: Database,
    ks: Keyspaces,
    log_dir: PathBuf,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn decode<M: Message + Default>(keyspace: &'static str, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| StorageError::Corrupt {
        keyspace,
        detail: e.to_string(),
    })
}

fn u64_value(keyspace: &'static str, bytes: &[u8]) -> Result<u64> {
    keys::first(bytes).ok_or_else(|| StorageError::Corrupt {
        keyspace,
        detail: "expected an 8-byte id".into(),
    })
}

/// Nice value of fjall's background threads.
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the scheduling priority of fjall's worker threads (memtable
/// flushes and compactions) to [`BACKGROUND_NICE`].
///
/// Nothing waits on those threads directly, but when they share a core with
/// the shards and the storage writer, a flush holding the core for tens of
/// milliseconds delays every acknowledgement queued behind it. At a lower
/// priority they run on the CPU time the latency-critical threads leave;
/// under sustained overload fjall's own write stall then slows the apply
/// thread until they catch up, so nothing grows without bound.
fn background_threads_yield() {
    #[cfg(target_os = "linux")]
    {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return;
        };
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != "fjall:worker" {
                continue;
            }
            let tid = task.file_name().to_str().and_then(|t| t.parse().ok());
            let Some(tid) = tid.and_then(rustix::process::Pid::from_raw) else {
                continue;
            };
            // A thread that exited in the meantime only makes this fail.
            match rustix::process::setpriority_process(Some(tid), BACKGROUND_NICE) {
                Ok(()) => tracing::debug!(tid = tid.as_raw_nonzero(), "storage worker yields"),
                Err(e) => {
                    tracing::debug!(cause = %e, "could not lower a storage worker's priority")
                }
            }
        }
    }
}

/// The size at which a keyspace's memtable is sealed and flushed to disk.
pub const MEMTABLE_BYTES: u64 = 16 << 20;

/// Bytes fjall's memtables may hold, all keyspaces together, before the
/// apply thread stops writing into them until some are flushed (128 MiB). While
/// fjall's workers keep up, the two busy keyspaces (messages, idempotency)
/// hold an active and at most a sealed memtable each, about half of this.
pub const WRITE_BUFFER_LIMIT: u64 = 8 * MEMTABLE_BYTES;

/// Bytes of memtables above which the apply thread waits for flushes
/// whatever else it sees (768 MiB): every keyspace's memtable at the
/// largest size any chatd store was created with (64 MiB, fjall's default,
/// before [`MEMTABLE_BYTES`]) is less, so above it a flush is always due.
pub const WRITE_BUFFER_HARD_LIMIT: u64 = 12 * (64 << 20);

impl Store {
    /// Opens (or creates) the store: fjall's database in `dir`, the commit
    /// log in `log_dir`. Replays the commit log into fjall, persists fjall,
    /// then deletes the segments replayed.
    pub fn open(dir: &Path, log_dir: &Path) -> Result<Self> {
        // At least two workers: fjall's first worker then only seals and
        // flushes memtables and never sits in a long compaction while they
        // pile up. (fjall sizes the pool by the CPUs the process may use,
        // which is one when chatd is pinned to a core.)
        let db = Database::builder(dir)
            .worker_threads(crate::config::cores().clamp(2, 4))
            .open()?;
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
        };
        let keyspaces = Keyspaces {
            users: ks("users")?,
            usernames: ks("usernames")?,
            tokens: ks("tokens")?,
            user_tokens: ks("user_tokens")?,
            conversations: ks("conversations")?,
            members: ks("members")?,
            user_conversations: ks("user_conversations")?,
            direct: ks("direct")?,
            messages: ks("messages")?,
            idempotency: ks("idempotency")?,
            last_seen: ks("last_seen")?,
            push_outbox: ks("push_outbox")?,
        };
        let mut store = Self {
            db,
            ks: keyspaces,
            log_dir: log_dir.to_path_buf(),
            progress: Arc::new(Progress::new(0)),
        };
        let replayed = log::replay(log_dir, |batch| store.apply(std::slice::from_ref(&batch)))?;
        if replayed.commits > 0 {
            tracing::info!(commits = replayed.commits, "commit log replayed");
        }
        store.db.persist(fjall::PersistMode::SyncAll)?;
        for segment in &replayed.segments {
            std::fs::remove_file(segment)?;
        }
        if !replayed.segments.is_empty() {
            log::sync_dir(log_dir)?;
        }
        store.progress = Arc::new(Progress::new(replayed.next_commit));
        background_threads_yield();
        Ok(store)
    }

    /// Writes one commit's `batches` into fjall's memtables and journal
    /// buffer, as one fjall batch and without a sync: the commit log holds
    /// them durably already.
    pub(crate) fn apply(&self, batches: &[writer::Batch]) -> Result<()> {
        let mut b = self.db.batch().durability(None);
        for op in batches.iter().flat_map(|batch| batch.ops()) {
            match op {
                writer::Op::Put(ks, k, v) => {
                    b.insert(self.keyspace(*ks), k.as_slice(), v.as_slice())
                }
                writer::Op::Delete(ks, k) => b.remove(self.keyspace(*ks), k.as_slice()),
            }
        }
        b.commit()?;
        Ok(())
    }

    /// The keyspaces, once fjall holds every commit acknowledged so far.
    fn read(&self) -> Result<&Keyspaces> {
        self.progress.settle()?;
        Ok(&self.ks)
    }

    /// The keyspaces, once fjall holds commit `commit` and those before.
    fn read_through(&self, commit: u64) -> Result<&Keyspaces> {
        self.progress.wait_applied(commit)?;
        Ok(&self.ks)
    }

    pub(crate) fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    pub(crate) fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    pub(crate) fn keyspace(&self, ks: Ks) -> &Keyspace {
        match ks {
            Ks::Users => &self.ks.users,
            Ks::Usernames => &self.ks.usernames,
            Ks::Tokens => &self.ks.tokens,
            Ks::UserTokens => &self.ks.user_tokens,
            Ks::Conversations => &self.ks.conversations,
            Ks::Members => &self.ks.members,
            Ks::UserConversations => &self.ks.user_conversations,
            Ks::Direct => &self.ks.direct,
            Ks::Messages => &self.ks.messages,
            Ks::Idempotency => &self.ks.idempotency,
            Ks::LastSeen => &self.ks.last_seen,
            Ks::PushOutbox => &self.ks.push_outbox,
        }
    }

    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// What the store holds in memory and owes the disk, for `/metrics`.
    /// Blocks while fjall rotates or deletes journal files.
    pub fn gauges(&self) -> StoreGauges {
        StoreGauges {
            write_buffer_bytes: self.db.write_buffer_size(),
            flushes_pending: self.db.outstanding_flushes(),
            journal_files: self.db.journal_count(),
            unapplied_commits: self.progress.unapplied(),
        }
    }

    /// A user's record.
    pub fn user(&self, user: u64) -> Result<Option<UserRecord>> {
        self.read()?
            .users
            .get(keys::id(user))?
            .map(|v| decode("users", &v))
            .transpose()
    }

    /// The id registered under `username`.
    pub fn user_id_by_name(&self, username: &str) -> Result<Option<u64>> {
        if username.len() > MAX_KEY_BYTES {
            return Ok(None);
        }
        self.read()?
            .usernames
            .get(username.as_bytes())?
            .map(|v| u64_value("usernames", &v))
            .transpose()
    }

    /// A session token's record, by the token's hash.
    pub fn token(&self, hash: &[u8]) -> Result<Option<TokenRecord>> {
        self.read()?
            .tokens
            .get(hash)?
            .map(|v| decode("tokens", &v))
            .transpose()
    }

    /// Hashes of every token of `user` (for "log out everywhere").
    pub fn tokens_of(&self, user: u64) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for kv in self.read()?.user_tokens.prefix(keys::id(user)) {
            let k = kv.key()?;
            if let Some(hash) = k.get(8..) {
                out.push(hash.to_vec());
            }
        }
        Ok(out)
    }

    /// The push registrations of `user`'s sessions: (token hash, record).
    pub fn push_registrations(&self, user: u64) -> Result<Vec<(Vec<u8>, PushRegistration)>> {
        let mut out = Vec::new();
        for kv in self.read()?.user_tokens.prefix(keys::id(user)) {
            let (k, v) = kv.into_inner()?;
            let Some(hash) = k.get(8..) else { continue };
            let reg: PushRegistration = decode("user_tokens", &v)?;
            if !reg.token.is_empty() {
                out.push((hash.to_vec(), reg));
            }
        }
        Ok(out)
    }

    /// A conversation's record.
    pub fn conversation(&self, conversation: u64) -> Result<Option<ConversationRecord>> {
        self.read()?
            .conversations
            .get(keys::id(conversation))?
            .map(|v| decode("conversations", &v))
            .transpose()
    }

    /// The existing direct conversation of two users.
    pub fn direct(&self, a: u64, b: u64) -> Result<Option<u64>> {
        self.read()?
            .direct
            .get(keys::direct(a, b))?
            .map(|v| u64_value("direct", &v))
            .transpose()
    }

    /// Every member of a conversation with their record.
    pub fn members(&self, conversation: u64) -> Result<Vec<(u64, MemberRecord)>> {
        let mut out = Vec::new();
        for kv in self.read()?.members.prefix(keys::id(conversation)) {
            let (k, v) = kv.into_inner()?;
            if let Some(user) = keys::pair_second(&k) {
                out.push((user, decode("members", &v)?));
            }
        }
        Ok(out)
    }

    /// One member's record.
    pub fn member(&self, conversation: u64, user: u64) -> Result<Option<MemberRecord>> {
        self.read()?
            .members
            .get(keys::pair(conversation, user))?
            .map(|v| decode("members", &v))
            .transpose()
    }

    /// The user's cursors in a conversation, if the user is a member.
    pub fn membership(
        &self,
        user: u64,
        conversation: u64,
    ) -> Result<Option<UserConversationRecord>> {
        self.read()?
            .user_conversations
            .get(keys::pair(user, conversation))?
            .map(|v| decode("user_conversations", &v))
            .transpose()
    }

    /// Every conversation of a user with the user's cursors.
    pub fn user_conversations(&self, user: u64) -> Result<Vec<(u64, UserConversationRecord)>> {
        let mut out = Vec::new();
        for kv in self.read()?.user_conversations.prefix(keys::id(user)) {
            let (k, v) = kv.into_inner()?;
            if let Some(conversation) = keys::pair_second(&k) {
                out.push((conversation, decode("user_conversations", &v)?));
            }
        }
        Ok(out)
    }

    /// One message.
    pub fn message(&self, conversation: u64, seq: u64) -> Result<Option<pb::Message>> {
        match self
            .read()?
            .messages
            .get(keys::message(conversation, seq))?
        {
            Some(v) => Ok(Some(decode("messages", &v)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` messages whose push notifications were not finished,
    /// as `(conversation, seq)`, oldest conversation first.
    pub fn push_outbox(&self, limit: usize) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for kv in self.read()?.push_outbox.iter().take(limit) {
            let key = kv.key()?;
            if let (Some(c), Some(s)) = (keys::first(&key), keys::pair_second(&key)) {
                out.push((c, s));
            }
        }
        Ok(out)
    }

    /// The newest message of a conversation.
    pub fn last_message(&self, conversation: u64) -> Result<Option<pb::Message>> {
        Ok(self.messages_before(conversation, 0, 1)?.into_iter().next())
    }

    /// Highest seq stored for a conversation (0 if none).
    pub fn last_seq(&self, conversation: u64) -> Result<u64> {
        match self.read()?.messages.prefix(keys::id(conversation)).next() {
            Some(kv) => Ok(keys::message_seq(&kv.key()?).unwrap_or(0)),
            None => Ok(0),
        }
    }

    /// Up to `limit` messages with seq < `before_seq` (all if 0), newest first.
    pub fn messages_before(
        &self,
        conversation: u64,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<pb::Message>> {
        let mut out = Vec::with_capacity(limit.min(256));
        let iter = if before_seq == 0 {
            self.read()?.messages.prefix(keys::id(conversation))
        } else if before_seq == 1 {
            return Ok(out);
        } else {
            self.read()?
                .messages
                .range(keys::message(conversation, before_seq - 1)..=keys::message(conversation, 1))
        };
        for kv in iter.take(limit) {
            out.push(decode("messages", &kv.value()?)?);
        }
        Ok(out)
    }

    /// Up to `limit` messages with seq > `after_seq`, oldest first.
    pub fn messages_after(
        &self,
        conversation: u64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<pb::Message>> {
        let mut out = Vec::with_capacity(limit.min(256));
        if after_seq == u64::MAX {
            return Ok(out);
        }
        let iter = self
            .read()?
            .messages
            .range(
                keys::message(conversation, u64::MAX)..=keys::message(conversation, after_seq + 1),
            )
            .rev();
        for kv in iter.take(limit) {
            out.push(decode("messages", &kv.value()?)?);
        }
        Ok(out)
    }

    /// The original ack of an earlier send with the same idempotency key,
    /// once fjall holds commit `applied_through` and those before (not
    /// every commit acknowledged so far, as other reads wait for: the
    /// conversation's owner knows which commit holds the newest key it no
    /// longer remembers, and this lookup is on the path of every send).
    pub fn idempotency(
        &self,
        applied_through: u64,
        conversation: u64,
        sender: u64,
        client_msg_id: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        if client_msg_id.len() > MAX_KEY_BYTES - 16 {
            return Ok(None);
        }
        self.read_through(applied_through)?
            .idempotency
            .get(keys::idempotency(conversation, sender, client_msg_id))?
            .map(|v| decode("idempotency", &v))
            .transpose()
    }

    /// When the user's last session ended (0 if never recorded).
    pub fn last_seen(&self, user: u64) -> Result<u64> {
        Ok(self
            .read()?
            .last_seen
            .get(keys::id(user))?
            .and_then(|v| keys::first(&v))
            .unwrap_or(0))
    }

    /// Highest user id in use (0 if none).
    pub fn max_user_id(&self) -> Result<u64> {
        Self::max_key(&self.read()?.users)
    }

    /// Highest conversation id in use (0 if none).
    pub fn max_conversation_id(&self) -> Result<u64> {
        Self::max_key(&self.read()?.conversations)
    }

    fn max_key(ks: &Keyspace) -> Result<u64> {
        match ks.last_key_value() {
            Some(kv) => Ok(keys::first(&kv.key()?).unwrap_or(0)),
            None => Ok(0),
        }
    }

    /// Every conversation id with its last seq, for recovery at start-up.
    pub fn all_last_seqs(&self) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for kv in self.read()?.conversations.iter() {
            let key = kv.key()?;
            if let Some(conversation) = keys::first(&key) {
                out.push((conversation, self.last_seq(conversation)?));
            }
        }
        Ok(out)
    }
}
