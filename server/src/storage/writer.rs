//! The storage writer: one thread that group-commits every write, and one
//! that applies the commits to fjall.
//!
//! Shards and account handlers send [`Batch`]es through a bounded queue.
//! The writer thread takes whatever is queued (up to
//! [`MAX_JOBS_PER_COMMIT`]), appends it to the commit log as one record
//! with one `fdatasync` ([`super::log`]), and only then completes each
//! job's reply. So a write is acknowledged only after it is durable, and
//! under load one sync covers many writes.
//!
//! The commit then goes to the apply thread, which writes it into fjall
//! without a sync of its own. Reads wait until fjall holds every commit
//! acknowledged before them ([`Progress`]), so nobody reads an older state
//! than one already acknowledged. Commits waiting to be applied are bounded
//! by [`MAX_UNAPPLIED_BYTES`]; beyond it the writer waits.
//!
//! After each commit it applies, the apply thread holds back while fjall's
//! memtables hold more than [`super::WRITE_BUFFER_LIMIT`] bytes (see
//! [`hold_back`]): that is what bounds the store's memory when its
//! background workers fall behind. When a log segment is sealed, the apply
//! thread ingests the segment's index into fjall, persists fjall (one sync
//! of its journal) and marks the segment indexed ([`super::segments`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::{mpsc, oneshot};

use super::log::{Log, Sealed};
use super::segments::{self, SegmentIndex};
use super::{Ks, Result, StorageError, Store};
use crate::config::Durability;

/// Jobs folded into one commit at most. Bounds the latency of the first job
/// of a turn behind a large backlog; 1024 jobs of typical messages is well
/// under a megabyte of log.
pub const MAX_JOBS_PER_COMMIT: usize = 1024;

/// Bytes of keys and values acknowledged but not yet in fjall, at most
/// (32 MiB). Beyond it the writer waits for the apply thread.
pub const MAX_UNAPPLIED_BYTES: u64 = 32 << 20;

/// Commits queued to the apply thread, at most.
const APPLY_QUEUE: usize = 4096;

/// Commits the apply thread writes into fjall as one write, at most.
const MAX_COMMITS_PER_APPLY: usize = 256;

/// How long the apply thread waits, once it has caught up, before it
/// looks for more commits (1 ms). Writing each commit into fjall as it
/// came cost the server's core a wake-up of this thread per commit; a
/// reader that needs what is not yet applied wakes it at once, so the
/// wait delays no read.
const APPLY_LINGER: Duration = Duration::from_millis(1);

/// Writes that become durable together or not at all.
///
/// A batch is one buffer holding its writes in the commit log's operation
/// format ([`super::log`]): a kind (1 put, 2 delete), the keyspace code, the
/// key's length (4 bytes, little-endian) and the key, then for a put the
/// value's length and the value. Staging a write copies its key and value
/// once, with no allocation of its own; merging batches appends buffers;
/// the storage writer copies a commit's buffers into the log's record as
/// they are, and the record's body is the commit number followed by them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    buf: Vec<u8>,
    ops: usize,
}

/// One write of a [`Batch`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Sets a key.
    Put(Ks, &'a [u8], &'a [u8]),
    /// Removes a key.
    Delete(Ks, &'a [u8]),
}

/// Operation kinds, as the log stores them.
pub(super) const PUT: u8 = 1;
pub(super) const DELETE: u8 = 2;

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `bytes` of encoded writes
    /// ([`Batch::encoded_len`]).
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            ops: 0,
        }
    }

    /// Bytes a put of a `key` and `value` of these lengths takes in a
    /// batch, for sizing one up front.
    pub const fn put_bytes(key: usize, value: usize) -> usize {
        Self::delete_bytes(key) + 4 + value
    }

    /// Bytes a deletion of a key of this length takes in a batch.
    pub const fn delete_bytes(key: usize) -> usize {
        2 + 4 + key
    }

    /// An operation's kind, keyspace and key, the key given in parts.
    fn head(&mut self, kind: u8, ks: Ks, key: &[&[u8]]) {
        let len = key.iter().map(|part| part.len()).sum();
        self.buf.push(kind);
        self.buf.push(ks.code());
        self.buf.extend_from_slice(&len32(len).to_le_bytes());
        for part in key {
            self.buf.extend_from_slice(part);
        }
        self.ops += 1;
    }

    /// Sets `key` to `value` in `ks`.
    pub fn put(&mut self, ks: Ks, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.buf.reserve(Self::put_bytes(key.len(), value.len()));
        self.head(PUT, ks, &[key]);
        self.buf
            .extend_from_slice(&len32(value.len()).to_le_bytes());
        self.buf.extend_from_slice(value);
    }

    /// Sets `key` to the encoding of `record` in `ks`, encoded straight
    /// into the batch. Returns the value's place in [`Batch::encoded`].
    pub fn put_encoded(
        &mut self,
        ks: Ks,
        key: impl AsRef<[u8]>,
        record: &impl prost::Message,
    ) -> std::ops::Range<usize> {
        self.put_encoded_parts(ks, &[key.as_ref()], record)
    }

    /// [`Batch::put_encoded`] with the key given in parts, concatenated.
    pub fn put_encoded_parts(
        &mut self,
        ks: Ks,
        key: &[&[u8]],
        record: &impl prost::Message,
    ) -> std::ops::Range<usize> {
        let key_len = key.iter().map(|part| part.len()).sum();
        let len = record.encoded_len();
        self.buf.reserve(Self::put_bytes(key_len, len));
        self.head(PUT, ks, key);
        self.buf.extend_from_slice(&len32(len).to_le_bytes());
        let start = self.buf.len();
        record.encode_raw(&mut self.buf);
        start..self.buf.len()
    }

    /// Removes `key` from `ks`.
    pub fn delete(&mut self, ks: Ks, key: impl AsRef<[u8]>) {
        self.head(DELETE, ks, &[key.as_ref()]);
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// Appends another batch's writes.
    pub fn extend(&mut self, other: Batch) {
        if self.is_empty() && self.buf.capacity() < other.buf.len() {
            *self = other;
            return;
        }
        self.buf.extend_from_slice(&other.buf);
        self.ops += other.ops;
    }

    /// The writes, in order.
    pub fn ops(&self) -> Ops<'_> {
        Ops {
            buf: &self.buf,
            at: 0,
        }
    }

    /// The writes in the log's operation format.
    pub fn encoded(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes of [`Batch::encoded`].
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// The batch whose writes are `encoded`, in the log's operation format,
    /// checked whole. `Err` says what is wrong.
    pub fn decode(encoded: &[u8]) -> std::result::Result<Self, String> {
        let mut ops = 0;
        let mut at = 0;
        while at < encoded.len() {
            match parse(encoded, at) {
                Ok(Some((_, _, next))) => at = next,
                Ok(None) => break,
                Err(e) => return Err(format!("operation {ops} at byte {at}: {e}")),
            }
            ops += 1;
        }
        Ok(Self {
            buf: encoded.to_vec(),
            ops,
        })
    }

    /// Bytes of keys and values (with their framing), for bounding what
    /// waits for the apply thread.
    fn bytes(&self) -> u64 {
        self.buf.len() as u64
    }
}

