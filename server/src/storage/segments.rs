//! Messages live in the commit log's segments, where the storage writer
//! wrote them once; fjall holds only an index to them.
//!
//! A message put ([`Ks::Messages`]) in a commit is not copied into fjall:
//! the writer notes where its value sits in the log ([`Loc`]) in an index
//! of the segment it went to ([`SegmentIndex`]), before it acknowledges
//! the commit. Idempotency keys ([`Ks::Idempotency`]) go to the same
//! index. When a segment is sealed, the apply thread writes its index into
//! fjall in one sorted run per keyspace (fjall's ingestion: no memtable,
//! no journal), then records the segment's last commit as indexed and
//! persists ([`super::Store::checkpoint`]). Until then readers find the
//! entries in [`Recent`], which holds the indexes of the current segment
//! and of the sealed ones not yet ingested.
//!
//! In fjall, a conversation's new messages of one segment are one entry
//! ([`Run`], in `message_runs`), so a busy conversation costs fjall a few
//! entries per segment rather than one per message. Seqs only grow, so
//! the runs of a conversation cover disjoint seq ranges. A message is
//! written to disk once (in the log) and its location once (in a run, then
//! in compactions of small tables); fjall never journals, flushes or
//! compacts message bodies.
//!
//! Messages are never removed from a segment: deleting a message for
//! everyone stores a redacted version under the same key, which the
//! ingestion finds at or below the seqs fjall held before and indexes on
//! its own in `message_index`; readers prefer that entry to the run. The
//! original bytes stay in their segment.

use std::collections::BTreeMap;

use hashbrown::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use prost::Message as _;

use super::writer::{Batch, Op};
use super::{Ks, Result, StorageError, keys};
use crate::records::IdempotencyRecord;

/// Where a message's encoded bytes are in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// The segment (the commit of its first record).
    pub segment: u64,
    /// Offset of the bytes in the segment's file.
    pub offset: u64,
    /// Their length.
    pub len: u32,
}

impl Loc {
    /// Bytes of an encoded location: segment, offset, length, all
    /// little-endian.
    pub const BYTES: usize = 20;

    /// The location as stored in the `message_index` keyspace.
    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        b[..8].copy_from_slice(&self.segment.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// A location stored by [`Loc::encode`].
    pub fn decode(b: &[u8]) -> Option<Self> {
        Some(Self {
            segment: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            offset: u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
            len: u32::from_le_bytes(b.get(16..20)?.try_into().ok()?),
        })
    }
}

/// A conversation's new messages in one segment: the value of a
/// `message_runs` entry (key conversation ‖ !highest seq). The segment
/// (8 bytes), then per message, in ascending seq: seq (8), offset (8),
/// length (4), all little-endian.
///
/// One entry per conversation and segment instead of one per message
/// keeps fjall's work at ingestion and in compactions to a few entries
/// for a busy conversation, whatever its rate.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    segment: u64,
    entries: &'a [u8],
}

impl<'a> Run<'a> {
    const HEADER: usize = 8;
    const ENTRY: usize = 20;

