//! The messaging scenarios (`direct`, `group`, `channel`) on any target:
//! senders send at a rate or as fast as their window allows, receivers
//! check every message and time it.
//!
//! Everything runs on one thread (a current-thread runtime and a
//! `LocalSet`), so the shared state is an `Rc<RefCell<Run>>` borrowed for
//! the length of one event.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::cli::{Common, Target};
use crate::conn::{self, Outbox};
use crate::payload::{self, Header};
use crate::setup::{Dest, Plan, Ready};
use crate::stats::{Latency, Verification};
use crate::wire::{self, Event};

/// One sender's stream of messages to one conversation.
struct Stream {
    sender: usize,
    dest: Dest,
    /// Connection the stream sends on.
    conn: usize,
    /// Users who must receive every message (members other than the sender).
    recipients: Vec<usize>,
    window: Rc<Semaphore>,
    /// Messages sent so far (the next counter).
    sent: u64,
}

#[derive(Default)]
struct Receiver {
    /// Next expected counter per stream.
    next_counter: HashMap<u32, u64>,
    /// Next expected chat/1 seq per conversation.
    next_seq: HashMap<u64, u64>,
}

/// Shared state of a run.
pub struct Run {
    target: Target,
    clock: Instant,
    payload: usize,
    warm_ns: u64,
    end_ns: u64,
    streams: Vec<Stream>,
    receivers: Vec<Receiver>,
    conv_base: HashMap<u64, u64>,
    /// (stream, counter) -> recipients still to receive it.
    pending: HashMap<(u32, u64), u32>,
    /// Sends awaiting their ack, per connection: (request id, sent at).
    unacked: Vec<VecDeque<(u64, u64)>>,
    outboxes: Vec<Rc<Outbox>>,
    pub ack: Latency,
    pub deliver: Latency,
    pub last: Latency,
    pub sent_total: u64,
    pub sent_in_window: u64,
    pub acked: u64,
    pub deliveries_in_window: u64,
    pub echoes: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub verify: Verification,
    /// Sends that left more than 1 ms after their scheduled time (rate
    /// mode): loadgen could not keep up.
    pub late_sends: u64,
    text: Vec<u8>,
}

impl Run {
    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    fn in_window(&self, ns: u64) -> bool {
        ns >= self.warm_ns && ns < self.end_ns
    }