/// A length as the log stores it. Keys and values are far below 4 GiB: a
/// frame is at most a few MiB.
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The operations in `encoded`, in the log's operation format (a batch's
/// or a record's after its commit number), up to the first that is not
/// whole.
pub(super) fn ops_in(encoded: &[u8]) -> Ops<'_> {
    Ops {
        buf: encoded,
        at: 0,
    }
}

/// The writes of a [`Batch`], in order; with [`Ops::with_values`], each
/// with the offset of its value in the batch's buffer.
#[derive(Debug, Clone)]
pub struct Ops<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Ops<'a> {
    /// Each write with the offset of its value (of a put; 0 for a delete)
    /// from the start of [`Batch::encoded`].
    pub fn with_values(self) -> impl Iterator<Item = (Op<'a>, usize)> {
        let Ops { buf, mut at } = self;
        std::iter::from_fn(move || {
            let (op, value, next) = parse(buf, at).ok().flatten()?;
            at = next;
            Some((op, value))
        })
    }
}

impl<'a> Iterator for Ops<'a> {
    type Item = Op<'a>;

    fn next(&mut self) -> Option<Op<'a>> {
        let (op, _, next) = parse(self.buf, self.at).ok().flatten()?;
        self.at = next;
        Some(op)
    }
}

/// The operation at `at` in `buf`: the operation, the offset of its value
/// (0 for a delete) and the offset after it; `None` at the end of `buf`,
/// `Err` where the bytes are not an operation.
type Parsed<'a> = Option<(Op<'a>, usize, usize)>;

fn parse(buf: &[u8], at: usize) -> std::result::Result<Parsed<'_>, &'static str> {
    fn sized(buf: &[u8], at: usize) -> Option<(&[u8], usize, usize)> {
        let len = buf.get(at..at.checked_add(4)?)?;
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let start = at + 4;
        let end = start.checked_add(len)?;
        Some((buf.get(start..end)?, start, end))
    }
    let (kind, ks) = match buf.get(at..).unwrap_or_default() {
        [] => return Ok(None),
        [kind, ks, ..] => (*kind, *ks),
        _ => return Err("truncated operation"),
    };
    let ks = Ks::from_code(ks).ok_or("unknown keyspace")?;
    let (key, _, after_key) = sized(buf, at + 2).ok_or("truncated key")?;
    match kind {
        PUT => {
            let (value, start, end) = sized(buf, after_key).ok_or("truncated value")?;
            Ok(Some((Op::Put(ks, key, value), start, end)))
        }
        DELETE => Ok(Some((Op::Delete(ks, key), 0, after_key))),
        _ => Err("unknown operation"),
    }
}

