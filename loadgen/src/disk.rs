//! `loadgen disk`: how long the disk under a directory takes to make a
//! small write durable, and what that costs in CPU: the floor under every
//! chatd acknowledgement with `durability = sync`.
//!
//! Each phase writes `block` bytes and calls `fdatasync`, over and over, as
//! chatd's storage writer does once per group commit (into its commit log;
//! fjall's journal took the syncs before):
//!
//! - **journal**: into a file sized with `set_len` to 64 MiB and never
//!   written before, the way fjall creates its journal files (the size is
//!   fixed, but every write still allocates blocks that the sync persists);
//! - **journal, beside bulk writes**: the same while another thread writes
//!   `bulk` bytes to a second file and `fsync`s it once per second, the way
//!   the store's workers write a flushed memtable or a compaction's output;
//! - **append**: appending to a file that grows with every write;
//! - **written**: overwriting a file written to its full size beforehand,
//!   where the sync persists only the data: what chatd's commit log pays,
//!   whose segments are zero-filled before use.

use std::fs::File;
use std::io::{Seek as _, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::procstat;
use crate::stats::{Latency, LatencySummary};

/// Bytes per bulk write call (the size of one write of a table file).
const BULK_CHUNK: usize = 64 << 10;

/// Size of the journal-like and written files (fjall's journal files are
/// created at 64 MiB).
pub const FILE_BYTES: u64 = 64 << 20;

/// One phase: latency of each sync and CPU per write and sync.
#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub latency: Option<LatencySummary>,
    /// This process's user + system CPU over the phase per write and sync
    /// (includes the bulk writer's in the phase beside it).
    pub cpu_per_sync_us: Option<f64>,
}

/// What one run measured.
#[derive(Debug, Serialize)]
pub struct DiskReport {
    pub block_bytes: usize,
    pub bulk_bytes: usize,
    pub seconds_per_phase: f64,
    pub phases: Vec<Phase>,
}

/// How the file a phase writes to is laid out.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// `set_len(FILE_BYTES)` on a new file; a fresh one when it is full.
    Journal,
    /// A file that grows with each write.
    Append,
    /// `FILE_BYTES` written and synced first; overwritten from the start
    /// again when full.
    Written,
}

/// Runs every phase in a temporary directory under `dir`.
pub fn probe(
    dir: &Path,
    duration: Duration,
    block: usize,
    bulk: usize,
) -> anyhow::Result<DiskReport> {
    let scratch = tempfile::Builder::new()
        .prefix("loadgen-disk-")
        .tempdir_in(dir)
        .with_context(|| format!("temporary directory in {}", dir.display()))?;
    let dir = scratch.path();
    let mut phases = vec![phase("journal", dir, Layout::Journal, duration, block)?];

    let stop = Arc::new(AtomicBool::new(false));
    let bulk_path = dir.join("bulk");
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || bulk_writes(&bulk_path, bulk, &stop))
    };
    let beside = phase(
        "journal, beside bulk writes",
        dir,
        Layout::Journal,
        duration,
        block,
    );
    stop.store(true, Ordering::Relaxed);
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("bulk writer panicked"))?;
    phases.push(beside?);
    written.context("bulk writes")?;

    phases.push(phase("append", dir, Layout::Append, duration, block)?);
    phases.push(phase("written", dir, Layout::Written, duration, block)?);
    Ok(DiskReport {
        block_bytes: block,
        bulk_bytes: bulk,
        seconds_per_phase: duration.as_secs_f64(),
        phases,
    })
}

/// Writes `block` bytes and `fdatasync`s for `duration` in files laid out
/// as `layout`, and times each sync.
fn phase(
    name: &'static str,
    dir: &Path,
    layout: Layout,
    duration: Duration,
    block: usize,
) -> anyhow::Result<Phase> {
    let mut files = 0_u32;
    let mut next_path = || {
        files += 1;
        dir.join(format!("{}-{files}", name.replace([' ', ','], "")))
    };
    let mut file = open(&next_path(), layout)?;
    let data = vec![0x5a_u8; block];
    let mut latency = Latency::default();
    let mut offset = 0_u64;
    let cpu_before = procstat::cpu_seconds(std::process::id());
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if offset + block as u64 > FILE_BYTES {
            match layout {
                Layout::Journal => file = open(&next_path(), layout)?,
                Layout::Written => file.rewind().context("rewind")?,
                Layout::Append => {}
            }
            offset = 0;
        }
        file.write_all(&data).context("write")?;
        offset += block as u64;
        let started = Instant::now();
        file.sync_data().context("fdatasync")?;
        latency.record_ns(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let cpu_after = procstat::cpu_seconds(std::process::id());
    let summary = latency.summary();
    let count = summary.as_ref().map_or(0, |s| s.count);
    let cpu_per_sync_us = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if count > 0 => Some((after - before) * 1e6 / count as f64),
        _ => None,
    };
    Ok(Phase {
        name,
        latency: summary,
        cpu_per_sync_us,
    })
}

/// A new file at `path` laid out as `layout`, positioned at its start.
fn open(path: &Path, layout: Layout) -> anyhow::Result<File> {
    let mut file = File::create_new(path).with_context(|| format!("create {}", path.display()))?;
    match layout {
        Layout::Append => {}
        Layout::Journal => {
            file.set_len(FILE_BYTES).context("set_len")?;
            file.sync_all().context("fsync")?;
        }
        Layout::Written => {
            fill(&mut file, FILE_BYTES, 0, &AtomicBool::new(false))?;
            file.sync_all().context("fsync")?;
            file.rewind().context("rewind")?;
        }
    }
    Ok(file)
}

/// Writes `len` bytes of `byte` to `file` in [`BULK_CHUNK`] writes, or
/// fewer once `stop` is set.
fn fill(file: &mut File, len: u64, byte: u8, stop: &AtomicBool) -> anyhow::Result<()> {
    let chunk = vec![byte; BULK_CHUNK];
    let mut left = len;
    while left > 0 && !stop.load(Ordering::Relaxed) {
        let n = left.min(BULK_CHUNK as u64) as usize;
        file.write_all(&chunk[..n]).context("write")?;
        left -= n as u64;
    }
    Ok(())
}

/// Writes `bulk` bytes and `fsync`s them once per second until `stop`.
fn bulk_writes(path: &Path, bulk: usize, stop: &AtomicBool) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut file = File::create(path).with_context(|| format!("create {}", path.display()))?;
        fill(&mut file, bulk as u64, 0xa5, stop)?;
        file.sync_all().context("bulk fsync")?;
        drop(file);
        let rest = Duration::from_secs(1).saturating_sub(started.elapsed());
        let until = Instant::now() + rest;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// Prints the report for a person.
pub fn print(report: &DiskReport) {
    println!(
        "disk: {} B writes, each followed by fdatasync, {:.0} s per phase; bulk writer: {} MiB and fsync per second",
        report.block_bytes,
        report.seconds_per_phase,
        report.bulk_bytes >> 20
    );
    for p in &report.phases {
        match (&p.latency, p.cpu_per_sync_us) {
            (Some(s), cpu) => println!(
                "  {:<28} n={:<7} p50 {:>7.1} us  p99 {:>8.1}  p99.9 {:>8.1}  max {:>8.1}  CPU per sync {}",
                p.name,
                s.count,
                s.p50_us,
                s.p99_us,
                s.p999_us,
                s.max_us,
                cpu.map_or("-".to_owned(), |c| format!("{c:.0} us")),
            ),
            (None, _) => println!("  {:<28} no samples", p.name),
        }
    }
}
