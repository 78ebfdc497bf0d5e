//! Durable state: a commit log ([`log`]) that makes writes durable and
//! keeps the messages ([`segments`]), and fjall, an embedded LSM store,
//! that holds everything else and indexes the messages.
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
//! | `message_runs` | conversation ‖ !highest seq | a conversation's new messages in one segment: [`segments::Run`] |
//! | `message_index` | conversation ‖ !seq | [`segments::Loc`] of a newer version of a message (a deletion), or of a message indexed before runs; wins over a run |
//! | `last_seen` | user id | Unix ms when the user's last session ended |
//! | `idempotency` | conversation ‖ sender ‖ XXH3-128(client_msg_id) ([`keys::idempotency_digest`]; conversation ‖ sender ‖ client_msg_id in stores written before) | [`IdempotencyRecord`] |
//! | `reactions` | conversation ‖ seq | [`ReactionCounts`] of the message |
//! | `reactors` | conversation ‖ seq ‖ user | [`UserReactions`]: the emoji the user reacted with |
//! | `blocks` | blocker ‖ blocked user | empty |
//! | `bans` | conversation ‖ user | [`crate::records::BanRecord`] |
//! | `user_media` | user ‖ media id | empty: the user asked to upload it |
//! | `mentions` | user (0: @everyone) ‖ conversation ‖ seq | the sender's id |
//! | `meta` | `indexed_through` | last commit whose segment fjall has indexed and persisted |
//! | `meta` | `cluster_applied` | cluster mode: the last JetStream stream sequence this store holds |

pub mod backup;
pub mod keys;
pub mod log;
pub mod priority;
pub mod segments;
pub mod write;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chat_protocol::pb;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use prost::Message;

use self::log::{Replay, Sealed};
use self::segments::{Files, Loc, Recent, Run, SegmentIndex};
use self::writer::Progress;
use crate::records::{
    ConversationRecord, IdempotencyRecord, MemberRecord, PushRegistration, ReactionCounts,
    TokenRecord, UserConversationRecord, UserReactions, UserRecord,
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
    /// Cluster mode: the conversation's partition has another owner now;
    /// nothing was written.
    #[error("the conversation moved to another node")]
    Moved,
    /// Cluster mode: JetStream did not take the write (unreachable, no
    /// quorum, or no acknowledgement in time); it may or may not be stored.
    #[error("cluster: {0}")]
    Cluster(String),
    /// Cluster mode: another write claimed the same key first
    /// ([`writer::Writer::claim_blocking`]); nothing was written.
    #[error("claimed by another write")]
    Taken,
}

impl StorageError {
    /// Whether the error is the cluster's, passing (the node goes on, the
    /// client retries), rather than the local store's.
    pub fn is_passing(&self) -> bool {
        matches!(
            self,
            StorageError::Moved | StorageError::Cluster(_) | StorageError::Taken
        )
    }
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
    /// `meta`
    Meta = 12,
    /// `reactions`
    Reactions = 13,
    /// `reactors`
    Reactors = 14,
    /// `blocks`
    Blocks = 15,
    /// `bans`
    Bans = 16,
    /// `user_media`
    UserMedia = 17,
    /// `mentions`
    Mentions = 18,
}

