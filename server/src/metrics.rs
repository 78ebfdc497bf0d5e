//! Prometheus metrics. The recorder is process-wide (installed by the first
//! server started in the process) and rendered by `GET /metrics`.
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `chatd_connections_accepted_total{transport}` | counter | sessions started, by `tcp`, `tls`, `quic`, `ws`, `wss` |
//! | `chatd_connections_refused_total` | counter | refused at `max_connections_per_shard` |
//! | `chatd_sessions{shard}` | gauge | connected sessions |
//! | `chatd_messages_in_total` | counter | SendMessage requests received |
//! | `chatd_messages_stored_total` | counter | messages and system events committed |
//! | `chatd_deliveries_total` | counter | frames queued to sessions by fan-out |
//! | `chatd_fanout_shards_skipped_total` | counter | shards a fan-out skipped: none of its users has a session there |
//! | `chatd_write_ack_seconds` | histogram | owner admission to durable ack |
//! | `chatd_storage_commit_seconds` | histogram | one group commit: commit log append, fdatasync included |
//! | `chatd_storage_batch_jobs` | histogram | jobs per group commit |
//! | `chatd_storage_batch_ops` | histogram | records (puts and deletes) written per group commit |
//! | `chatd_storage_queue_depth` | gauge | jobs waiting for the writer |
//! | `chatd_storage_apply_seconds` | histogram | one commit written into fjall by the apply thread |
//! | `chatd_storage_unapplied_commits` | gauge | commits acknowledged but not yet in fjall |
//! | `chatd_storage_apply_wait_seconds` | histogram | writer waits for the apply thread (over 32 MiB unapplied) |
//! | `chatd_storage_read_wait_seconds` | histogram | reads waiting for fjall to hold what was acknowledged before them |
//! | `chatd_storage_checkpoint_seconds` | histogram | a sealed log segment's index ingested into fjall, persisted and marked indexed |
//! | `chatd_log_segments_total` | counter | commit log segments started |
//! | `chatd_storage_stalls_total` | counter | times the apply thread waited for memtables to be flushed |
//! | `chatd_storage_stall_seconds` | histogram | length of those waits |
//! | `chatd_store_write_buffer_bytes` | gauge | bytes in the store's memtables (writes wait above 128 MiB) |
//! | `chatd_store_flushes_pending` | gauge | sealed memtables waiting for their flush |
//! | `chatd_store_journal_files` | gauge | journal files kept until their memtables are flushed |
//! | `chatd_mesh_queue_depth{shard}` | gauge | messages waiting in rings towards a shard |
//! | `chatd_ephemeral_shed_total` | counter | typing/presence frames dropped for busy sessions |
//! | `chatd_slow_consumers_total` | counter | sessions closed with SLOW_CONSUMER |
//! | `chatd_syncs_total` | counter | Sync requests |
//! | `chatd_resumes_total` | counter | successful Resume |
//! | `chatd_datagrams_sent_total` | counter | typing/presence frames sent as QUIC datagrams |
//! | `chatd_datagrams_received_total` | counter | Typing frames received as QUIC datagrams |
//! | `chatd_datagrams_dropped_total` | counter | QUIC datagrams from clients dropped (not a Typing frame) |
//! | `chatd_push_sent_total` | counter | notifications the push gateway accepted |
//! | `chatd_push_failed_total` | counter | notifications given up after retries or refused by the gateway |
//! | `chatd_push_dropped_total` | counter | notifications dropped because the push queue was full |
//!
//! Every unlabeled counter above is exported from the start, at zero: an
//! increase from 0 to 1 is then one Prometheus can see (a series that first
//! appears at 1 has no earlier sample to rise from), so a rate or alert over
//! a rare event such as `chatd_push_failed_total` sees its first occurrence.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often recorded histogram samples are folded into their buckets
/// whether or not `/metrics` is scraped.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const OPS_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

/// Installs the recorder if no recorder is installed yet; returns the
/// handle that renders it (`None` if another recorder owns the process).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_jobs".into()), BATCH_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_ops".into()), OPS_BUCKETS)
                });
            let handle = builder.ok()?.install_recorder().ok()?;
            describe();
            register_counters();
            let upkeep = handle.clone();
            // Histogram samples are kept until they are folded into their
            // buckets; a server nobody scrapes would keep every one of them.
            let spawned = std::thread::Builder::new()
                .name("chatd-metrics".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(cause = %e, "no metrics upkeep thread; histograms grow until scraped");
            }
            Some(handle)
        })
        .as_ref()
}

/// Handles of the metrics the send path updates for every message. A
/// `counter!` looks its key up in the registry (hashing the name and
/// labels) on every call; a shard resolves these once, after [`install`],
/// and then each update is one atomic add.
#[derive(Clone)]
pub struct PerMessage {
    /// `chatd_messages_in_total`.
    pub messages_in: metrics::Counter,
    /// `chatd_deliveries_total`.
    pub deliveries: metrics::Counter,
    /// `chatd_fanout_shards_skipped_total`.
    pub fanout_shards_skipped: metrics::Counter,
    /// `chatd_messages_stored_total`.
    pub messages_stored: metrics::Counter,
    /// `chatd_write_ack_seconds`.
    pub write_ack: metrics::Histogram,
}

