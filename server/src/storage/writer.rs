//! The storage writer: one thread that group-commits every write.
//!
//! Shards and account handlers send [`Batch`]es through a bounded queue.
//! The thread takes whatever is queued (up to [`MAX_JOBS_PER_COMMIT`]),
//! writes it as one fjall batch with one fsync, and only then completes each
//! job's reply. So a message is acknowledged only after its batch is
//! durable, and under load one fsync covers many messages.
//!
//! After each commit the writer holds back while fjall's memtables hold more
//! than [`super::WRITE_BUFFER_LIMIT`] bytes (see [`hold_back`]): that is what
//! bounds the store's memory when its background workers fall behind.

use std::thread;
use std::time::{Duration, Instant};

use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot};

use super::{Ks, Result, StorageError, Store};
use crate::config::Durability;

/// Jobs folded into one commit at most. Bounds the latency of the first job
/// of a turn behind a large backlog; 1024 jobs of typical messages is well
/// under a megabyte of journal.
pub const MAX_JOBS_PER_COMMIT: usize = 1024;

/// Writes that become durable together or not at all.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
}

#[derive(Debug)]
enum Op {
    Put(Ks, Vec<u8>, Vec<u8>),
    Delete(Ks, Vec<u8>),
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` in `ks`.
    pub fn put(&mut self, ks: Ks, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(ks, key.into(), value.into()));
    }

    /// Removes `key` from `ks`.
    pub fn delete(&mut self, ks: Ks, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(ks, key.into()));
    }

    /// An empty batch with room for `ops` writes.
    pub fn with_capacity(ops: usize) -> Self {
        Self {
            ops: Vec::with_capacity(ops),
        }
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends another batch's writes.
    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }
}

struct Job {
    batch: Batch,
    done: oneshot::Sender<Result<()>>,
}

/// Handle to the writer thread. Cloning shares the queue.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

/// Joins the writer thread; it exits once every [`Writer`] is dropped and
/// the queue is drained.
#[derive(Debug)]
pub struct WriterThread(thread::JoinHandle<()>);

impl WriterThread {
    /// Waits for the thread to commit what is queued and exit.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Writer {
    /// Starts the writer thread with a queue of `capacity` jobs.
    pub fn start(
        store: Store,
        durability: Durability,
        capacity: usize,
    ) -> std::io::Result<(Self, WriterThread)> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let handle = thread::Builder::new()
            .name("chatd-storage".into())
            .spawn(move || run(store, durability, rx))?;
        Ok((Self { tx }, WriterThread(handle)))
    }

    /// Commits `batch` durably (per the durability mode). Waits for queue
    /// space, then for the commit.
    pub async fn write(&self, batch: Batch) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job { batch, done })
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        wait.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// [`Writer::write`] for code already on a blocking thread.
    pub fn write_blocking(&self, batch: Batch) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .blocking_send(Job { batch, done })
            .map_err(|_| StorageError::WriterStopped)?;
        wait.blocking_recv()
            .map_err(|_| StorageError::WriterStopped)?
    }

    /// Jobs waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

fn run(store: Store, durability: Durability, mut rx: mpsc::Receiver<Job>) {
    let mode = match durability {
        Durability::Sync => PersistMode::SyncData,
        Durability::Buffered => PersistMode::Buffer,
    };
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
        let started = Instant::now();
        let result = if failed {
            Err(StorageError::WriterStopped)
        } else {
            commit(&store, mode, &jobs)
        };
        let ops: usize = jobs.iter().map(|j| j.batch.ops.len()).sum();
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
            Ok(()) => {
                for job in jobs.drain(..) {
                    let _ = job.done.send(Ok(()));
                }
                hold_back(&store);
            }
            Err(e) => {
                // fjall poisons itself after a failed fsync; nothing written
                // from here on could be trusted, so every later job fails too.
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
    if !failed {
        if let Err(e) = store.database().persist(PersistMode::SyncAll) {
            tracing::error!(cause = %e, "final persist failed");
        }
    }
}

/// Waits while fjall's memtables (active and sealed, all keyspaces) hold more
/// than [`super::WRITE_BUFFER_LIMIT`] bytes.
///
/// fjall seals a memtable and flushes it on its worker threads, and it stops
/// writers when a keyspace has 4 sealed memtables waiting. But sealing is
/// itself a job for those workers: when they get little CPU (they run at a
/// lower priority than the shards, see [`super::BACKGROUND_NICE`], and
/// the machine may be saturated), the active memtable grows past its size
/// without ever being sealed, and nothing inside fjall stops it. Sleeping
/// here gives the workers the CPU to seal and flush; meanwhile jobs wait in
/// the bounded queue and senders see backpressure.
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
            progress = Some(Progress {
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
struct Progress {
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

/// Decides whether the writer keeps waiting, with memtables holding `bytes`
/// and, at the end of a window, what changed during it.
///
/// Memtables of a store created with larger ones (fjall keeps a keyspace's
/// memtable size from its creation) can exceed the limit without being due
/// for a flush; then nothing would ever bring the size down. So below
/// [`super::WRITE_BUFFER_HARD_LIMIT`] the writer waits only while a flush is
/// due or the size is going down; above it, always.
fn stall(bytes: u64, progress: Option<Progress>) -> Stall {
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

fn commit(store: &Store, mode: PersistMode, jobs: &[Job]) -> Result<()> {
    let mut batch = store.database().batch().durability(Some(mode));
    for job in jobs {
        for op in &job.batch.ops {
            match op {
                Op::Put(ks, k, v) => batch.insert(store.keyspace(*ks), k.as_slice(), v.as_slice()),
                Op::Delete(ks, k) => batch.remove(store.keyspace(*ks), k.as_slice()),
            }
        }
    }
    batch.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{WRITE_BUFFER_HARD_LIMIT, WRITE_BUFFER_LIMIT};
    use super::{Progress, Stall, stall};

    const STUCK: Progress = Progress {
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
        let due = Progress {
            shrank: false,
            flush_due: true,
        };
        assert_eq!(stall(over, Some(due)), Stall::Wait);
        let shrinking = Progress {
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
