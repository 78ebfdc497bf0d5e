//! The commit log: what makes an acknowledged write durable.
//!
//! The storage writer appends each group commit to the log as one record
//! and syncs it before it acknowledges any job of the commit. fjall is
//! brought up to date from the same commit afterwards, on another thread
//! and without a sync of its own (see [`super::writer`]), so fjall's pauses
//! stay out of the time to an ack: after a flush or a compaction fjall
//! writes and syncs the tree's new version file under a lock that every
//! insert takes, and inserts wait for it.
//!
//! The log lives in `data_dir/log`, one file per segment, named by the
//! commit number of its first record (20 digits, `.log`). A segment is
//! written in full with zeros and synced before its first record, so a sync
//! after a record persists data only, never a block allocation or a new
//! file size; a helper thread keeps the next one ready (writing the zeros
//! past the page cache where it can, and so appends write whole pages). Segments start at
//! [`FIRST_SEGMENT_BYTES`] and double up to [`MAX_SEGMENT_BYTES`]. A record
//! never spans two segments; one larger than a segment gets an empty segment
//! to itself, which grows.
//!
//! A record:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | length of the body, little-endian |
//! | 4 | CRC-32 of the body, little-endian |
//! | 8 | body: commit number, little-endian |
//! | … | body: the operations, in order |
//!
//! An operation is a kind (1 put, 2 delete), a keyspace code
//! ([`Ks::code`]), the key's length (4 bytes, little-endian) and the key,
//! then for a put the value's length and the value.
//!
//! [`replay`] reads the segments in order of their first commit. A segment
//! ends at a zero length, a record running past the end of the file, a
//! checksum that does not match or a commit number out of sequence: what
//! follows is the tail of a commit whose sync never finished, which was
//! never acknowledged.
//!
//! Segments are never deleted: they are where the messages live
//! ([`super::segments`]). When a segment is sealed, the apply thread
//! ingests its message index into fjall, persists fjall and then records
//! the segment's last commit as `indexed_through` in the `meta` keyspace.
//! Recovery replays only the segments after that marker, so a restart
//! reads the log written since the last sealed segment, not all of it. The
//! segment after the marker must begin with the next commit; one that
//! does not means a segment is missing and the store refuses to open.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;

use crossbeam::channel;

use super::writer::{Batch, Op};
use super::{Result, StorageError};

/// Size of the first segment after start-up (1 MiB): a server that writes
/// little zero-fills little.
pub const FIRST_SEGMENT_BYTES: u64 = 1 << 20;

/// Largest size segments grow to (16 MiB). At 20,000 messages a second a
/// segment lasts about four seconds.
pub const MAX_SEGMENT_BYTES: u64 = 16 << 20;

const HEADER_BYTES: usize = 8;
/// Appends write whole pages of this size ([`Log::append`]).
const PAGE: u64 = 4096;
/// Alignment of the buffer `O_DIRECT` writes from: a page, at least the
/// logical block size of any disk.
const DIRECT_ALIGN: usize = 4096;
const COMMIT_BYTES: usize = 8;
const SEGMENT_SUFFIX: &str = ".log";
const SPARE_SUFFIX: &str = ".tmp";
const DAMAGED_SUFFIX: &str = ".damaged";

/// A segment the log has finished writing. Its index may be ingested into
/// fjall and marked as indexed once fjall holds every commit up to
/// `last_commit`.
#[derive(Debug)]
pub struct Sealed {
    /// Its file.
    pub path: PathBuf,
    /// The commit of its first record: the segment's name and its id in
    /// message locations ([`super::segments::Loc`]).
    pub first_commit: u64,
    /// The commit of its last record.
    pub last_commit: u64,
    /// Bytes of records; what follows is unused zeros.
    pub end: u64,
}

/// Where [`Log::append`] put a record.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    /// The record's commit number.
    pub commit: u64,
    /// The segment holding it (the commit of the segment's first record).
    pub segment: u64,
    /// Offset of the record in the segment's file.
    pub at: u64,
}

