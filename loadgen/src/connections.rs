//! `connections`: opens C authenticated sessions (each registers its own
//! account), keeps them alive with heartbeats for the measured duration,
//! checks that every one still answers, and reports the server's memory per
//! session. chatd only: the question is what an idle session costs it.

use std::time::{Duration, Instant};

use anyhow::bail;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};

use crate::cli::{Common, Target, Transport};
use crate::conn;
use crate::procstat;
use crate::scenario::{self, Server};
use crate::session::{self, ChatSession};
use crate::setup::bounded;
use crate::stats::{Latency, Report, ServerUsage};

/// Pings sent before their pongs are read, in a sweep: a burst of tens of
/// thousands of QUIC datagrams at once overflows UDP socket buffers and
/// costs retransmissions.
const SWEEP_WINDOW: usize = 1024;

/// Pings every session, [`SWEEP_WINDOW`] at a time, reading each pong in
/// turn; returns how many answered, and records for each the time since
/// the sweep started (so the largest is the time to check every session).
async fn ping_all(sessions: &mut [ChatSession], nonce: u64, rtt: &mut Latency) -> usize {
    let started = Instant::now();
    let mut alive = 0;
    for chunk in sessions.chunks_mut(SWEEP_WINDOW) {
        let mut written = Vec::with_capacity(chunk.len());
        for s in chunk.iter_mut() {
            written.push(s.send(C::Ping(pb::Ping { nonce })).await.is_ok());
        }
        for (s, ok) in chunk.iter_mut().zip(written) {
            if !ok {
                continue;
            }
            let answered = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match s.next_frame().await {
                        Ok(Some(f)) if matches!(f.body, Some(S::Pong(_))) => return true,
                        Ok(Some(_)) => {}
                        _ => return false,
                    }
                }
            })
            .await
            .unwrap_or(false);
            if answered {
                alive += 1;
                rtt.record_ns(started.elapsed().as_nanos() as u64);
            }
        }
    }
    alive
}

/// The heartbeat interval the server announced (at least 1 s).
fn heartbeat_of(sessions: &[ChatSession]) -> Duration {
    Duration::from_millis(u64::from(
        sessions
            .first()
            .map_or(15_000, |s| s.heartbeat_ms)
            .max(1000),
    ))
}