impl Ks {
    /// Every keyspace.
    const ALL: [Ks; 19] = [
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
        Ks::Meta,
        Ks::Reactions,
        Ks::Reactors,
        Ks::Blocks,
        Ks::Bans,
        Ks::UserMedia,
        Ks::Mentions,
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
    message_runs: Keyspace,
    message_index: Keyspace,
    idempotency: Keyspace,
    last_seen: Keyspace,
    push_outbox: Keyspace,
    meta: Keyspace,
    reactions: Keyspace,
    reactors: Keyspace,
    blocks: Keyspace,
    bans: Keyspace,
    user_media: Keyspace,
    mentions: Keyspace,
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
    recent: Arc<Recent>,
    files: Arc<Files>,
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

fn run(bytes: &[u8]) -> Result<Run<'_>> {
    Run::decode(bytes).ok_or_else(|| StorageError::Corrupt {
        keyspace: "message_runs",
        detail: format!("a run of {} bytes", bytes.len()),
    })
}

fn location(bytes: &[u8]) -> Result<Loc> {
    Loc::decode(bytes).ok_or_else(|| StorageError::Corrupt {
        keyspace: "message_index",
        detail: "expected a 20-byte location".into(),
    })
}

fn u64_value(keyspace: &'static str, bytes: &[u8]) -> Result<u64> {
    keys::first(bytes).ok_or_else(|| StorageError::Corrupt {
        keyspace,
        detail: "expected an 8-byte id".into(),
    })
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

/// Tables that collect in level 0 of a keyspace written by ingestion
/// (`message_runs`, `idempotency`) before fjall merges them into level 1
/// (fjall's default is 4).
///
/// Each sealed segment ingests one table into each, and every such table
/// spans nearly the whole key range (every conversation; idempotency keys
/// are digests), so each merge into level 1 rewrites all of level 1.
/// Merging 16 tables at a time instead of 4 rewrites it a quarter as often.
/// A lookup checks the bloom filters of up to this many level-0 tables.
pub const INGESTED_L0_TABLES: u8 = 16;

/// How a keyspace named `name` is created. Applies to keyspaces created
/// from now on: fjall keeps a keyspace's settings with it, so a store
/// created before keeps its own.
fn keyspace_options(name: &str) -> KeyspaceCreateOptions {
    let options = KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
    match name {
        "message_runs" | "idempotency" => options.compaction_strategy(Arc::new(
            fjall::compaction::Leveled::default().with_l0_threshold(INGESTED_L0_TABLES),
        )),
        _ => options,
    }
}

/// The keyspace that held whole messages before they lived in the log.
const LEGACY_MESSAGES: &str = "messages";

/// The `meta` key of the last commit indexed.
const INDEXED_THROUGH: &[u8] = b"indexed_through";

/// The `meta` key of the last stream sequence applied (cluster mode).
pub(crate) const CLUSTER_APPLIED: &[u8] = b"cluster_applied";

/// Messages per commit when moving a legacy store's messages into the log.
const MIGRATION_BATCH: usize = 1024;

/// Cuts a segment that will not be appended to again down to its records,
/// or deletes it if it holds none.
fn finish_segment(sealed: &Sealed) -> Result<()> {
    if sealed.end == 0 {
        match std::fs::remove_file(&sealed.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => return Ok(()),
        }
    }
    let file = std::fs::OpenOptions::new().write(true).open(&sealed.path)?;
    if file.metadata()?.len() > sealed.end {
        file.set_len(sealed.end)?;
        file.sync_all()?;
    }
    Ok(())
}

impl Store {
    /// Runs `read` on the current runtime's blocking pool: the one way
    /// code on a shard thread reads the store, which may wait on disk.
    /// A read that panics is an `INTERNAL` refusal.
    pub async fn off_thread<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> std::result::Result<T, crate::reply::Refusal> + Send + 'static,
    ) -> std::result::Result<T, crate::reply::Refusal> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .unwrap_or_else(|e| {
                Err(crate::reply::Refusal::new(
                    chat_protocol::ErrorCode::Internal,
                    format!("store read failed: {e}"),
                ))
            })
    }