/// How far the commit log and fjall have come. Shared by the writer, the
/// apply thread and every reader of the store.
#[derive(Debug)]
pub struct Progress {
    /// The last commit durable in the log (and so acknowledged).
    committed: AtomicU64,
    /// The last commit fjall holds.
    applied: AtomicU64,
    state: Mutex<ApplyState>,
    changed: Condvar,
    /// The apply thread, woken by a reader that waits for it while it
    /// lingers ([`APPLY_LINGER`]).
    applier: std::sync::OnceLock<thread::Thread>,
    /// Held by a test to stop the apply thread before its next commit.
    #[cfg(test)]
    apply_gate: Mutex<()>,
    /// Set by a test to make the apply thread's next fjall write fail.
    #[cfg(test)]
    fail_applies: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct ApplyState {
    unapplied_bytes: u64,
    failed: bool,
}

impl Progress {
    /// Nothing pending; the next commit is `next_commit`.
    pub(super) fn new(next_commit: u64) -> Self {
        let last = next_commit.saturating_sub(1);
        Self {
            committed: AtomicU64::new(last),
            applied: AtomicU64::new(last),
            state: Mutex::new(ApplyState::default()),
            changed: Condvar::new(),
            applier: std::sync::OnceLock::new(),
            #[cfg(test)]
            apply_gate: Mutex::new(()),
            #[cfg(test)]
            fail_applies: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn next_commit(&self) -> u64 {
        self.committed.load(Ordering::Acquire) + 1
    }

    /// Waits until fjall holds every commit acknowledged so far.
    pub(super) fn settle(&self) -> Result<()> {
        self.wait_applied(self.committed.load(Ordering::Acquire))
    }

    /// Waits until fjall holds commit `commit` and those before it.
    pub(super) fn wait_applied(&self, commit: u64) -> Result<()> {
        if self.applied.load(Ordering::Acquire) >= commit {
            return Ok(());
        }
        let started = Instant::now();
        if let Some(applier) = self.applier.get() {
            applier.unpark();
        }
        let mut state = self.state.lock();
        loop {
            if self.applied.load(Ordering::Acquire) >= commit {
                metrics::histogram!("chatd_storage_read_wait_seconds")
                    .record(started.elapsed().as_secs_f64());
                return Ok(());
            }
            if state.failed {
                return Err(StorageError::WriterStopped);
            }
            self.changed.wait(&mut state);
        }
    }

    /// The last commit durable in the log (and so acknowledged).
    pub(super) fn last_committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Commits acknowledged but not yet in fjall.
    pub fn unapplied(&self) -> u64 {
        self.committed.load(Ordering::Acquire) - self.applied.load(Ordering::Acquire)
    }

    fn failed(&self) -> bool {
        self.state.lock().failed
    }

    /// Counts `bytes` as waiting for the apply thread, first waiting while
    /// more than [`MAX_UNAPPLIED_BYTES`] wait already.
    fn reserve(&self, bytes: u64) -> Result<()> {
        let mut state = self.state.lock();
        let started = Instant::now();
        while state.unapplied_bytes > 0 && state.unapplied_bytes + bytes > MAX_UNAPPLIED_BYTES {
            if state.failed {
                return Err(StorageError::WriterStopped);
            }
            if let Some(applier) = self.applier.get() {
                applier.unpark();
            }
            self.changed.wait(&mut state);
        }
        if state.failed {
            return Err(StorageError::WriterStopped);
        }
        state.unapplied_bytes += bytes;
        let waited = started.elapsed();
        if waited > Duration::from_micros(100) {
            metrics::histogram!("chatd_storage_apply_wait_seconds").record(waited.as_secs_f64());
        }
        Ok(())
    }

    fn committed(&self, commit: u64) {
        self.committed.store(commit, Ordering::Release);
    }

    fn applied(&self, commit: u64, bytes: u64) {
        let mut state = self.state.lock();
        state.unapplied_bytes = state.unapplied_bytes.saturating_sub(bytes);
        self.applied.store(commit, Ordering::Release);
        drop(state);
        self.changed.notify_all();
    }

    fn fail(&self) {
        self.state.lock().failed = true;
        self.changed.notify_all();
    }
}

struct Job {
    batch: Batch,
    done: oneshot::Sender<Result<u64>>,
}

/// Handle to the writer thread. Cloning shares the queue.
///
/// In cluster mode ([`Writer::replicated`]) writes go to the cluster's
/// stream first; the local store gets them from the stream
/// ([`crate::cluster`]).
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    cluster: Option<std::sync::Arc<crate::cluster::Link>>,
}

/// Joins the writer thread; it exits once every [`Writer`] is dropped and
/// the queue is drained, after the apply thread has brought fjall up to
/// date and persisted it.
#[derive(Debug)]
pub struct WriterThread(thread::JoinHandle<()>);

impl WriterThread {
    /// Waits for the thread to commit what is queued and exit.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Writer {
    /// Starts the writer thread with a queue of `capacity` jobs, and the
    /// apply thread. The store must have been opened (its log replayed) by
    /// [`Store::open`] and not be written by another writer.
    pub fn start(
        store: Store,
        durability: Durability,
        capacity: usize,
    ) -> std::io::Result<(Self, WriterThread)> {
        let log = Log::open(store.log_dir(), store.progress().next_commit())?;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (apply_tx, apply_rx) = crossbeam::channel::bounded(APPLY_QUEUE);
        let applier = {
            let store = store.clone();
            thread::Builder::new()
                .name("chatd-apply".into())
                .spawn(move || {
                    super::priority::lower();
                    apply_loop(&store, &apply_rx)
                })?
        };
        let handle = thread::Builder::new()
            .name("chatd-storage".into())
            .spawn(move || {
                run(&store, log, durability, rx, &apply_tx);
                drop(apply_tx);
                let _ = applier.join();
            })?;
        Ok((Self { tx, cluster: None }, WriterThread(handle)))
    }

    /// This writer with its writes going through the cluster's stream.
    pub fn replicated(mut self, link: std::sync::Arc<crate::cluster::Link>) -> Self {
        self.cluster = Some(link);
        self
    }

    /// The cluster link, in cluster mode.
    pub fn cluster(&self) -> Option<&std::sync::Arc<crate::cluster::Link>> {
        self.cluster.as_ref()
    }

    /// Commits `batch` durably (per the durability mode). Waits for queue
    /// space, then for the commit. Returns the commit's number (in cluster
    /// mode, its stream sequence).
    pub async fn write(&self, batch: Batch) -> Result<u64> {
        if let Some(link) = &self.cluster {
            return link.write(None, batch, Vec::new()).await;
        }
        let wait = self.enqueue(batch).await?;
        wait.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Queues `batch` for the local store (waiting for queue space) and
    /// returns the wait for its commit; commits complete in queue order.
    pub async fn enqueue(&self, batch: Batch) -> Result<oneshot::Receiver<Result<u64>>> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job { batch, done })
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        Ok(wait)
    }