pub async fn run(count: usize, concurrency: usize, common: &Common) -> anyhow::Result<Report> {
    if common.target != Target::Chatd {
        bail!("the connections scenario measures chatd sessions; use --target chatd");
    }
    // QUIC sessions share a few UDP sockets; every other transport takes
    // a file descriptor per session.
    let quic = common.transport == Transport::Quic;
    let limit = procstat::raise_nofile_limit();
    if !quic && (count as u64) + 64 > limit {
        bail!(
            "{count} connections need more open files than this process may have ({limit}); \
             raise the hard limit (ulimit -Hn), open fewer, or use --transport quic"
        );
    }
    let server = Server::start(common)?;
    let pid = server.pid();
    let dialer = server.dialer.clone();
    let prefix = session::run_prefix();
    // Each TCP connection of both phases holds a source port (the first
    // phase's in TIME_WAIT): about 28,000 per source address.
    let sources = if quic {
        1
    } else {
        common.source_addrs.max((2 * count).div_ceil(25_000))
    };
    // Accounts first, on short-lived connections, so that what the store
    // keeps per account (memtables, caches) is in the baseline and the
    // difference below is the sessions alone.
    let progress = crate::progress::bar(common, 2 * count as u64);
    let tokens = bounded(count, concurrency, |i| {
        let name = format!("{prefix}c{i}");
        let progress = progress.clone();
        let dialer = dialer.clone();
        async move {
            let mut s = ChatSession::connect(&dialer, conn::source_addr(i, sources)).await?;
            s.register(&name).await?;
            progress.inc(1);
            Ok(s.token)
        }
    })
    .await
    .map_err(|e| server.context(e))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = pid.and_then(procstat::memory);
    let cpu_before = pid.and_then(procstat::cpu_seconds);
    let own_cpu_before = procstat::cpu_seconds(std::process::id());
    let tokens = std::rc::Rc::new(tokens);
    // Opened in chunks; when opening takes longer than half a heartbeat
    // interval, the sessions already open are pinged between chunks so
    // that none reaches the server's idle timeout before the hold starts.
    // Those sweeps are not counted in the time to open.
    let chunk = concurrency.max(1) * 16;
    let mut sessions: Vec<ChatSession> = Vec::with_capacity(count);
    let mut sweep_seconds = 0.0;
    let mut nonce = 0;
    let opened_at = Instant::now();
    let mut last_sweep = opened_at;
    while sessions.len() < count {
        let first = sessions.len();
        let batch = bounded(chunk.min(count - first), concurrency, |k| {
            let i = first + k;
            let tokens = tokens.clone();
            let progress = progress.clone();
            let dialer = dialer.clone();
            async move {
                let mut s = ChatSession::connect(&dialer, conn::source_addr(i, sources)).await?;
                match s
                    .request(C::Resume(pb::Resume {
                        session_token: tokens[i].clone(),
                        device: None,
                        cursors: vec![],
                    }))
                    .await?
                {
                    S::ResumeOk(_) => {}
                    other => bail!("expected ResumeOk, got {other:?}"),
                }
                progress.inc(1);
                Ok(s)
            }
        })
        .await
        .map_err(|e| server.context(e))?;
        sessions.extend(batch);
        if last_sweep.elapsed() >= heartbeat_of(&sessions) / 2 && sessions.len() < count {
            let t = Instant::now();
            nonce += 1;
            ping_all(&mut sessions, nonce, &mut Latency::default()).await;
            sweep_seconds += t.elapsed().as_secs_f64();
            last_sweep = Instant::now();
        }
    }
    let open_seconds = opened_at.elapsed().as_secs_f64() - sweep_seconds;
    progress.finish_and_clear();
    let heartbeat = heartbeat_of(&sessions);

    // Hold them for the measured duration, heartbeating at half the
    // announced interval (the server closes sessions silent for three).
    let mut rtt = Latency::default();
    let hold_until = Instant::now() + Duration::from_secs_f64(common.duration);
    nonce += 1;
    let mut alive = ping_all(&mut sessions, nonce, &mut rtt).await;
    while Instant::now() < hold_until {
        let next = (Instant::now() + heartbeat / 2).min(hold_until);
        tokio::time::sleep_until(next.into()).await;
        nonce += 1;
        alive = ping_all(&mut sessions, nonce, &mut rtt).await;
    }
    let after = pid.and_then(procstat::memory);
    let cpu_after = pid.and_then(procstat::cpu_seconds);
    let own_cpu_after = procstat::cpu_seconds(std::process::id());

    let mut report = scenario::base_report("connections", common, &server);
    report.users = count;
    report.send_to_ack = rtt.summary();
    report.verification.ok = alive == count;
    report.verification.expected_deliveries = count as u64;
    report.verification.deliveries = alive as u64;
    report.verification.missing = (count - alive) as u64;
    let extra = &mut report.extra;
    extra.insert("sessions".into(), count.into());
    extra.insert("alive_at_end".into(), alive.into());
    if !quic {
        extra.insert("source_addresses".into(), sources.into());
    }
    extra.insert("open_seconds".into(), open_seconds.into());
    if let (Some(b), Some(a)) = (own_cpu_before, own_cpu_after) {
        // Opening and holding: near the wall time means loadgen was the
        // limit.
        extra.insert("loadgen_cpu_seconds".into(), (a - b).into());
    }
    extra.insert(
        "sessions_opened_per_second".into(),
        (count as f64 / open_seconds).into(),
    );
    if let (Some(b), Some(a)) = (before, after) {
        let per = |x: u64, y: u64| (y.saturating_sub(x)) as f64 / count.max(1) as f64;
        extra.insert("rss_bytes_per_session".into(), per(b.rss, a.rss).into());
        extra.insert(
            "private_bytes_per_session".into(),
            per(b.private, a.private).into(),
        );
        report.server = Some(ServerUsage {
            cpu_seconds: cpu_after.zip(cpu_before).map_or(0.0, |(a, b)| a - b),
            cpu_us_per_delivery: None,
            deliveries_per_cpu_second: None,
            memory_before: Some(b.into()),
            memory_after: Some(a.into()),
        });
    }
    Ok(report)
}
