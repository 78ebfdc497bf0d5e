//! `sync`: pairs in direct conversations where one side goes offline, the
//! other sends M messages, and the first reconnects with Resume (its
//! cursor) and catches up with Sync, `rounds` times. Measures the time from
//! reconnecting to holding every missed message and checks that exactly
//! the missed messages arrive, in order. chatd only: the pub/sub targets
//! keep nothing for an offline subscriber.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};

use crate::cli::{Common, Target};
use crate::conn;
use crate::payload::{self, Header};
use crate::scenario::{self, Server};
use crate::session::{self, ChatSession};
use crate::setup::bounded;
use crate::stats::{Latency, Report};
use crate::wire::chat as chatwire;

/// Sends `count` messages on `s` to `conv` (at most `window` unanswered)
/// and returns the last acknowledged seq.
async fn send_burst(
    s: &mut ChatSession,
    conv: u64,
    stream: u32,
    first_counter: u64,
    count: usize,
    payload_size: usize,
) -> anyhow::Result<u64> {
    const WINDOW: usize = 128;
    let mut last_seq = 0;
    let mut sent = 0;
    let mut acked = 0;
    let mut text = Vec::new();
    while acked < count {
        let mut out = Vec::new();
        while sent < count && sent - acked < WINDOW {
            text.clear();
            payload::write(
                &mut text,
                Header {
                    stream,
                    counter: first_counter + sent as u64,
                    sent_ns: 0,
                },
                payload_size,
            );
            // The request id is also the idempotency key: unique per message.
            let rid = (1u64 << 40) | (first_counter + sent as u64);
            chatwire::encode_send(&mut out, rid, conv, &text);
            sent += 1;
        }
        if !out.is_empty() {
            s.write(&out).await?;
        }
        let frame = s
            .next_frame()
            .await?
            .context("server closed the sender's connection")?;
        match frame.body {
            Some(S::SendAck(a)) => {
                acked += 1;
                last_seq = last_seq.max(a.seq);
            }
            Some(S::Error(e)) => bail!("send refused: {:?} {}", e.code(), e.message),
            _ => {}
        }
    }
    Ok(last_seq)
}

/// Reconnects with `token`, resumes from `cursor` and fetches up to
/// `last`; returns the session and the messages in the order received.
async fn catch_up(
    dialer: &crate::transport::Dialer,
    source: Option<std::net::IpAddr>,
    token: String,
    conv: u64,
    cursor: u64,
    last: u64,
) -> anyhow::Result<(ChatSession, Vec<pb::Message>)> {
    let mut s = ChatSession::connect(dialer, source).await?;
    let mut got = Vec::new();
    let mut result = match s
        .request(C::Resume(pb::Resume {
            session_token: token.clone(),
            device: None,
            cursors: vec![pb::Cursor {
                conversation_id: conv,
                seq: cursor,
            }],
        }))
        .await?
    {
        S::ResumeOk(ok) => ok.sync.unwrap_or_default(),
        other => bail!("expected ResumeOk, got {other:?}"),
    };
    s.token = token;
    loop {
        for gap in result.gaps {
            if gap.conversation_id == conv {
                got.extend(gap.messages);
            }
        }
        let have = got.last().map_or(cursor, |m| m.seq);
        if have >= last {
            return Ok((s, got));
        }
        result = match s
            .request(C::Sync(pb::Sync {
                cursors: vec![pb::Cursor {
                    conversation_id: conv,
                    seq: have,
                }],
                limit_per_conversation: 1000,
            }))
            .await?
        {
            S::SyncResult(r) => r,
            other => bail!("expected SyncResult, got {other:?}"),
        };
        if result.gaps.iter().all(|g| g.messages.is_empty()) {
            bail!("sync stopped at seq {have} before {last}");
        }
    }
}