    /// [`Writer::write`] for code already on a blocking thread.
    pub fn write_blocking(&self, batch: Batch) -> Result<u64> {
        if let Some(link) = &self.cluster {
            return link.write_blocking(batch);
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .blocking_send(Job { batch, done })
            .map_err(|_| StorageError::WriterStopped)?;
        wait.blocking_recv()
            .map_err(|_| StorageError::WriterStopped)?
    }

    /// [`Writer::write_blocking`] of a write that claims `key` (a username,
    /// a pair's direct chat). On one node the caller's home lane makes its
    /// check-then-write exclusive; in cluster mode the first claim in the
    /// cluster wins and a later one is `StorageError::Taken`, after which
    /// the local store holds the winner.
    pub fn claim_blocking(&self, key: &str, batch: Batch) -> Result<u64> {
        match &self.cluster {
            Some(link) => link.claim_blocking(key, batch),
            None => self.write_blocking(batch),
        }
    }

    /// Jobs waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Work for the apply thread, in log order.
enum Apply {
    /// Write a commit into fjall.
    Commit {
        commit: u64,
        batches: Vec<Batch>,
        bytes: u64,
    },
    /// Index a sealed segment in fjall and persist it.
    Checkpoint(Sealed, std::sync::Arc<SegmentIndex>),
}

/// Sealed segments waiting for their index to be written into fjall, at
/// most. Their entries are held in memory meanwhile; beyond it the writer
/// waits.
pub const MAX_SEALED_SEGMENTS: usize = 4;

fn run(
    store: &Store,
    mut log: Log,
    durability: Durability,
    mut rx: mpsc::Receiver<Job>,
    apply: &crossbeam::channel::Sender<Apply>,
) {
    let sync = durability == Durability::Sync;
    let progress = store.progress();
    let recent = store.recent();
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    let mut failed = false;
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < MAX_JOBS_PER_COMMIT {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        failed = failed || progress.failed();
        let started = Instant::now();
        let result = if failed {
            Err(StorageError::WriterStopped)
        } else {
            log.append(jobs.iter().map(|j| &j.batch), sync)
                .map_err(StorageError::Log)
        };
        let ops: usize = jobs.iter().map(|j| j.batch.len()).sum();
        metrics::histogram!("chatd_storage_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("chatd_storage_batch_jobs").record(jobs.len() as f64);
        metrics::histogram!("chatd_storage_batch_ops").record(ops as f64);
        tracing::trace!(
            jobs = jobs.len(),
            ops,
            micros = started.elapsed().as_micros() as u64,
            "commit"
        );
        match result {
            Ok((appended, sealed)) => {
                let commit = appended.commit;
                let mut queued = true;
                if let Some(sealed) = sealed {
                    let index = recent.seal(appended.segment);
                    wait_for_ingestion(store);
                    queued = apply.send(Apply::Checkpoint(sealed, index)).is_ok();
                }
                // Messages and idempotency keys go to the segment's index
                // before anything is acknowledged; the rest to fjall.
                let rest = recent.add(appended.segment, |index| {
                    segments::route(log.last_ops(), appended.segment, appended.at, index)
                });
                progress.committed(commit);
                for Job { done, .. } in jobs.drain(..) {
                    let _ = done.send(Ok(commit));
                }
                let bytes = rest.bytes();
                queued = queued
                    && progress.reserve(bytes).is_ok()
                    && apply
                        .send(Apply::Commit {
                            commit,
                            batches: vec![rest],
                            bytes,
                        })
                        .is_ok();
                if !queued {
                    // The apply thread failed: the log holds this commit and
                    // the next start replays it, but nothing later can be
                    // read back, so nothing later is acknowledged.
                    failed = true;
                    progress.fail();
                }
            }
            Err(e) => {
                // After a failed write or sync the log's tail is unknown:
                // nothing written from here on could be trusted, so every
                // later job fails too.
                if !failed {
                    tracing::error!(cause = %e, "storage commit failed; refusing further writes");
                }
                failed = true;
                for job in jobs.drain(..) {
                    let _ = job.done.send(Err(StorageError::WriterStopped));
                }
            }
        }
    }
    let last = log.close();
    if !failed {
        let index = recent.seal(0);
        let _ = apply.send(Apply::Checkpoint(last, index));
    }
}

/// Waits while more than [`MAX_SEALED_SEGMENTS`] sealed segments wait for
/// the apply thread to index them (or until it failed).
fn wait_for_ingestion(store: &Store) {
    if store.recent().sealed() <= MAX_SEALED_SEGMENTS {
        return;
    }
    let started = Instant::now();
    while store.recent().sealed() > MAX_SEALED_SEGMENTS && !store.progress().failed() {
        thread::sleep(Duration::from_millis(1));
    }
    metrics::histogram!("chatd_storage_index_wait_seconds").record(started.elapsed().as_secs_f64());
}

fn apply_loop(store: &Store, rx: &crossbeam::channel::Receiver<Apply>) {
    let progress = store.progress();
    // Readers wait for this thread: if it panics, they must hear of it.
    let _guard = FailOnPanic(progress);
    let _ = progress.applier.set(thread::current());
    let mut failed = false;
    // A checkpoint found while gathering commits, to be done next.
    let mut next = None;
    loop {
        let Some(work) = next.take().or_else(|| next_work(rx)) else {
            break;
        };
        if failed {
            continue;
        }
        match work {
            Apply::Commit {
                commit,
                mut batches,
                mut bytes,
            } => {
                // The commits queued behind this one go into fjall with it,
                // as one write.
                let mut last = commit;
                while batches.len() < MAX_COMMITS_PER_APPLY {
                    match rx.try_recv() {
                        Ok(Apply::Commit {
                            commit,
                            batches: more,
                            bytes: more_bytes,
                        }) => {
                            last = commit;
                            batches.extend(more);
                            bytes += more_bytes;
                        }
                        Ok(checkpoint) => {
                            next = Some(checkpoint);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                #[cfg(test)]
                drop(progress.apply_gate.lock());
                let started = Instant::now();
                let result = store.apply(&batches);
                #[cfg(test)]
                let result = match progress.fail_applies.load(Ordering::Acquire) {
                    true => Err(fjall::Error::Poisoned.into()),
                    false => result,
                };
                metrics::histogram!("chatd_storage_apply_seconds")
                    .record(started.elapsed().as_secs_f64());
                if let Err(e) = result {
                    tracing::error!(cause = %e, commit = last, "applying a commit to the store failed");
                    failed = true;
                    progress.fail();
                    continue;
                }
                progress.applied(last, bytes);
                hold_back(store);
            }
            Apply::Checkpoint(sealed, index) => {
                let started = Instant::now();
                let result = store.checkpoint(&sealed, &index);
                metrics::histogram!("chatd_storage_checkpoint_seconds")
                    .record(started.elapsed().as_secs_f64());
                if let Err(e) = result {
                    tracing::error!(cause = %e, "persisting the store failed");
                    failed = true;
                    progress.fail();
                }
            }
        }
    }
}

/// The apply thread's next work, once there is some (none: the writer
/// has stopped). When nothing is queued it first waits [`APPLY_LINGER`],
/// so that commits gather rather than wake the thread one by one.
fn next_work(rx: &crossbeam::channel::Receiver<Apply>) -> Option<Apply> {
    match rx.try_recv() {
        Ok(work) => Some(work),
        Err(crossbeam::channel::TryRecvError::Disconnected) => None,
        Err(crossbeam::channel::TryRecvError::Empty) => {
            thread::park_timeout(APPLY_LINGER);
            rx.recv().ok()
        }
    }
}

/// Marks the store failed if the apply thread unwinds.
struct FailOnPanic<'a>(&'a Progress);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.fail();
        }
    }
}

/// Waits while fjall's memtables (active and sealed, all keyspaces) hold more
/// than [`super::WRITE_BUFFER_LIMIT`] bytes.
///
/// fjall seals a memtable and flushes it on its worker threads, and it stops
/// writers when a keyspace has 4 sealed memtables waiting. But sealing is
/// itself a job for those workers: when they get little CPU (they run at a
/// lower priority than the shards, see [`super::priority`], and
/// the machine may be saturated), the active memtable grows past its size
/// without ever being sealed, and nothing inside fjall stops it. Sleeping
/// here (on the apply thread) gives the workers the CPU to seal and flush;
/// meanwhile commits wait for it up to [`MAX_UNAPPLIED_BYTES`], then jobs
/// wait in the writer's bounded queue and senders see backpressure.
fn hold_back(store: &Store) {
    let db = store.database();
    let mut window_bytes = db.write_buffer_size();
    if stall(window_bytes, None) == Stall::Done {
        return;
    }
    let started = Instant::now();
    let mut window_start = started;
    loop {
        let bytes = db.write_buffer_size();
        let mut progress = None;
        if window_start.elapsed() >= STALL_PROGRESS_WINDOW {
            progress = Some(FlushProgress {
                shrank: bytes < window_bytes,
                flush_due: db.outstanding_flushes() > 0,
            });
            (window_start, window_bytes) = (Instant::now(), bytes);
        }
        match stall(bytes, progress) {
            Stall::Wait => thread::sleep(Duration::from_millis(1)),
            Stall::Done => break,
            Stall::NothingDue => {
                tracing::warn!(
                    bytes,
                    "memtables above the write buffer limit and no flush due; writing on"
                );
                break;
            }
        }
    }
    metrics::counter!("chatd_storage_stalls_total").increment(1);
    metrics::histogram!("chatd_storage_stall_seconds").record(started.elapsed().as_secs_f64());
}

/// What happened to the memtables over the last [`STALL_PROGRESS_WINDOW`].
#[derive(Debug, Clone, Copy)]
struct FlushProgress {
    /// They hold fewer bytes than at the start of the window.
    shrank: bool,
    /// A sealed memtable is queued for its flush.
    flush_due: bool,
}

/// The writer's decision in [`hold_back`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// Keep waiting for flushes.
    Wait,
    /// Under the limit: write on.
    Done,
    /// Over the limit with nothing due: write on, and say so.
    NothingDue,
}

/// Decides whether the apply thread keeps waiting, with memtables holding `bytes`
/// and, at the end of a window, what changed during it.
///
/// Memtables of a store created with larger ones (fjall keeps a keyspace's
/// memtable size from its creation) can exceed the limit without being due
/// for a flush; then nothing would ever bring the size down. So below
/// [`super::WRITE_BUFFER_HARD_LIMIT`] it waits only while a flush is
/// due or the size is going down; above it, always.
fn stall(bytes: u64, progress: Option<FlushProgress>) -> Stall {
    if bytes <= super::WRITE_BUFFER_LIMIT {
        return Stall::Done;
    }
    match progress {
        Some(p) if !p.shrank && !p.flush_due && bytes < super::WRITE_BUFFER_HARD_LIMIT => {
            Stall::NothingDue
        }
        _ => Stall::Wait,
    }
}

/// How long [`hold_back`] waits for the memtables to shrink or a flush to be
/// queued before it concludes that none is coming.
const STALL_PROGRESS_WINDOW: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use chat_protocol::pb;
    use prost::Message as _;

