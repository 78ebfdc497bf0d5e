//! CPU priority of the store's background threads.
//!
//! A message's latency is decided by how soon the shard and the storage
//! writer run when they wake. The threads that only catch up on what the
//! commit log has already made durable run below them, so that on a busy
//! core a waking shard or writer goes first instead of waiting out a
//! compaction's time slice: the apply thread that indexes committed
//! batches into fjall and the thread that prepares log segments [`NICE`]
//! steps below, fjall's flush and compaction workers [`WORKER_NICE`]
//! steps below. They still get the CPU the latency-bound threads leave,
//! and a share of it under contention.
//!
//! Lowering a thread's own priority needs no privilege. Linux keeps the
//! nice value per thread, and a thread starts with its creator's: fjall's
//! workers, started inside `Database::open`, get theirs by opening the
//! database on a lowered thread ([`run_lowered`]). Where the system
//! refuses, the threads keep the default priority.

/// Nice steps below the default for background threads: a thread of
/// default priority outweighs one of them about 2.4 to 1 (scheduler
/// weights 1024 and 423). In paired runs (benches/changes.md) 4 lowered
/// p99 at 20,000 msg/s and at full load; 10 starved compaction at full
/// load, and p99 there rose by half.
pub const NICE: i32 = 4;

/// Nice steps below the default for fjall's workers (weight 110 against
/// 1024). Only the apply thread waits for them, when their memtables fill
/// up; at full load in paired runs (benches/changes.md) they at 10 gave
/// 7–9 % more throughput than at 4, for less CPU per delivery.
pub const WORKER_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`NICE`] (at most to 19).
pub fn lower() {
    lower_by(NICE);
}

/// Lowers the calling thread's priority by `steps` (at most to 19).
fn lower_by(steps: i32) {
    use rustix::process::{getpriority_process, setpriority_process};
    let lowered =
        getpriority_process(None).and_then(|now| setpriority_process(None, (now + steps).min(19)));
    if let Err(e) = lowered {
        tracing::debug!(cause = %e, "a background thread keeps the default priority");
    }
}

/// Runs `f` on a new thread `steps` nice steps lower and returns its
/// result: threads that `f` starts inherit the priority. Blocks until `f`
/// returns; a panic in `f` is resumed here.
pub fn run_lowered<T: Send>(steps: i32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                lower_by(steps);
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice() -> i32 {
        rustix::process::getpriority_process(None).expect("getpriority")
    }

    #[test]
    fn threads_started_by_a_lowered_thread_inherit_its_priority() {
        let here = nice();
        let (outer, inner) = run_lowered(WORKER_NICE, || {
            let inner = std::thread::spawn(nice).join().expect("join");
            (nice(), inner)
        });
        assert_eq!(outer, (here + WORKER_NICE).min(19));
        assert_eq!(inner, outer);
        assert_eq!(nice(), here, "the caller's priority is unchanged");
    }
}