pub async fn run(
    users: usize,
    missed: usize,
    rounds: usize,
    common: &Common,
) -> anyhow::Result<Report> {
    if common.target != Target::Chatd {
        bail!("the sync scenario needs stored messages; only chatd keeps them");
    }
    let server = Server::start(common)?;
    let dialer = server.dialer.clone();
    let pairs = users / 2;
    let prefix = session::run_prefix();
    let sources = common.source_addrs;
    let mut sessions = bounded(pairs * 2, 64, |i| {
        let name = format!("{prefix}s{i}");
        let dialer = dialer.clone();
        async move {
            let mut s = ChatSession::connect(&dialer, conn::source_addr(i, sources)).await?;
            s.register(&name).await?;
            Ok(s)
        }
    })
    .await
    .map_err(|e| server.context(e))?;
    // Pair p: sender 2p, receiver 2p+1.
    let mut convs = Vec::with_capacity(pairs);
    let mut cursors = Vec::with_capacity(pairs);
    for p in 0..pairs {
        let peer = sessions[2 * p + 1].user_id;
        let conv = match sessions[2 * p]
            .request(C::CreateConversation(pb::CreateConversation {
                kind: pb::ConversationKind::Direct as i32,
                member_ids: vec![peer],
                title: String::new(),
            }))
            .await?
        {
            S::Conversation(c) => c.conversation_id,
            other => bail!("expected Conversation, got {other:?}"),
        };
        let base = match sessions[2 * p + 1]
            .request(C::GetConversation(pb::GetConversation {
                conversation_id: conv,
            }))
            .await?
        {
            S::Conversation(c) => c.last_seq,
            other => bail!("expected Conversation, got {other:?}"),
        };
        convs.push(conv);
        cursors.push(base);
    }
    let mut senders = Vec::with_capacity(pairs);
    let mut receivers: Vec<Option<ChatSession>> = Vec::with_capacity(pairs);
    for (i, s) in sessions.drain(..).enumerate() {
        if i % 2 == 0 {
            senders.push(s);
        } else {
            receivers.push(Some(s));
        }
    }
    let tokens: Vec<String> = receivers
        .iter()
        .map(|r| r.as_ref().map(|s| s.token.clone()).unwrap_or_default())
        .collect();

    let progress = crate::progress::bar(common, rounds as u64);
    let mut catch_up_latency = Latency::default();
    let mut synced = 0u64;
    let mut reconnect_seconds = 0.0;
    let mut bad = 0u64;
    let mut samples = Vec::new();
    let mut next_counter = vec![0u64; pairs];
    for _round in 0..rounds {
        for r in receivers.iter_mut() {
            *r = None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut lasts = Vec::with_capacity(pairs);
        for (p, s) in senders.iter_mut().enumerate() {
            let last = send_burst(
                s,
                convs[p],
                p as u32,
                next_counter[p],
                missed,
                common.payload,
            )
            .await?;
            lasts.push(last);
        }
        let started = Instant::now();
        let jobs = Rc::new((
            convs.clone(),
            cursors.clone(),
            lasts.clone(),
            tokens.clone(),
        ));
        let results = bounded(pairs, 64, |p| {
            let jobs = jobs.clone();
            let dialer = dialer.clone();
            async move {
                let t = Instant::now();
                let (s, got) = catch_up(
                    &dialer,
                    conn::source_addr(2 * p + 1, sources),
                    jobs.3[p].clone(),
                    jobs.0[p],
                    jobs.1[p],
                    jobs.2[p],
                )
                .await?;
                Ok((s, got, t.elapsed()))
            }
        })
        .await
        .map_err(|e| server.context(e))?;
        reconnect_seconds += started.elapsed().as_secs_f64();
        for (p, (s, got, took)) in results.into_iter().enumerate() {
            catch_up_latency.record_ns(took.as_nanos() as u64);
            let seqs_ok = got
                .iter()
                .zip(cursors[p] + 1..)
                .all(|(m, want)| m.seq == want)
                && got.len() as u64 == lasts[p] - cursors[p];
            let counters_ok = got
                .iter()
                .filter_map(|m| payload::parse(m.text.as_bytes()))
                .zip(next_counter[p]..)
                .all(|(h, want)| h.counter == want && h.stream == p as u32)
                && got.len() == missed;
            if !(seqs_ok && counters_ok) {
                bad += 1;
                if samples.len() < 5 {
                    samples.push(format!(
                        "pair {p}: got {} messages, seqs {:?}..{:?}, wanted {}..={}",
                        got.len(),
                        got.first().map(|m| m.seq),
                        got.last().map(|m| m.seq),
                        cursors[p] + 1,
                        lasts[p]
                    ));
                }
            }
            synced += got.len() as u64;
            cursors[p] = lasts[p];
            next_counter[p] += missed as u64;
            receivers[p] = Some(s);
        }
        progress.inc(1);
    }
    progress.finish_and_clear();

    let mut report = scenario::base_report("sync", common, &server);
    report.users = pairs * 2;
    report.fanout = 1;
    report.measured_seconds = reconnect_seconds;
    report.deliveries_per_second = synced as f64 / reconnect_seconds.max(1e-9);
    report.send_to_deliver = None;
    report.errors = bad;
    report.error_samples = samples;
    let expected = (pairs * missed * rounds) as u64;
    report.verification.sent = expected;
    report.verification.expected_deliveries = expected;
    report.verification.deliveries = synced;
    report.verification.missing = expected.saturating_sub(synced);
    report.verification.ok = bad == 0 && synced == expected;
    report.extra.insert(
        "catch_up".into(),
        serde_json::to_value(catch_up_latency.summary())?,
    );
    report
        .extra
        .insert("missed_per_round".into(), missed.into());
    report.extra.insert("rounds".into(), rounds.into());
    report.extra.insert(
        "messages_synced_per_second".into(),
        report.deliveries_per_second.into(),
    );
    Ok(report)
}