    use super::super::{Store, WRITE_BUFFER_HARD_LIMIT, WRITE_BUFFER_LIMIT, keys};
    use super::{
        Batch, FlushProgress, Ks, MAX_UNAPPLIED_BYTES, Op, Progress, SegmentIndex, Stall, Writer,
        segments, stall,
    };
    use crate::config::Durability;
    use crate::records::IdempotencyRecord;

    #[test]
    fn a_batch_reads_back_its_writes_in_order() {
        let record = IdempotencyRecord {
            seq: 7,
            message_id: 8,
            sent_at_ms: 9,
        };
        let mut b = Batch::with_capacity(Batch::put_bytes(2, 3) + Batch::delete_bytes(1));
        b.put(Ks::Users, b"ab", b"xyz");
        b.delete(Ks::Tokens, [5]);
        let at = b.put_encoded_parts(Ks::Idempotency, &[b"k", b"ey"], &record);
        assert_eq!(b.len(), 3);
        let encoded = record.encode_to_vec();
        assert_eq!(b.encoded().get(at), Some(&encoded[..]));
        let expected = [
            Op::Put(Ks::Users, b"ab", b"xyz"),
            Op::Delete(Ks::Tokens, &[5]),
            Op::Put(Ks::Idempotency, b"key", &encoded),
        ];
        assert_eq!(b.ops().collect::<Vec<_>>(), expected);
        // Offsets of the values, for the log's index of a record.
        let values: Vec<usize> = b.ops().with_values().map(|(_, at)| at).collect();
        assert_eq!(&b.encoded()[values[0]..values[0] + 3], b"xyz");
        assert_eq!(values[1], 0, "a deletion has no value");
        // The log's operation format, decoded back whole.
        assert_eq!(Batch::decode(b.encoded()), Ok(b.clone()));
        let mut merged = Batch::new();
        merged.extend(b.clone());
        merged.extend(b.clone());
        assert_eq!(merged.len(), 6);
        assert_eq!(merged.ops().skip(3).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn malformed_operations_do_not_decode() {
        let mut b = Batch::new();
        b.put(Ks::Users, b"ab", b"xyz");
        let whole = b.encoded().to_vec();
        for cut in 1..whole.len() {
            assert!(Batch::decode(&whole[..cut]).is_err(), "cut at {cut}");
        }
        let mut unknown = whole.clone();
        unknown[0] = 9;
        assert!(Batch::decode(&unknown).is_err(), "unknown operation");
        let mut keyspace = whole;
        keyspace[1] = 200;
        assert!(Batch::decode(&keyspace).is_err(), "unknown keyspace");
        assert_eq!(Batch::decode(&[]), Ok(Batch::new()));
    }

    /// Runs `wait` on another thread; returns whether it finished within
    /// 50 ms after `release` ran (and not before).
    fn blocks_until(wait: impl FnOnce() + Send + 'static, release: impl FnOnce()) -> bool {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let waiter = std::thread::spawn(move || {
            wait();
            flag.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        let early = done.load(Ordering::SeqCst);
        release();
        waiter.join().expect("waiter");
        !early && done.load(Ordering::SeqCst)
    }

    #[test]
    fn a_read_waits_until_fjall_holds_what_was_acknowledged() {
        let p = Arc::new(Progress::new(5));
        p.settle()
            .expect("nothing pending after a start at commit 5");
        p.committed(5);
        p.committed(6);
        assert_eq!(p.unapplied(), 2);
        p.wait_applied(4).expect("older commits are in fjall");
        let reader = p.clone();
        assert!(blocks_until(
            move || reader.settle().expect("settled"),
            || {
                p.applied(5, 0);
                p.applied(6, 0);
            }
        ));
    }

    #[test]
    fn a_failed_apply_thread_fails_waiting_reads_and_writes() {
        let p = Arc::new(Progress::new(1));
        p.committed(1);
        let reader = p.clone();
        assert!(blocks_until(
            move || assert!(reader.settle().is_err()),
            || p.fail()
        ));
    }

    #[test]
    fn the_writer_waits_while_too_much_is_unapplied() {
        let p = Arc::new(Progress::new(1));
        p.reserve(MAX_UNAPPLIED_BYTES).expect("room");
        p.committed(1);
        let writer = p.clone();
        assert!(blocks_until(
            move || writer.reserve(1).expect("room again"),
            || p.applied(1, MAX_UNAPPLIED_BYTES)
        ));
        // One commit larger than the bound still goes when nothing waits.
        let q = Progress::new(1);
        q.reserve(2 * MAX_UNAPPLIED_BYTES).expect("alone");
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).expect("copy");
            }
        }
    }