    fn error(&mut self, text: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(text);
        }
    }

    /// Sends `n` messages of stream `s` stamped `sent_ns`.
    fn send(&mut self, s: usize, n: usize, sent_ns: u64) {
        let payload_size = self.payload;
        let acked = self.target.acks();
        let in_window = self.in_window(sent_ns);
        let stream = &mut self.streams[s];
        let outbox = self.outboxes[stream.conn].clone();
        let recipients = stream.recipients.len() as u32;
        let conn = stream.conn;
        let mut text = std::mem::take(&mut self.text);
        let mut frames = Vec::with_capacity(n * (payload_size + 64));
        for _ in 0..n {
            let counter = stream.sent;
            stream.sent += 1;
            text.clear();
            payload::write(
                &mut text,
                Header {
                    stream: s as u32,
                    counter,
                    sent_ns,
                },
                payload_size,
            );
            let rid = ((s as u64 + 1) << 40) | counter;
            match &stream.dest {
                Dest::Chat(id) => wire::chat::encode_send(&mut frames, rid, *id, &text),
                Dest::Subject(subject) => match self.target {
                    Target::Redis => wire::resp::encode_command(
                        &mut frames,
                        &[b"PUBLISH", subject.as_bytes(), &text],
                    ),
                    Target::RedisStreams => {
                        wire::resp::encode_xadd(&mut frames, subject.as_bytes(), &text)
                    }
                    Target::NatsJetstream => {
                        wire::jetstream::encode_publish(&mut frames, subject, &text)
                    }
                    Target::Ejabberd => {
                        wire::xmpp::encode_message(&mut frames, subject, rid, &text)
                    }
                    Target::Nats | Target::Chatd => {
                        wire::nats::encode_pub(&mut frames, subject, &text)
                    }
                },
            }
            if recipients > 0 {
                self.pending.insert((s as u32, counter), recipients);
            }
            if acked {
                self.unacked[conn].push_back((rid, sent_ns));
            }
        }
        if self.target == Target::Ejabberd {
            // XMPP acks only what is asked for: one request per batch.
            wire::xmpp::encode_ack_request(&mut frames);
        }
        self.text = text;
        self.sent_total += n as u64;
        if in_window {
            self.sent_in_window += n as u64;
        }
        outbox.push(|buf| buf.extend_from_slice(&frames));
    }

    /// Handles one event read from connection `conn` of user `user`.
    fn on_event(&mut self, user: usize, conn: usize, ev: Event) {
        match ev {
            Event::Ack { tag } => self.on_ack(conn, tag),
            Event::Deliver {
                conv,
                seq,
                system,
                header,
            } => self.on_deliver(user, conv, seq, system, header),
            Event::Reply(bytes) => self.outboxes[conn].push(|b| b.extend_from_slice(&bytes)),
            Event::Error { tag, text } => {
                if tag != 0 {
                    if let Some(i) = self.unacked[conn].iter().position(|&(r, _)| r == tag) {
                        self.unacked[conn].remove(i);
                    }
                }
                self.error(format!("user {user}: {text}"));
            }
            Event::Pong | Event::Other => {}
        }
    }

    fn on_ack(&mut self, conn: usize, tag: u64) {
        let q = &mut self.unacked[conn];
        let entry = if self.target == Target::Chatd {
            match q.front() {
                Some(&(rid, _)) if rid == tag => q.pop_front(),
                _ => q
                    .iter()
                    .position(|&(r, _)| r == tag)
                    .and_then(|i| q.remove(i)),
            }
        } else {
            // The other targets ack in send order: PUBLISH and XADD
            // replies, JetStream publish acks (awaited in order), XMPP
            // stream management counts.
            q.pop_front()
        };
        match entry {
            Some((_, sent_ns)) => {
                self.acked += 1;
                if self.in_window(sent_ns) {
                    let now = self.now_ns();
                    self.ack.record_ns(now.saturating_sub(sent_ns));
                }
            }
            None => self.error(format!("ack {tag} for no send on connection {conn}")),
        }
    }

    fn on_deliver(&mut self, user: usize, conv: u64, seq: u64, system: bool, h: Option<Header>) {
        // chat/1: every session of a member sees every seq of the
        // conversation once and in order, from the first after setup.
        if conv != 0 {
            let Some(&base) = self.conv_base.get(&conv) else {
                self.verify.unknown += 1;
                return;
            };
            if seq <= base {
                return;
            }
            let next = self.receivers[user]
                .next_seq
                .entry(conv)
                .or_insert(base + 1);
            if seq < *next {
                self.verify.duplicates += 1;
                return;
            }
            if seq > *next {
                self.verify.out_of_order += 1;
            }
            *next = seq + 1;
        }
        if system {
            return;
        }
        let Some(h) = h else {
            self.verify.unknown += 1;
            return;
        };
        let Some(stream) = self.streams.get(h.stream as usize) else {
            self.verify.unknown += 1;
            return;
        };
        if stream.sender == user {
            // chat/1 echoes a message to the sender's own sessions (its
            // other devices); checked above by seq, not timed.
            self.echoes += 1;
            return;
        }
        let next = self.receivers[user]
            .next_counter
            .entry(h.stream)
            .or_insert(0);
        if h.counter < *next {
            self.verify.duplicates += 1;
            return;
        }
        if h.counter > *next {
            self.verify.out_of_order += 1;
        }
        *next = h.counter + 1;
        self.verify.deliveries += 1;
        let now = self.now_ns();
        if self.in_window(h.sent_ns) {
            self.deliver.record_ns(now.saturating_sub(h.sent_ns));
        }
        if self.in_window(now) {
            self.deliveries_in_window += 1;
        }
        let key = (h.stream, h.counter);
        if let Some(left) = self.pending.get_mut(&key) {
            *left -= 1;
            if *left == 0 {
                self.pending.remove(&key);
                if self.in_window(h.sent_ns) {
                    self.last.record_ns(now.saturating_sub(h.sent_ns));
                }
                stream.window.add_permits(1);
            }
        }
    }

    /// Counts what never arrived and settles the verdict.
    fn finish_verification(&mut self) {
        let mut v = std::mem::take(&mut self.verify);
        v.sent = self.sent_total;
        for (s, stream) in self.streams.iter().enumerate() {
            for &r in &stream.recipients {
                v.expected_deliveries += stream.sent;
                let got = self.receivers[r]
                    .next_counter
                    .get(&(s as u32))
                    .copied()
                    .unwrap_or(0);
                v.missing += stream.sent.saturating_sub(got);
            }
        }
        // Skipped counters were counted as out of order when seen, and as
        // missing here only if never delivered: missing covers loss.
        v.ok = v.missing == 0
            && v.duplicates == 0
            && v.out_of_order == 0
            && v.unknown == 0
            && self.errors == 0
            && self.unacked.iter().all(VecDeque::is_empty);
        self.verify = v;
    }

    fn drained(&self) -> bool {
        self.pending.is_empty() && self.unacked.iter().all(VecDeque::is_empty)
    }
}

