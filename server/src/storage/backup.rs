//! A consistent copy of a running store (README, "Backups").
//!
//! The copy is a state that recovery already knows how to start from: the
//! state a crash could leave. It is taken in three steps:
//!
//! 1. Wait until fjall holds every commit acknowledged when the backup
//!    began, then take a fjall snapshot. fjall applies each commit as one
//!    atomic batch, and a sealed segment's index as one ingestion followed
//!    by its `indexed_through` mark, so the snapshot holds a prefix of the
//!    apply thread's work: every commit through some commit `A` (at least
//!    the last one acknowledged when the backup began), and the index of
//!    the segments through some mark.
//! 2. Write the snapshot, keyspace by keyspace, into a new fjall database
//!    as sorted tables (fjall's ingestion), and persist it.
//! 3. Copy the log's segments, after the snapshot was taken: a commit is in
//!    the log before it is applied, so the copy holds every commit through
//!    `A`, and perhaps some after it. The segment being written may end in
//!    a record cut short by the copy; replay treats it as the tail of a
//!    commit whose sync never finished, as after a crash.
//!
//! Starting chatd on the copy replays the copied segments after the
//! snapshot's `indexed_through` mark, as every start does. Replaying a
//! commit that fjall already holds writes the same values again, so the
//! store it serves holds every commit in the copied log, in order.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use fjall::{Database, Readable};

use super::{Result, StorageError, Store, keyspace_options, log};

/// What [`Store::backup`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// The last commit acknowledged when the backup began: the copy holds it
    /// and every commit before it.
    pub acknowledged: u64,
    /// Keyspaces written.
    pub keyspaces: usize,
    /// Key-value pairs written.
    pub items: u64,
    /// Log segments copied.
    pub segments: usize,
    /// Bytes of log copied.
    pub log_bytes: u64,
}

/// Pairs between two looks at the stop flag while a keyspace is written.
const STOP_CHECK_ITEMS: u64 = 4096;

fn stopped() -> StorageError {
    StorageError::Log(io::Error::new(
        io::ErrorKind::Interrupted,
        "the server is shutting down",
    ))
}

impl Store {
    /// Copies the store into `store_dir` (a new fjall database) and
    /// `log_dir` (the log's segments), both new or empty, while the server
    /// goes on writing. Blocks: run it on a thread of its own. Gives up
    /// with an error once `stop` is set.
    pub fn backup(&self, store_dir: &Path, log_dir: &Path, stop: &AtomicBool) -> Result<Copied> {
        let acknowledged = self.progress.last_committed();
        self.progress.wait_applied(acknowledged)?;
        let snapshot = self.db.snapshot();
        let mut copied = Copied {
            acknowledged,
            ..Copied::default()
        };

        let out = Database::builder(store_dir).worker_threads(1).open()?;
        let mut names = self.db.list_keyspace_names();
        names.sort();
        for name in names {
            let name: &str = &name;
            let from = self.db.keyspace(name, || keyspace_options(name))?;
            let to = out.keyspace(name, || keyspace_options(name))?;
            let mut items = snapshot.iter(&from).peekable();
            if items.peek().is_some() {
                let mut run = to.start_ingestion()?;
                for (n, item) in items.enumerate() {
                    if n as u64 % STOP_CHECK_ITEMS == 0 && stop.load(Ordering::Relaxed) {
                        return Err(stopped());
                    }
                    let (key, value) = item.into_inner()?;
                    run.write(key, value)?;
                    copied.items += 1;
                }
                run.finish()?;
            }
            copied.keyspaces += 1;
        }
        out.persist(fjall::PersistMode::SyncAll)?;
        drop(out);
        drop(snapshot);

        std::fs::create_dir_all(log_dir)?;
        for (_, path) in log::segments(&self.log_dir)? {
            if stop.load(Ordering::Relaxed) {
                return Err(stopped());
            }
            let Some(name) = path.file_name() else {
                continue;
            };
            copied.log_bytes += copy_file(&path, &log_dir.join(name))?;
            copied.segments += 1;
        }
        log::sync_dir(log_dir)?;
        Ok(copied)
    }
}

/// Copies `from` to `to` and syncs the copy. Returns the bytes copied.
pub(crate) fn copy_file(from: &Path, to: &Path) -> io::Result<u64> {
    let mut source = std::fs::File::open(from)?;
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    let bytes = io::copy(&mut source, &mut target)?;
    target.sync_all()?;
    Ok(bytes)
}