impl PerMessage {
    /// Resolves the handles in the installed recorder.
    pub fn new() -> Self {
        Self {
            messages_in: metrics::counter!("chatd_messages_in_total"),
            deliveries: metrics::counter!("chatd_deliveries_total"),
            fanout_shards_skipped: metrics::counter!("chatd_fanout_shards_skipped_total"),
            messages_stored: metrics::counter!("chatd_messages_stored_total"),
            write_ack: metrics::histogram!("chatd_write_ack_seconds"),
        }
    }
}

impl Default for PerMessage {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerMessage").finish_non_exhaustive()
    }
}

/// The text exposition of every metric.
pub fn render() -> String {
    match HANDLE.get() {
        Some(Some(h)) => {
            h.run_upkeep();
            h.render()
        }
        _ => String::new(),
    }
}

/// The unlabeled counters, registered by [`install`] so that each is
/// rendered (at zero) before its first increment.
const COUNTERS: &[&str] = &[
    "chatd_connections_refused_total",
    "chatd_messages_in_total",
    "chatd_messages_stored_total",
    "chatd_deliveries_total",
    "chatd_fanout_shards_skipped_total",
    "chatd_log_segments_total",
    "chatd_storage_stalls_total",
    "chatd_ephemeral_shed_total",
    "chatd_slow_consumers_total",
    "chatd_syncs_total",
    "chatd_resumes_total",
    "chatd_datagrams_sent_total",
    "chatd_datagrams_received_total",
    "chatd_datagrams_dropped_total",
    "chatd_push_sent_total",
    "chatd_push_failed_total",
    "chatd_push_dropped_total",
];

fn register_counters() {
    for name in COUNTERS {
        // Registering the handle is enough: the recorder renders every
        // registered counter, incremented or not.
        let _ = metrics::counter!(*name);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("chatd_connections_accepted_total", "connections accepted");
    describe_counter!(
        "chatd_push_sent_total",
        "notifications the push gateway accepted"
    );
    describe_counter!(
        "chatd_push_failed_total",
        "notifications given up after retries or refused by the gateway"
    );
    describe_counter!(
        "chatd_push_dropped_total",
        "notifications dropped because the push queue was full"
    );
    describe_counter!(
        "chatd_connections_refused_total",
        "connections refused at the per-shard limit"
    );
    describe_gauge!("chatd_sessions", "connected sessions per shard");
    describe_counter!("chatd_messages_in_total", "SendMessage requests received");
    describe_counter!(
        "chatd_messages_stored_total",
        "messages and system events committed"
    );
    describe_counter!(
        "chatd_deliveries_total",
        "frames queued to sessions by fan-out"
    );
    describe_counter!(
        "chatd_fanout_shards_skipped_total",
        "shards a fan-out skipped because none of its users has a session there"
    );
    describe_histogram!("chatd_write_ack_seconds", "owner admission to durable ack");
    describe_histogram!(
        "chatd_storage_commit_seconds",
        "one group commit: commit log append including fdatasync"
    );
    describe_histogram!("chatd_storage_batch_jobs", "jobs per group commit");
    describe_histogram!(
        "chatd_storage_batch_ops",
        "records written per group commit"
    );
    describe_gauge!(
        "chatd_storage_queue_depth",
        "jobs waiting for the storage writer"
    );
    describe_histogram!(
        "chatd_storage_apply_seconds",
        "one commit written into fjall by the apply thread"
    );
    describe_gauge!(
        "chatd_storage_unapplied_commits",
        "commits acknowledged but not yet in fjall"
    );
    describe_histogram!(
        "chatd_storage_apply_wait_seconds",
        "storage writer waits for the apply thread"
    );
    describe_histogram!(
        "chatd_storage_read_wait_seconds",
        "reads waiting for fjall to hold what was acknowledged before them"
    );
    describe_histogram!(
        "chatd_storage_checkpoint_seconds",
        "a sealed log segment's index ingested into fjall, persisted and marked indexed"
    );
    describe_counter!("chatd_log_segments_total", "commit log segments started");
    describe_counter!(
        "chatd_storage_stalls_total",
        "times the apply thread waited for memtables to be flushed"
    );
    describe_histogram!(
        "chatd_storage_stall_seconds",
        "length of the apply thread's waits for flushes"
    );
    describe_gauge!(
        "chatd_store_write_buffer_bytes",
        "bytes in the store's memtables, all keyspaces"
    );
    describe_gauge!(
        "chatd_store_flushes_pending",
        "sealed memtables waiting for their flush"
    );
    describe_gauge!(
        "chatd_store_journal_files",
        "journal files kept until their memtables are flushed"
    );
    describe_gauge!(
        "chatd_mesh_queue_depth",
        "messages waiting in rings towards a shard"
    );
    describe_counter!(
        "chatd_ephemeral_shed_total",
        "typing and presence frames shed"
    );
    describe_counter!(
        "chatd_slow_consumers_total",
        "sessions closed as slow consumers"
    );
    describe_counter!("chatd_syncs_total", "Sync requests");
    describe_counter!("chatd_resumes_total", "successful Resume requests");
    describe_counter!(
        "chatd_datagrams_sent_total",
        "typing and presence frames sent as QUIC datagrams"
    );
    describe_counter!(
        "chatd_datagrams_received_total",
        "Typing frames received as QUIC datagrams"
    );
    describe_counter!(
        "chatd_datagrams_dropped_total",
        "QUIC datagrams from clients dropped"
    );
}