struct Segment {
    file: File,
    path: PathBuf,
    first: u64,
    written: u64,
    capacity: u64,
}

/// A zero-filled, synced file waiting to become a segment.
struct Spare {
    file: File,
    path: PathBuf,
    capacity: u64,
}

/// The log, open for appending. Owned by the storage writer thread.
pub struct Log {
    dir: PathBuf,
    current: Segment,
    next_commit: u64,
    /// What the last append wrote: the file's bytes from the page where
    /// it began, the record at `record` within them.
    written: Vec<u8>,
    record: std::ops::Range<usize>,
    spares: Option<channel::Receiver<io::Result<Spare>>>,
    preparer: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("segment", &self.current.path)
            .field("next_commit", &self.next_commit)
            .finish()
    }
}

impl Log {
    /// Starts a log in `dir` whose first record will be commit
    /// `next_commit`. Segments left in `dir` must have been replayed and
    /// removed before; spare files left by an earlier run are deleted.
    pub fn open(dir: &Path, next_commit: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.to_string_lossy().ends_with(SPARE_SUFFIX) {
                fs::remove_file(&path)?;
            }
        }
        let (tx, rx) = channel::bounded(0);
        let preparer = {
            let dir = dir.to_path_buf();
            thread::Builder::new()
                .name("chatd-log-prep".into())
                .spawn(move || {
                    super::priority::lower();
                    prepare(&dir, &tx)
                })?
        };
        let first = recv_spare(&rx)?;
        let current = activate(dir, first, next_commit)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            current,
            next_commit,
            written: Vec::with_capacity(64 << 10),
            record: 0..0,
            spares: Some(rx),
            preparer: Some(preparer),
        })
    }

    /// The commit number the next record gets.
    pub fn next_commit(&self) -> u64 {
        self.next_commit
    }

    /// Appends the writes of `batches` as one record, synced with
    /// `fdatasync` if `sync`. Returns where it went and, if the record
    /// started a new segment, the one it sealed. [`Log::last_ops`] then
    /// gives the record's operations and the place of each put's value.
    pub fn append<'a>(
        &mut self,
        batches: impl IntoIterator<Item = &'a Batch>,
        sync: bool,
    ) -> io::Result<(Appended, Option<Sealed>)> {
        let commit = self.next_commit;
        // Writes cover whole pages: a write of part of a page the page cache
        // does not hold reads the page from disk first (the zeros were
        // written past the cache, see `zero_filled`). So each write starts
        // at the page where the segment's end is, with the bytes of that
        // page the last write left there, and is padded with zeros to the
        // end of its last page.
        let tail = (self.current.written % PAGE) as usize;
        let kept = self.record.end.saturating_sub(tail)..self.record.end;
        self.written.copy_within(kept, 0);
        self.written.truncate(tail);
        let start = encode(&mut self.written, commit, batches);
        let len = (self.written.len() - start) as u64;
        let mut sealed = None;
        if self.current.written > 0 && self.current.written + len > self.current.capacity {
            let spare = match &self.spares {
                Some(rx) => recv_spare(rx)?,
                None => return Err(io::Error::other("log closed")),
            };
            let next = activate(&self.dir, spare, commit)?;
            let old = std::mem::replace(&mut self.current, next);
            sealed = Some(old.seal(commit - 1));
            // A new segment begins with this record.
            self.written.drain(..start);
        }
        let at = self.current.written;
        let page = at - at % PAGE;
        self.record = (at - page) as usize..(at - page + len) as usize;
        let padded = self.written.len().next_multiple_of(PAGE as usize);
        self.written.resize(padded, 0);
        self.current.file.write_all_at(&self.written, page)?;
        if sync {
            self.current.file.sync_data()?;
        }
        self.current.written += len;
        self.next_commit += 1;
        let appended = Appended {
            commit,
            segment: self.current.first,
            at,
        };
        Ok((appended, sealed))
    }

    /// The operations of the record last appended, in order, each with
    /// the offset of its value (of a put) from the start of the record.
    pub fn last_ops(&self) -> impl Iterator<Item = (Op<'_>, usize)> {
        let record = self.written.get(self.record.clone()).unwrap_or_default();
        record_ops(record.get(HEADER_BYTES..).unwrap_or_default())
    }

    /// Seals the current segment. The log is dropped here, which stops the
    /// helper thread (deleting its spare).
    pub fn close(self) -> Sealed {
        Sealed {
            path: self.current.path.clone(),
            first_commit: self.current.first,
            last_commit: self.next_commit.saturating_sub(1),
            end: self.current.written,
        }
    }
}