    /// Opens (or creates) the store: fjall's database in `dir`, the commit
    /// log in `log_dir`. Replays the commits that fjall has not indexed
    /// and persisted (those after `indexed_through`), indexes their
    /// segments and persists fjall; moves messages of a store written
    /// before messages lived in the log into it ([`Store::migrate`]).
    pub fn open(dir: &Path, log_dir: &Path) -> Result<Self> {
        // At least three workers. With more than one, fjall's first worker
        // only seals and flushes memtables (it never sits in a long
        // compaction while they pile up) and hands every compaction request
        // back to the queue; with two, it spins on that queue for as long as
        // the other worker compacts (9 % of the server's CPU at full load).
        // A third worker takes the request instead: 0.93× the CPU per
        // delivery in paired runs (benches/changes.md). fjall sizes the pool
        // by the CPUs the process may use, which is one when chatd is pinned
        // to a core.
        // The workers start inside `open`, on this lowered thread, and
        // inherit its priority ([`priority::WORKER_NICE`]).
        let db = priority::run_lowered(priority::WORKER_NICE, || {
            Database::builder(dir)
                .worker_threads(crate::config::cores().clamp(3, 4))
                .open()
        })?;
        let legacy = db.keyspace_exists(LEGACY_MESSAGES);
        let ks = |name: &str| db.keyspace(name, || keyspace_options(name));
        let keyspaces = Keyspaces {
            users: ks("users")?,
            usernames: ks("usernames")?,
            tokens: ks("tokens")?,
            user_tokens: ks("user_tokens")?,
            conversations: ks("conversations")?,
            members: ks("members")?,
            user_conversations: ks("user_conversations")?,
            direct: ks("direct")?,
            message_runs: ks("message_runs")?,
            message_index: ks("message_index")?,
            idempotency: ks("idempotency")?,
            last_seen: ks("last_seen")?,
            push_outbox: ks("push_outbox")?,
            meta: ks("meta")?,
            reactions: ks("reactions")?,
            reactors: ks("reactors")?,
            blocks: ks("blocks")?,
            bans: ks("bans")?,
            user_media: ks("user_media")?,
            mentions: ks("mentions")?,
        };
        let mut store = Self {
            db,
            ks: keyspaces,
            log_dir: log_dir.to_path_buf(),
            progress: Arc::new(Progress::new(0)),
            recent: Arc::new(Recent::new(0)),
            files: Arc::new(Files::new(log_dir)),
        };
        let indexed = store.indexed_through()?;
        let mut index = SegmentIndex::default();
        let replayed = log::replay(log_dir, indexed, |event| match event {
            Replay::Record { segment, at, batch } => {
                let rest = segments::route(log::in_record(&batch), segment, at, &mut index);
                store.apply(std::slice::from_ref(&rest))
            }
            Replay::End(sealed) => {
                let done = std::mem::take(&mut index);
                store.recover_segment(&sealed, &done)
            }
        })?;
        if replayed.commits > 0 {
            tracing::info!(commits = replayed.commits, "commit log replayed");
            store.mark_indexed(replayed.next_commit - 1)?;
        }
        let mut next_commit = replayed.next_commit;
        if legacy {
            next_commit = store.migrate(next_commit)?;
        }
        store.progress = Arc::new(Progress::new(next_commit));
        store.recent = Arc::new(Recent::new(next_commit));
        Ok(store)
    }

    /// A segment found at start-up, all of whose commits are now applied:
    /// indexes it, and cuts off the zeros after its records (or deletes it
    /// if it holds none).
    fn recover_segment(&self, sealed: &Sealed, index: &SegmentIndex) -> Result<()> {
        self.ingest(index)?;
        finish_segment(sealed)
    }

    /// Moves the messages of a store written before messages lived in the
    /// log (a `messages` keyspace holding them) into the log, starting at
    /// commit `next_commit`, indexes them and drops the old keyspace.
    /// Returns the commit after the last one written.
    fn migrate(&self, next_commit: u64) -> Result<u64> {
        let old = self
            .db
            .keyspace(LEGACY_MESSAGES, KeyspaceCreateOptions::default)?;
        let mut log = log::Log::open(&self.log_dir, next_commit)?;
        let mut index = SegmentIndex::default();
        let mut batch = writer::Batch::new();
        let mut moved = 0u64;
        let mut entries = old.iter();
        loop {
            let next = entries.next();
            let done = next.is_none();
            if let Some(kv) = next {
                let (k, v) = kv.into_inner()?;
                batch.put(Ks::Messages, &k, &v);
                moved += 1;
            }
            if batch.len() >= MIGRATION_BATCH || (done && !batch.is_empty()) {
                let (appended, sealed) = log.append([&batch], true)?;
                if let Some(sealed) = sealed {
                    self.ingest(&std::mem::take(&mut index))?;
                    finish_segment(&sealed)?;
                    self.mark_indexed(sealed.last_commit)?;
                }
                batch = writer::Batch::new();
                segments::route(log.last_ops(), appended.segment, appended.at, &mut index);
            }
            if done {
                break;
            }
        }
        drop(entries);
        let last = log.close();
        self.ingest(&index)?;
        finish_segment(&last)?;
        if last.last_commit >= next_commit {
            self.mark_indexed(last.last_commit)?;
        }
        self.db.delete_keyspace(old)?;
        tracing::info!(
            messages = moved,
            "messages moved from the store into the log"
        );
        Ok(last.last_commit + 1)
    }