    /// The log segments in `dir` (not the spare files made ready for them).
    fn segments(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .expect("log dir")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n.to_string_lossy().ends_with(".log"))
            .collect()
    }

    fn message(seq: u64) -> pb::Message {
        pb::Message {
            conversation_id: 1,
            seq,
            // 8 KiB each: the commits below fill more than one segment.
            text: format!("{seq:08}").repeat(1024),
            ..Default::default()
        }
    }

    /// Writes [`message`] `seq` of conversation 1 and waits for its answer.
    fn write_message(writer: &Writer, seq: u64) -> super::Result<u64> {
        let mut b = Batch::new();
        b.put(
            Ks::Messages,
            keys::message(1, seq),
            message(seq).encode_to_vec(),
        );
        writer.write_blocking(b)
    }

    /// The apply thread is stopped while hundreds of commits are
    /// acknowledged: their segments are not indexed in fjall. A copy of
    /// the data taken then (what a killed process leaves) opens with every
    /// one of them.
    #[test]
    fn commits_the_store_never_got_are_replayed_from_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store_dir, log_dir) = (dir.path().join("store"), dir.path().join("log"));
        let store = Store::open(&store_dir, &log_dir).expect("open");
        let (writer, thread) = Writer::start(store.clone(), Durability::Sync, 64).expect("start");
        let write = |seq: u64| write_message(&writer, seq).expect("acknowledged");
        let applied: u64 = 10;
        for seq in 1..=applied {
            write(seq);
        }
        assert!(store.message(1, applied).expect("read").is_some());
        store.progress().settle().expect("applied");
        let last: u64 = 400;
        let gate = store.progress().apply_gate.lock();
        for seq in applied + 1..=last {
            write(seq);
        }
        assert_eq!(store.progress().unapplied(), last - applied);
        assert!(segments(&log_dir).len() >= 2, "{:?}", segments(&log_dir));
        // Messages are readable at once: the writer indexed them.
        assert_eq!(store.message(1, last).expect("read"), Some(message(last)));

        let crashed = tempfile::tempdir().expect("tempdir");
        let (crashed_store, crashed_log) =
            (crashed.path().join("store"), crashed.path().join("log"));
        copy_dir(&store_dir, &crashed_store);
        copy_dir(&log_dir, &crashed_log);
        drop(gate);
        drop(writer);
        thread.join();

        let recovered = Store::open(&crashed_store, &crashed_log).expect("replay");
        for seq in 1..=last {
            let got = recovered.message(1, seq).expect("read");
            assert!(
                got.as_ref() == Some(&message(seq)),
                "seq {seq}: {:?}",
                got.map(|m| (m.seq, m.text.len()))
            );
        }
        assert_eq!(recovered.message(1, last + 1).expect("read"), None);
        assert_eq!(recovered.progress().unapplied(), 0);
        assert_eq!(recovered.recent().sealed(), 0, "all indexed in fjall");
        assert_eq!(
            recovered.indexed_through().expect("marker"),
            recovered.progress().next_commit() - 1
        );
        // The segments are the message store: they stay, and the store
        // opens again with every message, replaying nothing.
        assert!(segments(&crashed_log).len() >= 2);
        drop(recovered);
        let again = Store::open(&crashed_store, &crashed_log).expect("reopen");
        assert_eq!(again.last_seq(1).expect("read"), last);
        let page = again.messages_before(1, 0, 1000).expect("page");
        assert_eq!(page.len() as u64, last);
        assert!(page.iter().rev().map(|m| m.seq).eq(1..=last));
    }

    /// A failed fjall write stops the writer acknowledging anything more,
    /// fails reads waiting for it, and lets the writer shut down; what was
    /// acknowledged before (including the commit whose apply failed) comes
    /// back from the log on the next start.
    #[test]
    fn a_failed_apply_stops_acknowledgements_and_loses_nothing_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store_dir, log_dir) = (dir.path().join("store"), dir.path().join("log"));
        let store = Store::open(&store_dir, &log_dir).expect("open");
        let (writer, thread) = Writer::start(store.clone(), Durability::Sync, 64).expect("start");
        let write = |seq: u64| write_message(&writer, seq);
        write(1).expect("acknowledged");
        store.progress().settle().expect("applied");
        store.progress().fail_applies.store(true, Ordering::Release);
        // Durable in the log, so acknowledged; its apply then fails.
        write(2).expect("acknowledged before the apply");
        assert!(store.progress().settle().is_err(), "a waiting read fails");
        assert!(write(3).is_err(), "nothing more is acknowledged");
        assert!(write(4).is_err(), "nor after that");
        drop(writer);
        thread.join();
        drop(store);

        let reopened = Store::open(&store_dir, &log_dir).expect("reopen");
        assert_eq!(reopened.message(1, 1).expect("read"), Some(message(1)));
        assert_eq!(reopened.message(1, 2).expect("read"), Some(message(2)));
        assert_eq!(reopened.message(1, 3).expect("read"), None);
        assert_eq!(reopened.last_seq(1).expect("read"), 2);
    }

    /// Interleaved conversations over several segments, with messages
    /// deleted (put again, redacted) after their segment was indexed and
    /// within the segment being written: every read agrees with a model of
    /// the newest version of each message, live, after a second ingestion
    /// of a segment (a crash between ingesting and marking it indexed) and
    /// after reopening.
    #[test]
    fn runs_and_newer_versions_read_as_the_newest_version_of_each_message() {
        use std::collections::BTreeMap;
        let dir = tempfile::tempdir().expect("tempdir");
        let (store_dir, log_dir) = (dir.path().join("store"), dir.path().join("log"));
        let store = Store::open(&store_dir, &log_dir).expect("open");
        let (writer, thread) = Writer::start(store.clone(), Durability::Sync, 64).expect("start");
        let mut model: BTreeMap<(u64, u64), String> = BTreeMap::new();
        let put = |conversation: u64, seq: u64, text: String, model: &mut BTreeMap<_, _>| {
            let m = pb::Message {
                conversation_id: conversation,
                seq,
                text: text.clone(),
                ..Default::default()
            };
            let mut b = Batch::new();
            b.put(
                Ks::Messages,
                keys::message(conversation, seq),
                m.encode_to_vec(),
            );
            writer.write_blocking(b).expect("acknowledged");
            model.insert((conversation, seq), text);
        };
        let big = |c: u64, s: u64| format!("{c}/{s:06}").repeat(600);
        for seq in 1..=300u64 {
            for conversation in 1..=3u64 {
                // Conversation 3 sends every third round only.
                if conversation < 3 || seq % 3 == 0 {
                    put(conversation, seq, big(conversation, seq), &mut model);
                }
            }
            if seq % 50 == 0 {
                // Delete an early message, now in an indexed segment, and
                // one from a moment ago, in the segment being written.
                put(1, seq / 10, String::new(), &mut model);
                put(2, seq - 1, String::new(), &mut model);
            }
        }
        assert!(segments(&log_dir).len() >= 3, "{:?}", segments(&log_dir));
        let check = |store: &Store| {
            for conversation in 1..=3u64 {
                let seqs: Vec<u64> = model
                    .range((conversation, 0)..=(conversation, u64::MAX))
                    .map(|((_, s), _)| *s)
                    .collect();
                // Short enough to read in a failure: the text's head and length.
                let brief = |t: &str| format!("{}:{}", &t[..t.len().min(8)], t.len());
                let text = |m: &pb::Message| brief(&m.text);
                let want = |s: &u64| brief(&model[&(conversation, *s)]);
                let last = *seqs.last().expect("messages");
                assert_eq!(store.last_seq(conversation).expect("read"), last);
                for &seq in &seqs {
                    let got = store.message(conversation, seq).expect("read");
                    assert_eq!(
                        got.as_ref().map(text),
                        Some(want(&seq)),
                        "{conversation}/{seq}"
                    );
                }
                assert_eq!(store.message(conversation, last + 1).expect("read"), None);
                for limit in [1, 7, 64, 1000] {
                    for cursor in [0, 1, 2, 50, 151, last, last + 5] {
                        let before = store
                            .messages_before(conversation, cursor, limit)
                            .expect("page");
                        let expected: Vec<String> = seqs
                            .iter()
                            .rev()
                            .filter(|s| cursor == 0 || **s < cursor)
                            .take(limit)
                            .map(want)
                            .collect();
                        assert_eq!(
                            before.iter().map(text).collect::<Vec<_>>(),
                            expected,
                            "before {cursor}, limit {limit}"
                        );
                        let after = store
                            .messages_after(conversation, cursor, limit)
                            .expect("page");
                        let expected: Vec<String> = seqs
                            .iter()
                            .filter(|s| **s > cursor)
                            .take(limit)
                            .map(want)
                            .collect();
                        assert_eq!(
                            after.iter().map(text).collect::<Vec<_>>(),
                            expected,
                            "after {cursor}, limit {limit}"
                        );
                    }
                }
            }
        };
        store.progress().settle().expect("applied");
        check(&store);
        drop(writer);
        thread.join();
        check(&store);
        // Readers went through runs of indexed segments and through newer
        // versions kept on their own, not only through recent segments.
        assert!(store.ks.message_runs.iter().count() >= 6);
        assert!(store.ks.message_index.iter().count() >= 3);
        // Ingesting the newest segment again, as recovery does after a crash
        // between its ingestion and its marker, changes nothing a reader
        // sees.
        let mut index = SegmentIndex::default();
        let newest = segments(&log_dir)
            .iter()
            .filter_map(|n| n.to_str()?.strip_suffix(".log")?.parse::<u64>().ok())
            .max()
            .expect("a segment");
        crate::storage::log::replay(&log_dir, 0, |event| {
            if let crate::storage::log::Replay::Record { segment, at, batch } = event {
                if segment == newest {
                    let ops = crate::storage::log::in_record(&batch);
                    segments::route(ops, segment, at, &mut index);
                }
            }
            Ok(())
        })
        .expect("replay");
        assert!(!index.messages.is_empty());
        store.ingest(&index).expect("ingest again");
        check(&store);
        drop(store);
        let reopened = Store::open(&store_dir, &log_dir).expect("reopen");
        check(&reopened);
    }

    const STUCK: FlushProgress = FlushProgress {
        shrank: false,
        flush_due: false,
    };

    #[test]
    fn under_the_limit_writes_on() {
        assert_eq!(stall(WRITE_BUFFER_LIMIT, None), Stall::Done);
        assert_eq!(stall(0, Some(STUCK)), Stall::Done);
    }

    #[test]
    fn over_the_limit_waits_while_flushes_are_due_or_memory_shrinks() {
        let over = WRITE_BUFFER_LIMIT + 1;
        assert_eq!(stall(over, None), Stall::Wait);
        let due = FlushProgress {
            shrank: false,
            flush_due: true,
        };
        assert_eq!(stall(over, Some(due)), Stall::Wait);
        let shrinking = FlushProgress {
            shrank: true,
            flush_due: false,
        };
        assert_eq!(stall(over, Some(shrinking)), Stall::Wait);
    }

    #[test]
    fn over_the_limit_with_nothing_due_writes_on_below_the_hard_limit_only() {
        assert_eq!(
            stall(WRITE_BUFFER_LIMIT + 1, Some(STUCK)),
            Stall::NothingDue
        );
        assert_eq!(stall(WRITE_BUFFER_HARD_LIMIT, Some(STUCK)), Stall::Wait);
    }
}