impl Segment {
    fn seal(self, last_commit: u64) -> Sealed {
        Sealed {
            path: self.path,
            first_commit: self.first,
            last_commit,
            end: self.written,
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.spares = None;
        if let Some(preparer) = self.preparer.take() {
            let _ = preparer.join();
        }
    }
}

fn recv_spare(rx: &channel::Receiver<io::Result<Spare>>) -> io::Result<Spare> {
    rx.recv()
        .map_err(|_| io::Error::other("log segment preparer stopped"))?
}

/// The file name of the segment whose first record is commit `first`.
pub fn segment_name(first: u64) -> String {
    format!("{first:020}{SEGMENT_SUFFIX}")
}

/// Renames a spare to the segment starting at `first` and makes the name
/// durable before anything is written to it.
fn activate(dir: &Path, spare: Spare, first: u64) -> io::Result<Segment> {
    let path = dir.join(segment_name(first));
    fs::rename(&spare.path, &path)?;
    sync_dir(dir)?;
    metrics::counter!("chatd_log_segments_total").increment(1);
    Ok(Segment {
        file: spare.file,
        path,
        first,
        written: 0,
        capacity: spare.capacity,
    })
}

/// The helper thread: keeps one zero-filled segment ready, each twice the
/// size of the one before up to [`MAX_SEGMENT_BYTES`]. Exits (deleting an
/// unused spare) when the log is closed, or after reporting an error.
fn prepare(dir: &Path, tx: &channel::Sender<io::Result<Spare>>) {
    let mut capacity = FIRST_SEGMENT_BYTES;
    for n in 0u64.. {
        let spare = zero_filled(&dir.join(format!("spare-{n}{SPARE_SUFFIX}")), capacity);
        let failed = spare.is_err();
        if let Err(channel::SendError(unused)) = tx.send(spare) {
            if let Ok(s) = unused {
                let _ = fs::remove_file(s.path);
            }
            return;
        }
        if failed {
            return;
        }
        capacity = (capacity * 2).min(MAX_SEGMENT_BYTES);
    }
}

fn zero_filled(path: &Path, capacity: u64) -> io::Result<Spare> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    write_zeros(&file, path, capacity)?;
    file.sync_all()?;
    Ok(Spare {
        file,
        path: path.to_path_buf(),
        capacity,
    })
}