    /// The last commit whose segment fjall has indexed and persisted (0 if
    /// none).
    fn indexed_through(&self) -> Result<u64> {
        Ok(self
            .ks
            .meta
            .get(INDEXED_THROUGH)?
            .and_then(|v| keys::first(&v))
            .unwrap_or(0))
    }

    /// Cluster mode: the last stream sequence whose write this store holds
    /// (0 if none).
    pub fn cluster_applied(&self) -> Result<u64> {
        Ok(self
            .read()?
            .meta
            .get(CLUSTER_APPLIED)?
            .and_then(|v| keys::first(&v))
            .unwrap_or(0))
    }

    /// Records that fjall indexes every segment through commit `commit`
    /// and persists fjall (with everything applied to it so far).
    fn mark_indexed(&self, commit: u64) -> Result<()> {
        self.ks.meta.insert(INDEXED_THROUGH, keys::id(commit))?;
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    /// Writes a segment's index entries into fjall, each keyspace's as one
    /// sorted run. Durable when it returns (fjall syncs ingested tables).
    ///
    /// A conversation's messages with seqs above what fjall held for it
    /// before this segment become one `message_runs` entry; a message put
    /// again (a deletion's redacted version) becomes a `message_index`
    /// entry, which readers prefer to the run holding the original.
    fn ingest(&self, index: &SegmentIndex) -> Result<()> {
        let mut runs: Vec<([u8; 16], Vec<u8>)> = Vec::new();
        let mut newer: Vec<([u8; 16], Loc)> = Vec::new();
        let mut fresh: Vec<(u64, Loc)> = Vec::new();
        let mut entries = index.messages.iter().peekable();
        while let Some((key, loc)) = entries.next() {
            let Some(conversation) = keys::first(key) else {
                continue;
            };
            let indexed = self.indexed_last_seq(conversation, loc.segment)?;
            fresh.clear();
            let mut group = std::iter::once((key, loc)).chain(std::iter::from_fn(|| {
                entries.next_if(|(k, _)| keys::first(*k) == Some(conversation))
            }));
            // Keys sort by descending seq within a conversation.
            for (key, loc) in &mut group {
                match keys::message_seq(key) {
                    Some(seq) if seq > indexed => fresh.push((seq, *loc)),
                    _ => newer.push((*key, *loc)),
                }
            }
            if let Some(&(highest, loc)) = fresh.first() {
                fresh.reverse();
                runs.push((
                    keys::message(conversation, highest),
                    Run::encode(loc.segment, &fresh),
                ));
            }
        }
        if !runs.is_empty() {
            let mut run = self.ks.message_runs.start_ingestion()?;
            for (key, value) in &runs {
                run.write(key.as_slice(), value.as_slice())?;
            }
            run.finish()?;
        }
        if !newer.is_empty() {
            let mut run = self.ks.message_index.start_ingestion()?;
            for (key, loc) in &newer {
                run.write(key.as_slice(), loc.encode().as_slice())?;
            }
            run.finish()?;
        }
        if !index.idempotency.is_empty() {
            // Copied out in the table's order and sorted as values: sorting
            // references sends the encoding below to every entry's place
            // in the table, one cache miss each.
            let mut sorted: Vec<([u8; 32], IdempotencyRecord)> = index
                .idempotency
                .iter()
                .map(|(k, r)| (*k, r.clone()))
                .collect();
            sorted.sort_unstable_by_key(|(k, _)| *k);
            let mut run = self.ks.idempotency.start_ingestion()?;
            let mut value = Vec::new();
            for (key, record) in &sorted {
                value.clear();
                record
                    .encode(&mut value)
                    .map_err(|e| StorageError::Corrupt {
                        keyspace: "idempotency",
                        detail: e.to_string(),
                    })?;
                run.write(key.as_slice(), value.as_slice())?;
            }
            run.finish()?;
        }
        Ok(())
    }

    /// The highest seq of `conversation` that fjall indexes from segments
    /// before `segment` (a segment ingested again after a crash does not
    /// count itself).
    fn indexed_last_seq(&self, conversation: u64, segment: u64) -> Result<u64> {
        let mut last = match self.ks.message_index.prefix(keys::id(conversation)).next() {
            Some(kv) => keys::message_seq(&kv.key()?).unwrap_or(0),
            None => 0,
        };
        for kv in self.ks.message_runs.prefix(keys::id(conversation)) {
            let (k, v) = kv.into_inner()?;
            if run(&v)?.segment() < segment {
                last = last.max(keys::message_seq(&k).unwrap_or(0));
                break;
            }
        }
        Ok(last)
    }

    /// Once every commit of the sealed segment is applied: indexes it in
    /// fjall, records it as indexed, persists fjall, and lets the segment's
    /// recent entries go.
    pub(crate) fn checkpoint(&self, sealed: &Sealed, index: &SegmentIndex) -> Result<()> {
        self.ingest(index)?;
        finish_segment(sealed)?;
        self.mark_indexed(sealed.last_commit)?;
        self.recent.retire(sealed.first_commit);
        Ok(())
    }

    /// Writes one commit's `batches` into fjall's memtables and journal
    /// buffer, as one fjall batch and without a sync: the commit log holds
    /// them durably already.
    pub(crate) fn apply(&self, batches: &[writer::Batch]) -> Result<()> {
        let mut b = self.db.batch().durability(None);
        for op in batches.iter().flat_map(|batch| batch.ops()) {
            match op {
                writer::Op::Put(ks, k, v) => b.insert(self.keyspace(ks), k, v),
                writer::Op::Delete(ks, k) => b.remove(self.keyspace(ks), k),
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

    pub(crate) fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    pub(crate) fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    pub(crate) fn recent(&self) -> &Arc<Recent> {
        &self.recent
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
            Ks::Messages => &self.ks.message_index,
            Ks::Idempotency => &self.ks.idempotency,
            Ks::LastSeen => &self.ks.last_seen,
            Ks::PushOutbox => &self.ks.push_outbox,
            Ks::Meta => &self.ks.meta,
            Ks::Reactions => &self.ks.reactions,
            Ks::Reactors => &self.ks.reactors,
            Ks::Blocks => &self.ks.blocks,
            Ks::Bans => &self.ks.bans,
            Ks::UserMedia => &self.ks.user_media,
            Ks::Mentions => &self.ks.mentions,
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
    ///
    /// Messages are read without waiting for the apply thread: the writer
    /// indexes a message before it acknowledges it.
    pub fn message(&self, conversation: u64, seq: u64) -> Result<Option<pb::Message>> {
        let key = keys::message(conversation, seq);
        let mut loc = match self.recent.message(&key) {
            Some(loc) => Some(loc),
            None => self
                .ks
                .message_index
                .get(key)?
                .map(|v| location(&v))
                .transpose()?,
        };
        if loc.is_none() {
            // The run holding `seq` is the one with the lowest highest seq
            // not below it.
            let holding = self
                .ks
                .message_runs
                .range(keys::message(conversation, u64::MAX)..=key)
                .next_back();
            if let Some(kv) = holding {
                loc = run(&kv.value()?)?.find(seq);
            }
        }
        loc.map(|loc| self.read_message(loc)).transpose()
    }

    /// The message at `loc` in the log.
    fn read_message(&self, loc: Loc) -> Result<pb::Message> {
        decode("messages", &self.files.read(loc)?)
    }

    /// Up to `limit` messages of `conversation` with seqs in `lo..=hi`:
    /// the newest first, or the oldest first if `oldest_first`.
    ///
    /// Each source (recent segments, `message_index`, `message_runs`) gives
    /// its first `limit` in that order; where two hold a seq, the recent
    /// segments win over fjall and `message_index` over a run, since each
    /// holds the newer version.
    fn message_range(
        &self,
        conversation: u64,
        lo: u64,
        hi: u64,
        limit: usize,
        oldest_first: bool,
    ) -> Result<Vec<pb::Message>> {
        // Keys sort newest first, so the newest message has the smallest.
        let (from, to) = (
            keys::message(conversation, hi),
            keys::message(conversation, lo),
        );
        // Recent segments first: an entry ingested into fjall is retired
        // from them only afterwards, so nothing is missed in between.
        let mut found = std::collections::BTreeMap::new();
        self.recent
            .messages(from, to, limit, oldest_first, &mut found);
        let range = self.ks.message_index.range(from..=to);
        let indexed: Box<dyn Iterator<Item = fjall::Guard>> = if oldest_first {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        for kv in indexed.take(limit) {
            let (k, v) = kv.into_inner()?;
            if let Ok(key) = <[u8; 16]>::try_from(&*k) {
                if let std::collections::btree_map::Entry::Vacant(e) = found.entry(key) {
                    e.insert(location(&v)?);
                }
            }
        }
        self.runs_between(conversation, lo, hi, limit, oldest_first, &mut found)?;
        let locs: Vec<Loc> = if oldest_first {
            found.into_values().rev().take(limit).collect()
        } else {
            found.into_values().take(limit).collect()
        };
        locs.into_iter().map(|loc| self.read_message(loc)).collect()
    }

    /// The first `limit` messages of `conversation` with seqs in `lo..=hi`
    /// that `message_runs` holds, in the order `message_range` asks for,
    /// into `found` unless it has the key already.
    fn runs_between(
        &self,
        conversation: u64,
        lo: u64,
        hi: u64,
        limit: usize,
        oldest_first: bool,
        found: &mut std::collections::BTreeMap<[u8; 16], Loc>,
    ) -> Result<()> {
        let all = keys::message(conversation, u64::MAX);
        // Runs are keyed by their highest seq: the ones that can hold seqs
        // of `lo..=hi` are those whose highest seq is at least `lo`, and
        // going through them from the highest, the first that holds
        // nothing above `lo` is the last needed.
        let runs: Box<dyn Iterator<Item = fjall::Guard>> = if oldest_first {
            Box::new(
                self.ks
                    .message_runs
                    .range(all..=keys::message(conversation, lo))
                    .rev(),
            )
        } else {
            // The run holding `hi` (highest seq above it), then those
            // whose highest seq is in the range.
            let holding_hi = match hi.checked_add(1) {
                Some(above) => self
                    .ks
                    .message_runs
                    .range(all..=keys::message(conversation, above))
                    .next_back(),
                None => None,
            };
            Box::new(
                holding_hi.into_iter().chain(
                    self.ks
                        .message_runs
                        .range(keys::message(conversation, hi)..=keys::message(conversation, lo)),
                ),
            )
        };
        let mut taken = 0;
        for kv in runs {
            let value = kv.value()?;
            let run = run(&value)?;
            let within = run.between(lo, hi);
            let within: Box<dyn Iterator<Item = (u64, Loc)>> = if oldest_first {
                Box::new(within)
            } else {
                Box::new(within.rev())
            };
            for (seq, loc) in within {
                found.entry(keys::message(conversation, seq)).or_insert(loc);
                taken += 1;
                if taken == limit {
                    return Ok(());
                }
            }
            if (oldest_first && run.min_seq() > hi) || (!oldest_first && run.min_seq() <= lo) {
                break;
            }
        }
        Ok(())
    }

    /// Messages of `conversation` after seq `after` that mention `user`
    /// or everyone, not counting `user`'s own, up to `cap`.
    pub fn mention_count(&self, user: u64, conversation: u64, after: u64, cap: u64) -> Result<u64> {
        let ks = self.read()?;
        let mut n = 0;
        for (whom, only_others) in [(user, false), (0, true)] {
            let Some(from) = after.checked_add(1) else {
                break;
            };
            let start = keys::mention(whom, conversation, from);
            let prefix = keys::pair(whom, conversation);
            for kv in ks.mentions.range(start..) {
                let (k, v) = kv.into_inner()?;
                if !k.starts_with(&prefix) || n >= cap {
                    break;
                }
                if !(only_others && keys::first(&v) == Some(user)) {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// The media ids `user` asked to upload.
    pub fn user_media(&self, user: u64) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for kv in self.read()?.user_media.prefix(keys::id(user)) {
            let key = kv.key()?;
            if let Some(id) = key.get(8..).and_then(|id| std::str::from_utf8(id).ok()) {
                out.push(id.to_owned());
            }
        }
        Ok(out)
    }

    /// Every user, by id (operator listings).
    pub fn all_users(&self) -> Result<Vec<(u64, UserRecord)>> {
        let mut out = Vec::new();
        for kv in self.read()?.users.iter() {
            let (k, v) = kv.into_inner()?;
            if let Some(id) = keys::first(&k) {
                out.push((id, decode("users", &v)?));
            }
        }
        Ok(out)
    }

    /// Every conversation, by id (operator listings).
    pub fn all_conversations(&self) -> Result<Vec<(u64, ConversationRecord)>> {
        let mut out = Vec::new();
        for kv in self.read()?.conversations.iter() {
            let (k, v) = kv.into_inner()?;
            if let Some(id) = keys::first(&k) {
                out.push((id, decode("conversations", &v)?));
            }
        }
        Ok(out)
    }

    /// Up to `limit` users banned from `conversation`, ascending.
    pub fn bans(&self, conversation: u64, limit: usize) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for kv in self.read()?.bans.prefix(keys::id(conversation)).take(limit) {
            if let Some(u) = keys::pair_second(&kv.key()?) {
                out.push(u);
            }
        }
        Ok(out)
    }

    /// Whether `blocker` blocked `blocked`.
    pub fn blocked(&self, blocker: u64, blocked: u64) -> Result<bool> {
        Ok(self
            .read()?
            .blocks
            .get(keys::pair(blocker, blocked))?
            .is_some())
    }

    /// Whether either of the two users blocked the other.
    pub fn blocked_either(&self, a: u64, b: u64) -> Result<bool> {
        Ok(self.blocked(a, b)? || self.blocked(b, a)?)
    }

    /// Up to `limit` users `blocker` blocked, ascending.
    pub fn blocks_of(&self, blocker: u64, limit: usize) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for kv in self.read()?.blocks.prefix(keys::id(blocker)).take(limit) {
            if let Some(u) = keys::pair_second(&kv.key()?) {
                out.push(u);
            }
        }
        Ok(out)
    }

    /// The reaction counts of message `seq` (empty if none).
    pub fn reaction_counts(&self, conversation: u64, seq: u64) -> Result<ReactionCounts> {
        match self.read()?.reactions.get(keys::pair(conversation, seq))? {
            Some(v) => decode("reactions", &v),
            None => Ok(ReactionCounts::default()),
        }
    }

    /// The emoji `user` reacted to message `seq` with (empty if none).
    pub fn user_reactions(&self, conversation: u64, seq: u64, user: u64) -> Result<UserReactions> {
        match self
            .read()?
            .reactors
            .get(keys::reactor(conversation, seq, user))?
        {
            Some(v) => decode("reactors", &v),
            None => Ok(UserReactions::default()),
        }
    }

    /// Fills in `reactions` of each of `messages` (all of `conversation`)
    /// as `reader` sees them: one range read of the counts over the
    /// messages' seqs, and the reader's own only for messages with any.
    /// Deleted messages show none.
    pub fn attach_reactions(
        &self,
        conversation: u64,
        reader: u64,
        messages: &mut [pb::Message],
    ) -> Result<()> {
        let (Some(lo), Some(hi)) = (
            messages.iter().map(|m| m.seq).min(),
            messages.iter().map(|m| m.seq).max(),
        ) else {
            return Ok(());
        };
        let ks = self.read()?;
        let mut counts = std::collections::HashMap::new();
        for kv in ks
            .reactions
            .range(keys::pair(conversation, lo)..=keys::pair(conversation, hi))
        {
            let (k, v) = kv.into_inner()?;
            if let Some(seq) = keys::pair_second(&k) {
                counts.insert(seq, decode::<ReactionCounts>("reactions", &v)?);
            }
        }
        for m in messages.iter_mut() {
            m.reactions.clear();
            let Some(c) = counts.get(&m.seq).filter(|_| !m.deleted) else {
                continue;
            };
            let mine = self.user_reactions(conversation, m.seq, reader)?;
            m.reactions = c
                .counts
                .iter()
                .map(|r| pb::Reaction {
                    emoji: r.emoji.clone(),
                    count: r.count,
                    mine: mine.emoji.contains(&r.emoji),
                })
                .collect();
        }
        Ok(())
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
        let recent = self.recent.last_seq(conversation).unwrap_or(0);
        Ok(recent.max(self.indexed_last_seq(conversation, u64::MAX)?))
    }

    /// Up to `limit` messages with seq < `before_seq` (all if 0), newest first.
    pub fn messages_before(
        &self,
        conversation: u64,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<pb::Message>> {
        if before_seq == 1 {
            return Ok(Vec::new());
        }
        let newest = before_seq.wrapping_sub(1);
        self.message_range(conversation, 1, newest, limit, false)
    }

    /// Up to `limit` messages with seq > `after_seq`, oldest first.
    pub fn messages_after(
        &self,
        conversation: u64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<pb::Message>> {
        if after_seq == u64::MAX {
            return Ok(Vec::new());
        }
        self.message_range(conversation, after_seq + 1, u64::MAX, limit, true)
    }

    /// The original ack of an earlier send with the same idempotency key.
    /// Like messages, the keys are indexed before their commit is
    /// acknowledged; this lookup waits for nothing.
    pub fn idempotency(
        &self,
        conversation: u64,
        sender: u64,
        client_msg_id: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        let indexed = keys::idempotency_digest(conversation, sender, client_msg_id.as_bytes());
        if let Some(record) = self.recent.idempotency(&indexed) {
            return Ok(Some(record));
        }
        if let Some(v) = self.ks.idempotency.get(indexed)? {
            return decode("idempotency", &v).map(Some);
        }
        // A store written before keys were indexed by digest holds the
        // full key.
        if client_msg_id.len() > MAX_KEY_BYTES - 16 {
            return Ok(None);
        }
        let legacy = keys::idempotency(conversation, sender, client_msg_id);
        self.ks
            .idempotency
            .get(legacy)?
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

/// A request that met a storage failure is refused with STORAGE_FAILURE;
/// the cause is logged, not shown to the client. A passing cluster failure
/// (JetStream electing a leader, a partition changing hands) is
/// SERVER_BUSY, to be retried.
impl From<StorageError> for crate::reply::Refusal {
    fn from(e: crate::storage::StorageError) -> Self {
        if e.is_passing() {
            tracing::warn!(cause = %e, "cluster write not taken while serving a request");
            return Self::new(chat_protocol::ErrorCode::ServerBusy, "cluster busy; retry")
                .retry_after(crate::cluster::RETRY_AFTER_MS);
        }
        tracing::error!(cause = %e, "storage failure while serving a request");
        Self::new(chat_protocol::ErrorCode::StorageFailure, "storage failure")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(conversation: u64, seq: u64) -> pb::Message {
        pb::Message {
            conversation_id: conversation,
            seq,
            text: format!("message {seq}"),
            ..Default::default()
        }
    }

    /// A store written before messages lived in the log kept them in a
    /// `messages` keyspace; opening it moves them into the log, once.
    #[test]
    fn messages_of_an_older_store_move_into_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store_dir, log_dir) = (dir.path().join("store"), dir.path().join("log"));
        {
            let db = Database::builder(&store_dir).open().expect("open");
            let old = db
                .keyspace(LEGACY_MESSAGES, KeyspaceCreateOptions::default)
                .expect("keyspace");
            for conversation in 1..=3 {
                for seq in 1..=1500 {
                    old.insert(
                        keys::message(conversation, seq),
                        message(conversation, seq).encode_to_vec(),
                    )
                    .expect("insert");
                }
            }
            db.persist(fjall::PersistMode::SyncAll).expect("persist");
        }
        for _ in 0..2 {
            let store = Store::open(&store_dir, &log_dir).expect("open");
            assert!(!store.db.keyspace_exists(LEGACY_MESSAGES));
            for conversation in 1..=3 {
                assert_eq!(store.last_seq(conversation).expect("read"), 1500);
                let page = store.messages_after(conversation, 700, 50).expect("page");
                assert!(page.iter().map(|m| m.seq).eq(701..=750));
                assert_eq!(
                    store.message(conversation, 1).expect("read"),
                    Some(message(conversation, 1))
                );
            }
            assert_eq!(store.indexed_through().expect("marker"), 5);
        }
    }
}