    /// Encodes the run of `segment` holding `entries` (seq, location), in
    /// ascending seq.
    pub fn encode(segment: u64, entries: &[(u64, Loc)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER + entries.len() * Self::ENTRY);
        out.extend_from_slice(&segment.to_le_bytes());
        for (seq, loc) in entries {
            debug_assert_eq!(loc.segment, segment);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&loc.offset.to_le_bytes());
            out.extend_from_slice(&loc.len.to_le_bytes());
        }
        out
    }

    /// A run stored by [`Run::encode`].
    pub fn decode(b: &'a [u8]) -> Option<Self> {
        let segment = u64::from_le_bytes(b.get(..Self::HEADER)?.try_into().ok()?);
        let entries = b.get(Self::HEADER..)?;
        if entries.is_empty() || entries.len() % Self::ENTRY != 0 {
            return None;
        }
        Some(Self { segment, entries })
    }

    /// The segment holding the run's messages.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Messages in the run (at least one).
    pub fn len(&self) -> usize {
        self.entries.len() / Self::ENTRY
    }

    /// Never: a run holds at least one message.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `i`th message, as (seq, location).
    fn get(&self, i: usize) -> (u64, Loc) {
        // `decode` checked that the entries are whole; `i` is below `len`.
        let e = self
            .entries
            .chunks_exact(Self::ENTRY)
            .nth(i)
            .unwrap_or(&[0; Self::ENTRY]);
        let u64_at = |at: usize| {
            e.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        let len = e
            .get(16..20)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes);
        let loc = Loc {
            segment: self.segment,
            offset: u64_at(8),
            len,
        };
        (u64_at(0), loc)
    }

    /// Lowest seq in the run.
    pub fn min_seq(&self) -> u64 {
        self.get(0).0
    }

    /// Where message `seq` is, if the run holds it.
    pub fn find(&self, seq: u64) -> Option<Loc> {
        // Seqs are dense, so the position is usually known; a binary search
        // covers any run that is not.
        let first = self.min_seq();
        if let Some(i) = seq.checked_sub(first).and_then(|d| usize::try_from(d).ok()) {
            if i < self.len() && self.get(i).0 == seq {
                return Some(self.get(i).1);
            }
        }
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (s, loc) = self.get(mid);
            match s.cmp(&seq) {
                std::cmp::Ordering::Equal => return Some(loc),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    /// The messages with seqs in `lo..=hi`, ascending.
    pub fn between(&self, lo: u64, hi: u64) -> impl DoubleEndedIterator<Item = (u64, Loc)> + '_ {
        let start = self.lower_bound(lo);
        let end = match hi.checked_add(1) {
            Some(after) => self.lower_bound(after),
            None => self.len(),
        };
        (start..end.max(start)).map(|i| self.get(i))
    }

    /// Position of the first message with seq ≥ `seq`.
    fn lower_bound(&self, seq: u64) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.get(mid).0 < seq {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// The index entries of one segment.
#[derive(Debug, Default)]
pub struct SegmentIndex {
    /// `messages` key (conversation ‖ !seq) → location, in key order.
    pub messages: BTreeMap<[u8; 16], Loc>,
    /// `idempotency` key, indexed form ([`keys::idempotency_digest`]) →
    /// the original ack.
    pub idempotency: HashMap<[u8; 32], IdempotencyRecord>,
}

impl SegmentIndex {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.messages.len() + self.idempotency.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sorts one commit's operations: message and idempotency puts go to
/// `index` (the values of messages stay where the record put them, in
/// `segment` at `at` plus the offset each operation comes with, as
/// [`super::log::Log::last_ops`] gives them), everything else into the
/// returned batch, for fjall.
pub fn route<'a>(
    ops: impl IntoIterator<Item = (Op<'a>, usize)>,
    segment: u64,
    at: u64,
    index: &mut SegmentIndex,
) -> Batch {
    let mut rest = Batch::new();
    for (op, value_at) in ops {
        match op {
            Op::Put(Ks::Messages, key, value) => {
                if let Ok(key) = <[u8; 16]>::try_from(key) {
                    let loc = Loc {
                        segment,
                        offset: at + value_at as u64,
                        len: value.len() as u32,
                    };
                    index.messages.insert(key, loc);
                }
            }
            Op::Put(Ks::Idempotency, key, value) => {
                // The log keeps the full key; the index its digest form. A
                // put that is not a well-formed key and record (none the
                // server writes) goes to fjall as it is.
                let record = IdempotencyRecord::decode(value);
                match (keys::idempotency_indexed(key), record) {
                    (Some(indexed), Ok(record)) => {
                        index.idempotency.insert(indexed, record);
                    }
                    _ => rest.put(Ks::Idempotency, key, value),
                }
            }
            Op::Put(ks, key, value) => rest.put(ks, key, value),
            Op::Delete(ks, key) => rest.delete(ks, key),
        }
    }
    rest
}

/// Index entries fjall does not hold yet: those of the current segment
/// and of sealed segments waiting for their ingestion, newest first.
#[derive(Debug)]
pub struct Recent {
    inner: RwLock<RecentInner>,
}

#[derive(Debug, Default)]
struct RecentInner {
    /// The segment being written and its entries so far.
    current: (u64, SegmentIndex),
    /// Sealed segments, oldest first.
    sealed: Vec<(u64, Arc<SegmentIndex>)>,
}

impl RecentInner {
    /// The indexes, newest first.
    fn newest_first(&self) -> impl Iterator<Item = &SegmentIndex> {
        std::iter::once(&self.current.1).chain(self.sealed.iter().rev().map(|(_, i)| &**i))
    }
}

impl Recent {
    /// Nothing recent; `segment` is the one being written.
    pub fn new(segment: u64) -> Self {
        Self {
            inner: RwLock::new(RecentInner {
                current: (segment, SegmentIndex::default()),
                sealed: Vec::new(),
            }),
        }
    }

    /// Adds entries of the current segment, `segment`.
    pub fn add(&self, segment: u64, f: impl FnOnce(&mut SegmentIndex) -> Batch) -> Batch {
        let mut inner = self.inner.write();
        debug_assert_eq!(inner.current.0, segment, "entries of a sealed segment");
        f(&mut inner.current.1)
    }

    /// Seals the current segment: its entries stay readable here until
    /// [`Recent::retire`]; `next` becomes the current segment. Returns the
    /// sealed entries, for their ingestion.
    pub fn seal(&self, next: u64) -> Arc<SegmentIndex> {
        let mut inner = self.inner.write();
        // The next segment is likely to hold as many idempotency keys: room
        // for them up front instead of rehashing the table as it grows.
        let keys = inner.current.1.idempotency.len();
        let fresh = SegmentIndex {
            messages: BTreeMap::new(),
            idempotency: HashMap::with_capacity(keys),
        };
        let (segment, index) = std::mem::replace(&mut inner.current, (next, fresh));
        let index = Arc::new(index);
        inner.sealed.push((segment, index.clone()));
        index
    }

    /// Forgets a sealed segment's entries once fjall holds them.
    pub fn retire(&self, segment: u64) {
        self.inner.write().sealed.retain(|(s, _)| *s != segment);
    }

    /// Sealed segments waiting for their ingestion.
    pub fn sealed(&self) -> usize {
        self.inner.read().sealed.len()
    }

    /// The newest location of a message, if a recent segment has it.
    pub fn message(&self, key: &[u8; 16]) -> Option<Loc> {
        let inner = self.inner.read();
        inner
            .newest_first()
            .find_map(|i| i.messages.get(key).copied())
    }

    /// The record of an idempotency key (indexed form), if a recent
    /// segment has it.
    pub fn idempotency(&self, key: &[u8; 32]) -> Option<IdempotencyRecord> {
        let inner = self.inner.read();
        inner
            .newest_first()
            .find_map(|i| i.idempotency.get(key).cloned())
    }

    /// Up to `limit` message locations with keys in `from..=to`, the
    /// smallest keys first (or the largest, if `backwards`), into `out`
    /// unless `out` has the key already. Newer segments win.
    pub fn messages(
        &self,
        from: [u8; 16],
        to: [u8; 16],
        limit: usize,
        backwards: bool,
        out: &mut BTreeMap<[u8; 16], Loc>,
    ) {
        let inner = self.inner.read();
        for index in inner.newest_first() {
            let range = index.messages.range(from..=to);
            let found: Box<dyn Iterator<Item = (&[u8; 16], &Loc)>> = if backwards {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
            for (k, loc) in found.take(limit) {
                out.entry(*k).or_insert(*loc);
            }
        }
    }

    /// The newest seq of `conversation` in recent segments.
    pub fn last_seq(&self, conversation: u64) -> Option<u64> {
        let inner = self.inner.read();
        let (from, to) = (
            keys::message(conversation, u64::MAX),
            keys::message(conversation, 0),
        );
        inner
            .newest_first()
            .filter_map(|i| i.messages.range(from..=to).next())
            .filter_map(|(k, _)| keys::message_seq(k))
            .max()
    }
}

/// Open segment files for reading, by segment.
#[derive(Debug)]
pub struct Files {
    dir: PathBuf,
    open: Mutex<HashMap<u64, Arc<File>>>,
}

/// Segment files kept open for reads, at most. Past it one is closed
/// (reopened when needed).
pub const OPEN_SEGMENTS: usize = 64;

impl Files {
    /// Segments in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, segment: u64) -> Result<Arc<File>> {
        if let Some(f) = self.open.lock().get(&segment) {
            return Ok(f.clone());
        }
        let path = self.dir.join(super::log::segment_name(segment));
        let file = Arc::new(File::open(&path).map_err(|e| StorageError::Corrupt {
            keyspace: "log",
            detail: format!("segment {} of an indexed message: {e}", path.display()),
        })?);
        let mut open = self.open.lock();
        if open.len() >= OPEN_SEGMENTS {
            if let Some(k) = open.keys().next().copied() {
                open.remove(&k);
            }
        }
        open.insert(segment, file.clone());
        Ok(file)
    }

    /// The bytes at `loc`.
    pub fn read(&self, loc: Loc) -> Result<Vec<u8>> {
        let file = self.file(loc.segment)?;
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_round_trip() {
        let loc = Loc {
            segment: 7,
            offset: 1 << 33,
            len: 300,
        };
        assert_eq!(Loc::decode(&loc.encode()), Some(loc));
        assert_eq!(Loc::decode(&[0; 19]), None);
    }

    #[test]
    fn runs_find_their_messages_dense_or_not() {
        let at = |offset| Loc {
            segment: 9,
            offset,
            len: 3,
        };
        let dense: Vec<(u64, Loc)> = (5..=9).map(|s| (s, at(s * 10))).collect();
        let bytes = Run::encode(9, &dense);
        let run = Run::decode(&bytes).expect("decodes");
        assert_eq!((run.segment(), run.len(), run.min_seq()), (9, 5, 5));
        assert_eq!(run.find(7), Some(at(70)));
        assert_eq!(run.find(4), None);
        assert_eq!(run.find(10), None);
        let seqs =
            |it: &mut dyn Iterator<Item = (u64, Loc)>| it.map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(seqs(&mut run.between(6, 8)), vec![6, 7, 8]);
        assert_eq!(
            seqs(&mut run.between(0, u64::MAX).rev()),
            vec![9, 8, 7, 6, 5]
        );
        assert_eq!(seqs(&mut run.between(10, 20)), Vec::<u64>::new());
        let sparse = vec![(2, at(1)), (4, at(2)), (9, at(3))];
        let bytes = Run::encode(9, &sparse);
        let run = Run::decode(&bytes).expect("decodes");
        assert_eq!(run.find(4), Some(at(2)));
        assert_eq!(run.find(9), Some(at(3)));
        assert_eq!(run.find(3), None);
        assert_eq!(seqs(&mut run.between(3, 9)), vec![4, 9]);
        assert!(Run::decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(Run::decode(&9u64.to_le_bytes()).is_none());
    }

    #[test]
    fn messages_and_idempotency_keys_go_to_the_index() {
        let mut b = Batch::new();
        b.put(Ks::Users, vec![1], vec![2]);
        b.put(Ks::Messages, keys::message(5, 1), vec![9; 10]);
        let idem = IdempotencyRecord {
            seq: 1,
            message_id: 2,
            sent_at_ms: 3,
        };
        b.put(
            Ks::Idempotency,
            keys::idempotency(5, 6, "c-1"),
            idem.encode_to_vec(),
        );
        // Not a key the server writes: fjall gets it as it is.
        b.put(Ks::Idempotency, vec![3], vec![4]);
        b.delete(Ks::Users, vec![1]);
        let mut index = SegmentIndex::default();
        // Each operation with the offset of its value in a record.
        let ops = b.ops().zip([20, 40, 60, 80, 100]);
        let rest = route(ops, 3, 1000, &mut index);
        assert_eq!(rest.len(), 3);
        assert_eq!(
            index.messages.get(&keys::message(5, 1)),
            Some(&Loc {
                segment: 3,
                offset: 1040,
                len: 10
            })
        );
        assert_eq!(
            index
                .idempotency
                .get(&keys::idempotency_digest(5, 6, b"c-1")),
            Some(&idem)
        );
        assert_eq!(index.idempotency.len(), 1);
    }

    #[test]
    fn newer_segments_win_and_sealed_ones_stay_readable_until_retired() {
        let recent = Recent::new(1);
        let key = keys::message(1, 1);
        let at = |segment, offset| Loc {
            segment,
            offset,
            len: 1,
        };
        recent.add(1, |i| {
            i.messages.insert(key, at(1, 10));
            Batch::new()
        });
        let sealed = recent.seal(2);
        assert_eq!(sealed.messages.len(), 1);
        assert_eq!(recent.message(&key), Some(at(1, 10)));
        recent.add(2, |i| {
            i.messages.insert(key, at(2, 20));
            Batch::new()
        });
        assert_eq!(recent.message(&key), Some(at(2, 20)));
        assert_eq!(recent.last_seq(1), Some(1));
        recent.retire(1);
        assert_eq!(recent.sealed(), 0);
        assert_eq!(recent.message(&key), Some(at(2, 20)));
    }
}