/// Writes `capacity` zeros (a multiple of a MiB) into the new, empty
/// `file` at `path`. Through a second handle opened with `O_DIRECT` where
/// the file system allows it: the zeros then go to disk from one buffer
/// without passing through the page cache, which costs a fraction of the
/// CPU (a buffered fill of the log's segments was 9 % of the server's at
/// full load). The log's whole-page writes keep the page cache from
/// reading those pages back. Elsewhere (tmpfs, some network file systems)
/// through the page cache.
fn write_zeros(file: &File, path: &Path, capacity: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let buffer = vec![0u8; CHUNK + DIRECT_ALIGN];
    let aligned = buffer.as_ptr().align_offset(DIRECT_ALIGN);
    let zeros = buffer.get(aligned..aligned + CHUNK).unwrap_or_default();
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path);
    let mut at = 0;
    if let Ok(direct) = direct {
        while at < capacity {
            match direct.write_all_at(zeros, at) {
                Ok(()) => at += CHUNK as u64,
                // Not for this file system after all: the rest buffered.
                Err(e)
                    if at == 0
                        && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
                {
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    while at < capacity {
        file.write_all_at(zeros, at)?;
        at += CHUNK as u64;
    }
    Ok(())
}

/// The segments in `dir` (none if it does not exist), with the commit
/// each begins with, in log order. Spare and damaged segments are not
/// among them.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    if dir.exists() {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(first) = name
                .strip_suffix(SEGMENT_SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            {
                segments.push((first, path));
            }
        }
    }
    segments.sort();
    Ok(segments)
}

/// Makes renames and deletions in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Appends the record of commit `commit` holding the writes of `batches`
/// to `buf`. Returns where in `buf` it begins.
fn encode<'a>(
    buf: &mut Vec<u8>,
    commit: u64,
    batches: impl IntoIterator<Item = &'a Batch>,
) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_BYTES]);
    buf.extend_from_slice(&commit.to_le_bytes());
    for batch in batches {
        buf.extend_from_slice(batch.encoded());
    }
    let body = buf.get(start + HEADER_BYTES..).unwrap_or_default();
    // Length in the low four bytes, checksum in the high four: both
    // little-endian, as the table above says.
    let header = u64::from(body.len() as u32) | u64::from(crc32fast::hash(body)) << 32;
    if let Some(h) = buf.get_mut(start..start + HEADER_BYTES) {
        h.copy_from_slice(&header.to_le_bytes());
    }
    start
}

/// The operations of a record's `body` (checked by [`decode`] or written
/// by [`encode`]), each with the offset of its value from the start of the
/// record.
fn record_ops(body: &[u8]) -> impl Iterator<Item = (Op<'_>, usize)> {
    let ops = body.get(COMMIT_BYTES..).unwrap_or_default();
    super::writer::ops_in(ops)
        .with_values()
        .map(|(op, value)| (op, value + HEADER_BYTES + COMMIT_BYTES))
}

/// The operations of `batch`, read back from a record that holds it alone
/// ([`Replay::Record`]), each with the offset of its value from the start
/// of the record, as [`Log::last_ops`] has them.
pub fn in_record(batch: &Batch) -> impl Iterator<Item = (Op<'_>, usize)> {
    batch
        .ops()
        .with_values()
        .map(|(op, value)| (op, value + HEADER_BYTES + COMMIT_BYTES))
}

/// The writes of `batch` in the log's record format (header, commit number
/// 0, operations): how cluster mode carries a write through JetStream.
pub(crate) fn encode_ops(batch: &Batch) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(&mut buf, 0, [batch]);
    buf
}

/// The operations of a record [`encode_ops`] wrote, checked whole.
pub(crate) fn decode_ops(record: &[u8]) -> Result<Batch> {
    let (body, end) =
        next_record(record, 0).ok_or_else(|| corrupt("record damaged or truncated".into()))?;
    if end != record.len() {
        return Err(corrupt("bytes after the record".into()));
    }
    decode(body).map(|(_, batch)| batch)
}

/// The next record of a segment: its body and the offset after it, or
/// `None` where the segment's records end.
fn next_record(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(at..at.checked_add(HEADER_BYTES)?)?;
    let len = u32::from_le_bytes(header.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header.get(4..)?.try_into().ok()?);
    if len < COMMIT_BYTES {
        return None;
    }
    let start = at + HEADER_BYTES;
    let body = bytes.get(start..start.checked_add(len)?)?;
    (crc32fast::hash(body) == crc).then_some((body, start + len))
}

fn corrupt(detail: String) -> StorageError {
    StorageError::Corrupt {
        keyspace: "log",
        detail,
    }
}

/// Splits a record's body into its commit number and operations, checked
/// whole.
fn decode(body: &[u8]) -> Result<(u64, Batch)> {
    let (commit, ops) = body
        .split_at_checked(COMMIT_BYTES)
        .ok_or_else(|| corrupt("record shorter than its commit number".into()))?;
    let commit = u64::from_le_bytes(commit.try_into().unwrap_or_default());
    let batch = Batch::decode(ops).map_err(|e| corrupt(format!("commit {commit}: {e}")))?;
    Ok((commit, batch))
}