/// Sends for stream `s` until the end of the load.
async fn sender(run: Rc<RefCell<Run>>, s: usize, per_stream_rate: f64) {
    let (window, clock, end_ns) = {
        let r = run.borrow();
        (r.streams[s].window.clone(), r.clock, r.end_ns)
    };
    let end = clock + Duration::from_nanos(end_ns);
    if per_stream_rate <= 0.0 {
        loop {
            let permit = tokio::select! {
                p = window.acquire() => p,
                _ = tokio::time::sleep_until(end.into()) => return,
            };
            let Ok(permit) = permit else { return };
            permit.forget();
            let mut n = 1;
            while n < 64 {
                match window.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            let mut r = run.borrow_mut();
            let now = r.now_ns();
            if now >= end_ns {
                return;
            }
            r.send(s, n, now);
        }
    } else {
        let interval = 1e9 / per_stream_rate;
        let pacer = crate::pace::Pacer::new();
        // A random phase spreads the streams over the interval.
        let mut next = rand::random::<f64>() * interval;
        loop {
            if next as u64 >= end_ns {
                return;
            }
            pacer
                .sleep_until(clock + Duration::from_nanos(next as u64))
                .await;
            let Ok(permit) = window.acquire().await else {
                return;
            };
            permit.forget();
            let mut r = run.borrow_mut();
            let now = r.now_ns();
            // Stamped with the time it actually leaves, which the timer's
            // slack and this thread's other work may delay.
            if now > next as u64 + 1_000_000 {
                r.late_sends += 1;
            }
            r.send(s, 1, now);
            next += interval;
        }
    }
}

/// Outcome of the load phase.
pub struct Outcome {
    pub run: Rc<RefCell<Run>>,
    pub measured_seconds: f64,
    pub cpu_start: Option<f64>,
    pub cpu_end: Option<f64>,
    /// loadgen's own CPU time over the measured interval.
    pub loadgen_cpu_seconds: Option<f64>,
}

/// Runs the load on a prepared setup. `server_pid` is sampled for CPU time
/// at the start and end of the measured interval.
pub async fn run(
    plan: &Plan,
    ready: Ready,
    common: &Common,
    server_pid: Option<u32>,
) -> anyhow::Result<Outcome> {
    let warm_ns = (common.warmup * 1e9) as u64;
    let end_ns = warm_ns + (common.duration * 1e9) as u64;
    let mut send_conn = vec![usize::MAX; plan.users];
    let mut outboxes = Vec::new();
    let mut tasks = Vec::new();
    let mut reads = Vec::new();
    for (i, c) in ready.conns.into_iter().enumerate() {
        if c.sends {
            send_conn[c.user] = i;
        }
        let (r, w) = (c.link.reader, c.link.writer);
        let outbox = Rc::new(Outbox::default());
        outboxes.push(outbox.clone());
        tasks.push(tokio::task::spawn_local(conn::writer(w, outbox)));
        reads.push((c.user, r, c.decoder));
    }
    let streams = plan
        .streams
        .iter()
        .zip(ready.dests)
        .map(|(&(c, sender), dest)| Stream {
            sender,
            dest,
            conn: send_conn[sender],
            recipients: plan.convs[c]
                .iter()
                .copied()
                .filter(|&u| u != sender)
                .collect(),
            window: Rc::new(Semaphore::new(common.window.max(1))),
            sent: 0,
        })
        .collect::<Vec<_>>();
    let n_streams = streams.len();
    let run = Rc::new(RefCell::new(Run {
        target: common.target,
        clock: Instant::now(),
        payload: common.payload,
        warm_ns,
        end_ns,
        streams,
        receivers: (0..plan.users).map(|_| Receiver::default()).collect(),
        conv_base: ready.conv_base,
        pending: HashMap::new(),
        unacked: vec![VecDeque::new(); outboxes.len()],
        outboxes: outboxes.clone(),
        ack: Latency::default(),
        deliver: Latency::default(),
        last: Latency::default(),
        sent_total: 0,
        sent_in_window: 0,
        acked: 0,
        deliveries_in_window: 0,
        echoes: 0,
        errors: 0,
        error_samples: Vec::new(),
        verify: Verification::default(),
        late_sends: 0,
        text: Vec::new(),
    }));
    let mut readers = Vec::new();
    for (i, (user, r, decoder)) in reads.into_iter().enumerate() {
        let run = run.clone();
        readers.push(tokio::task::spawn_local(async move {
            let result =
                conn::reader(r, decoder, |ev| run.borrow_mut().on_event(user, i, ev)).await;
            if let Err(e) = result {
                run.borrow_mut()
                    .error(format!("user {user}: connection failed: {e}"));
            }
        }));
    }
    let per_stream_rate = if common.rate > 0.0 {
        common.rate / n_streams.max(1) as f64
    } else {
        0.0
    };
    let clock = run.borrow().clock;
    for s in 0..n_streams {
        tasks.push(tokio::task::spawn_local({
            let run = run.clone();
            async move {
                sender(run, s, per_stream_rate).await;
                Ok(())
            }
        }));
    }
    let progress = crate::progress::bar(common, end_ns / 1_000_000);
    let progress_task = tokio::task::spawn_local({
        let run = run.clone();
        let progress = progress.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let r = run.borrow();
                progress.set_position(clock.elapsed().as_millis() as u64);
                progress.set_message(format!(
                    "sent {}  delivered {}  errors {}",
                    r.sent_total, r.verify.deliveries, r.errors
                ));
            }
        }
    });

    tokio::time::sleep_until((clock + Duration::from_nanos(warm_ns)).into()).await;
    let cpu_start = server_pid.and_then(crate::procstat::cpu_seconds);
    let own_start = crate::procstat::cpu_seconds(std::process::id());
    tokio::time::sleep_until((clock + Duration::from_nanos(end_ns)).into()).await;
    let cpu_end = server_pid.and_then(crate::procstat::cpu_seconds);
    let own_end = crate::procstat::cpu_seconds(std::process::id());
    progress.set_message("draining".to_string());
    let drain_until = Instant::now() + Duration::from_secs_f64(common.drain);
    while !run.borrow().drained() && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    progress_task.abort();
    progress.finish_and_clear();
    for o in &outboxes {
        o.close();
    }
    for t in tasks {
        t.abort();
    }
    for t in readers {
        t.abort();
    }
    run.borrow_mut().finish_verification();
    Ok(Outcome {
        run,
        measured_seconds: common.duration,
        cpu_start,
        cpu_end,
        loadgen_cpu_seconds: own_end.zip(own_start).map(|(e, s)| e - s),
    })
}