/// What [`replay`] found.
#[derive(Debug)]
pub struct Replayed {
    /// The commit number that follows the last one in the log (the one
    /// after `after` if nothing followed it).
    pub next_commit: u64,
    /// Records replayed.
    pub commits: u64,
}

/// What [`replay`] hands its caller, in log order.
#[derive(Debug)]
pub enum Replay {
    /// A record.
    Record {
        /// The segment holding it (the commit of its first record).
        segment: u64,
        /// The record's offset in the segment's file.
        at: u64,
        /// Its operations.
        batch: Batch,
    },
    /// The end of a segment's records. The segment will not be appended
    /// to again: the log starts a new one when it opens.
    End(Sealed),
}

/// Hands every commit after commit `after` in the log under `dir` to
/// `visit`, oldest first, with the end of each segment. Segments whose
/// records all come before `after` are left alone (they must end at a
/// segment boundary: the commit before a segment's first).
///
/// If a segment does not start where the one before ended (a segment lost
/// or damaged on disk), replay stops there: the commits after a gap cannot
/// be applied without the ones missing. Those segments are renamed with
/// `.damaged` appended, kept for an operator, and reported as an error in
/// the server's log.
pub fn replay(
    dir: &Path,
    after: u64,
    mut visit: impl FnMut(Replay) -> Result<()>,
) -> Result<Replayed> {
    let mut segments = segments(dir)?;
    segments.retain(|(first, _)| *first > after);
    // With nothing replayed before, the log may start anywhere.
    let mut next: Option<u64> = (after > 0).then_some(after + 1);
    let mut commits = 0;
    let mut rest = segments.into_iter();
    while let Some((first, path)) = rest.next() {
        if next.is_some_and(|n| n != first) {
            tracing::error!(
                expected = next,
                found = first,
                segment = %path.display(),
                "commit log has a gap; commits after it are not replayed"
            );
            for p in std::iter::once(path).chain(rest.map(|(_, p)| p)) {
                let mut damaged = p.clone().into_os_string();
                damaged.push(DAMAGED_SUFFIX);
                fs::rename(&p, damaged)?;
            }
            break;
        }
        let bytes = fs::read(&path)?;
        let mut expected = first;
        let mut at = 0;
        while let Some((body, after)) = next_record(&bytes, at) {
            let (commit, batch) = decode(body)?;
            if commit != expected {
                break;
            }
            visit(Replay::Record {
                segment: first,
                at: at as u64,
                batch,
            })?;
            commits += 1;
            expected += 1;
            at = after;
        }
        visit(Replay::End(Sealed {
            path,
            first_commit: first,
            last_commit: expected - 1,
            end: at as u64,
        }))?;
        next = Some(expected);
    }
    Ok(Replayed {
        next_commit: next.unwrap_or(1),
        commits,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Ks;
    use super::super::writer::PUT;
    use super::*;

    fn batch(n: u8) -> Batch {
        let mut b = Batch::new();
        b.put(Ks::Messages, vec![n; 3], vec![n; 100]);
        b.delete(Ks::Idempotency, vec![n]);
        b
    }

    /// Everything after commit `after`: the replay, the batches and the
    /// segments ended.
    fn replay_after(dir: &Path, after: u64) -> (Replayed, Vec<Batch>, Vec<Sealed>) {
        let (mut seen, mut ends) = (Vec::new(), Vec::new());
        let r = replay(dir, after, |event| {
            match event {
                Replay::Record { batch, .. } => seen.push(batch),
                Replay::End(s) => ends.push(s),
            }
            Ok(())
        })
        .expect("replay");
        (r, seen, ends)
    }

    fn replay_all(dir: &Path) -> (Replayed, Vec<Batch>) {
        let (r, seen, _) = replay_after(dir, 0);
        (r, seen)
    }

    #[test]
    fn records_round_trip_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Log::open(dir.path(), 7).expect("open");
        let mut sealed = Vec::new();
        // Each record is about 64 KiB: the 1 MiB first segment fills.
        let big = vec![9u8; 64 << 10];
        for n in 0..40u8 {
            let mut b = batch(n);
            b.put(Ks::Users, vec![n], big.clone());
            let (appended, s) = log.append([&b], true).expect("append");
            assert_eq!(appended.commit, 7 + u64::from(n));
            // The values of the puts are where the log says they are.
            let file = fs::read(dir.path().join(segment_name(appended.segment))).expect("read");
            let at = appended.at as usize;
            let puts: Vec<(&[u8], usize)> = log
                .last_ops()
                .filter_map(|(op, off)| match op {
                    Op::Put(_, _, v) => Some((v, off)),
                    Op::Delete(..) => None,
                })
                .collect();
            let [(v1, first), (v2, second)] = puts[..] else {
                panic!("two puts: {puts:?}");
            };
            let value = |off: usize, len| &file[at + off..at + off + len];
            assert_eq!(value(first, 100), &[n; 100][..]);
            assert_eq!(value(second, big.len()), &big[..]);
            assert_eq!((v1, v2), (&[n; 100][..], &big[..]));
            sealed.extend(s);
        }
        assert!(
            !sealed.is_empty(),
            "40 records of 64 KiB fill a 1 MiB segment"
        );
        let last = log.close();
        assert_eq!(last.last_commit, 46);
        let (r, seen, ends) = replay_after(dir.path(), 0);
        assert_eq!(r.next_commit, 47);
        assert_eq!(r.commits, 40);
        assert_eq!(ends.len(), sealed.len() + 1);
        assert_eq!(
            ends.iter()
                .map(|s| (s.first_commit, s.last_commit, s.end))
                .collect::<Vec<_>>(),
            sealed
                .iter()
                .chain([&last])
                .map(|s| (s.first_commit, s.last_commit, s.end))
                .collect::<Vec<_>>(),
        );
        assert_eq!(seen.len(), 40);
        // From the end of the first segment on, only the later ones.
        let (r, later, _) = replay_after(dir.path(), sealed[0].last_commit);
        assert_eq!(r.next_commit, 47);
        assert_eq!(later.len() as u64, 46 - sealed[0].last_commit);
        for (n, b) in seen.iter().enumerate() {
            assert_eq!(b.len(), 3);
            match b.ops().next() {
                Some(Op::Put(Ks::Messages, k, v)) => {
                    assert_eq!(k, &[n as u8; 3][..]);
                    assert_eq!(v.len(), 100);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let names: Vec<String> = fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| n.ends_with(SEGMENT_SUFFIX)),
            "no spare is left behind: {names:?}"
        );
    }

    #[test]
    fn small_records_across_page_boundaries_read_back_where_they_were_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Log::open(dir.path(), 1).expect("open");
        let mut places = Vec::new();
        for n in 0..300u32 {
            let mut b = Batch::new();
            // Records of 40 to 800 bytes: some end inside a page, some
            // span several.
            b.put(
                Ks::Users,
                n.to_le_bytes(),
                vec![n as u8; 20 + (n as usize * 37) % 780],
            );
            let (appended, _) = log.append([&b], n % 2 == 0).expect("append");
            let (_, value_at) = log.last_ops().next().expect("one op");
            places.push((appended, value_at, b));
        }
        let last = log.close();
        let file = fs::read(&last.path).expect("read");
        for (appended, value_at, b) in &places {
            let Some(Op::Put(_, _, value)) = b.ops().next() else {
                panic!("a put");
            };
            let at = appended.at as usize + value_at;
            assert_eq!(
                &file[at..at + value.len()],
                value,
                "commit {}",
                appended.commit
            );
        }
        let (r, seen, _) = replay_after(dir.path(), 0);
        assert_eq!(r.commits, 300);
        assert_eq!(
            seen,
            places.into_iter().map(|(_, _, b)| b).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_spare_is_zeros_of_its_capacity_on_disk_and_in_memory_file_systems() {
        let disk = tempfile::tempdir().expect("tempdir");
        let memory = tempfile::tempdir_in("/dev/shm").ok();
        for dir in std::iter::once(disk.path()).chain(memory.as_ref().map(|d| d.path())) {
            let path = dir.join("spare");
            let spare = zero_filled(&path, 2 << 20).expect("zero-filled");
            assert_eq!(spare.capacity, 2 << 20);
            let bytes = fs::read(&path).expect("read");
            assert_eq!(bytes.len(), 2 << 20, "{}", dir.display());
            assert!(bytes.iter().all(|b| *b == 0), "{}", dir.display());
        }
    }

    #[test]
    fn a_torn_or_stale_tail_ends_the_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Log::open(dir.path(), 1).expect("open");
        for n in 0..3 {
            log.append([&batch(n)], true).expect("append");
        }
        let seg = log.close().path;
        let bytes = fs::read(&seg).expect("read");
        let (_, second) = next_record(&bytes, 0).expect("first record");
        let (_, third) = next_record(&bytes, second).expect("second record");

        // A flipped bit in the third record: two commits replay.
        let mut torn = bytes.clone();
        torn[third + HEADER_BYTES + 20] ^= 1;
        fs::write(&seg, &torn).expect("write");
        let (r, seen) = replay_all(dir.path());
        assert_eq!((r.commits, seen.len(), r.next_commit), (2, 2, 3));

        // A valid record from an older use of the file (commit 1 again)
        // after commit 2: it is not the commit expected, replay stops.
        let mut stale = bytes.clone();
        let first_record = bytes[..second].to_vec();
        stale.splice(third..third + first_record.len(), first_record);
        fs::write(&seg, &stale).expect("write");
        let (r, _) = replay_all(dir.path());
        assert_eq!(r.commits, 2);
    }

    #[test]
    fn a_gap_between_segments_stops_replay_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Log::open(dir.path(), 1).expect("open");
        log.append([&batch(1)], true).expect("append");
        let first = log.close().path;
        let mut log = Log::open(dir.path(), 5).expect("open");
        log.append([&batch(5)], true).expect("append");
        let later = log.close().path;
        let (r, seen, ends) = replay_after(dir.path(), 0);
        assert_eq!((r.commits, seen.len(), r.next_commit), (1, 1, 2));
        assert_eq!(
            ends.iter().map(|s| &s.path).collect::<Vec<_>>(),
            vec![&first]
        );
        assert!(!later.exists());
        let mut damaged = later.into_os_string();
        damaged.push(DAMAGED_SUFFIX);
        assert!(PathBuf::from(damaged).exists());
    }

    #[test]
    fn after_an_indexed_segment_the_next_must_follow_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Log::open(dir.path(), 1).expect("open");
        log.append([&batch(1)], true).expect("append");
        log.close();
        // Commits 1..=3 were indexed, but the segment of 4 is missing.
        let mut log = Log::open(dir.path(), 5).expect("open");
        log.append([&batch(5)], true).expect("append");
        let later = log.close().path;
        let (r, seen, _) = replay_after(dir.path(), 3);
        assert_eq!((r.commits, seen.len(), r.next_commit), (0, 0, 4));
        assert!(!later.exists(), "kept aside as damaged");
    }

    #[test]
    fn every_keyspace_has_its_own_code() {
        for ks in Ks::ALL {
            assert_eq!(Ks::from_code(ks.code()), Some(ks));
        }
        assert_eq!(Ks::from_code(Ks::ALL.len() as u8), None);
    }

    #[test]
    fn a_corrupt_operation_in_a_valid_record_is_an_error() {
        let mut body = 3u64.to_le_bytes().to_vec();
        body.extend_from_slice(&[PUT, 200, 0, 0, 0, 0]);
        assert!(decode(&body).is_err(), "unknown keyspace");
        let mut body = 3u64.to_le_bytes().to_vec();
        body.extend_from_slice(&[PUT, Ks::Users.code(), 9, 0, 0, 0, 1]);
        assert!(decode(&body).is_err(), "key runs past the record");
        let mut body = 3u64.to_le_bytes().to_vec();
        body.extend_from_slice(&[7, Ks::Users.code(), 0, 0, 0, 0]);
        assert!(decode(&body).is_err(), "unknown operation");
    }
}
