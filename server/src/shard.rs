//! A shard: one OS thread with a current-thread runtime, its own listeners,
//! its sessions and the conversations it owns.
//!
//! Everything a shard holds is reached only from its thread (`Rc`,
//! `RefCell`). Other shards talk to it through the [`Mesh`](crate::mesh).
//! Three kinds of task run on a shard besides the sessions:
//!
//! - the mesh loop drains the rings into the shard, never waiting on a ring
//!   itself;
//! - the commit loop hands the owner's pending writes to the storage writer
//!   as one batch, waits for durability, then sends acks and fan-outs in
//!   order;
//! - the accept loops of [`crate::ingress`] take connections until
//!   shutdown.

use std::cell::RefCell;
use std::collections::VecDeque;

use hashbrown::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_protocol::{ErrorCode, pb};
use tokio::sync::Notify;

use crate::context::Context;
use crate::mesh::ShardId;
use crate::owner::{Effect, Loaded, Origin, Output, Owner, OwnerRequest, Pending};
use crate::reply;
use crate::session_table::SessionTable;
use crate::shard_msg::ShardMsg;
use crate::storage::writer::Batch;

/// One shard's state.
pub struct Shard {
    /// This shard's index.
    pub id: ShardId,
    /// Shared state.
    pub ctx: Arc<Context>,
    /// Connected sessions.
    pub sessions: RefCell<SessionTable>,
    /// Conversations this shard owns (sans-IO; driven by `drive_owner`).
    pub owner: RefCell<Owner>,
    /// Send rate per user with sessions on this shard.
    pub user_buckets: RefCell<HashMap<u64, crate::limits::TokenBucket>>,
    /// Presence of the users this shard keeps.
    pub presence: RefCell<crate::presence::PresenceTable>,
    /// Which local sessions watch which users' presence.
    pub interest: RefCell<crate::presence::Interest>,
    /// Entries waiting for the commit loop.
    /// With the time each entry was queued, for `chatd_write_ack_seconds`.
    pipeline: RefCell<VecDeque<(Instant, Pending)>>,
    pipeline_ready: Notify,
    pipeline_idle: Notify,
    committing: std::cell::Cell<bool>,
    /// Connections accepted and not yet closed, counted at accept time (a
    /// session enters `sessions` only once its task runs, which a burst of
    /// accepts would outrun).
    pub connections: std::cell::Cell<usize>,
    /// Metric handles of the per-message path.
    pub counters: crate::metrics::PerMessage,
    /// This shard as the home of keyed writes and login counts.
    pub home: crate::home::Home,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("id", &self.id).finish()
    }
}

impl Shard {
    fn new(id: ShardId, ctx: Arc<Context>, recovered: HashMap<u64, u64>) -> Self {
        let c = &ctx.config;
        let rules = crate::owner::Rules {
            max_message_bytes: c.max_message_bytes,
            max_group_members: c.max_group_members,
            push_preview: c.push_preview,
            push: ctx.push.clone(),
            media: ctx.media.clone(),
        };
        let owner = Owner::new(id as u16, recovered, c.recent_messages, rules);
        Self {
            id,
            sessions: RefCell::new(SessionTable::new(id, ctx.directory.clone())),
            owner: RefCell::new(owner),
            counters: crate::metrics::PerMessage::new(),
            user_buckets: RefCell::new(HashMap::new()),
            presence: RefCell::new(crate::presence::PresenceTable::default()),
            interest: RefCell::new(crate::presence::Interest::default()),
            pipeline: RefCell::new(VecDeque::new()),
            pipeline_ready: Notify::new(),
            pipeline_idle: Notify::new(),
            committing: std::cell::Cell::new(false),
            connections: std::cell::Cell::new(0),
            home: crate::home::Home::new(
                c.login_failures_per_username,
                c.login_failures_per_address,
                crate::config::cores() / ctx.nr_shards().max(1),
            ),
            ctx,
        }
    }

    /// Queues writes and their effects for the commit loop.
    pub fn commit(&self, pending: Pending) {
        self.pipeline
            .borrow_mut()
            .push_back((Instant::now(), pending));
        self.pipeline_ready.notify_one();
    }

    /// Accepts a request for a conversation this shard owns.
    pub fn enqueue_owned(self: &Rc<Self>, req: OwnerRequest) {
        let now = self.ctx.now_ms();
        self.owner.borrow_mut().handle_request(now, req);
        self.drive_owner();
    }

    /// Carries out the owner's outputs in order: entries go to the commit
    /// loop, store reads to the blocking pool, whose answers go back to the
    /// owner.
    fn drive_owner(self: &Rc<Self>) {
        loop {
            let Some(output) = self.owner.borrow_mut().poll_output() else {
                return;
            };
            match output {
                Output::Commit(pending) => self.commit(pending),
                Output::Load {
                    conversation,
                    recovered_seq,
                } => {
                    let shard = self.clone();
                    tokio::task::spawn_local(async move {
                        let loaded = shard
                            .ctx
                            .store
                            .off_thread(move |store| {
                                let Some(record) = store.conversation(conversation)? else {
                                    return Ok(None);
                                };
                                let members = store.members(conversation)?;
                                let last_seq = match recovered_seq {
                                    Some(s) => s,
                                    None => store.last_seq(conversation)?,
                                };
                                Ok(Some(Loaded {
                                    record,
                                    members,
                                    last_seq,
                                }))
                            })
                            .await;
                        let now = shard.ctx.now_ms();
                        let mut owner = shard.owner.borrow_mut();
                        owner.handle_loaded(now, conversation, loaded);
                        drop(owner);
                        shard.drive_owner();
                    });
                }
                Output::LookUp { conversation, keys } => {
                    let shard = self.clone();
                    tokio::task::spawn_local(async move {
                        let found = shard
                            .ctx
                            .store
                            .off_thread(move |store| {
                                let mut found = Vec::new();
                                for (sender, cmid) in keys {
                                    if let Some(rec) =
                                        store.idempotency(conversation, sender, &cmid)?
                                    {
                                        found.push((sender, cmid, rec));
                                    }
                                }
                                Ok(found)
                            })
                            .await;
                        let now = shard.ctx.now_ms();
                        shard
                            .owner
                            .borrow_mut()
                            .handle_keys(now, conversation, found);
                        shard.drive_owner();
                    });
                }
            }
        }
    }

    /// Routes a reply to the session that asked, returning the request's
    /// in-flight permit; `None` returns only the permit.
    pub async fn reply(&self, origin: Origin, frame: Option<Bytes>) {
        if origin.shard == self.id {
            self.sessions.borrow().answer(origin.session, frame);
        } else {
            let msg = ShardMsg::Reply {
                session: origin.session,
                frame,
            };
            self.ctx.mesh.send(self.id, origin.shard, msg).await;
        }
    }

    /// Closes every authenticated session of `user` on every shard, after
    /// `frame`, except session `spared` of this shard.
    pub async fn end_user(&self, user: u64, frame: Bytes, spared: Option<u64>) {
        for dst in 0..self.ctx.nr_shards() {
            if dst == self.id {
                self.sessions.borrow().close_user(user, &frame, spared);
            } else {
                let msg = ShardMsg::EndUser {
                    user,
                    frame: frame.clone(),
                };
                self.ctx.mesh.send(self.id, dst, msg).await;
            }
        }
    }

    /// Pushes `frame` to every session of `users`, on the shards that may
    /// hold one ([`crate::directory`]).
    pub async fn fanout(&self, users: Arc<[u64]>, frame: Bytes, ephemeral: bool) {
        let targets = self.ctx.directory.shards_of(&users);
        for dst in 0..self.ctx.nr_shards() {
            if targets.is_some_and(|t| !t.contains(dst)) {
                self.counters.fanout_shards_skipped.increment(1);
                continue;
            }
            if dst == self.id {
                let n = self.sessions.borrow().deliver(&users, &frame, ephemeral);
                self.counters.deliveries.increment(n as u64);
            } else {
                let msg = ShardMsg::Deliver {
                    users: users.clone(),
                    frame: frame.clone(),
                    ephemeral,
                };
                self.ctx.mesh.send(self.id, dst, msg).await;
            }
        }
    }

    /// Sends a conversation operation to the shard that owns it.
    pub async fn to_owner(self: &Rc<Self>, req: OwnerRequest) {
        let owner = self.ctx.shard_for(req.conversation());
        if owner == self.id {
            self.enqueue_owned(req);
        } else {
            let msg = ShardMsg::Request(Box::new(req));
            self.ctx.mesh.send(self.id, owner, msg).await;
        }
    }

    /// Sends `msg` to the home shard of `key` ([`crate::home`]), or
    /// handles it here if this is its home.
    pub async fn to_home(self: &Rc<Self>, key: &crate::home::Key, msg: ShardMsg) {
        let home = crate::home::home_of(key, self.ctx.nr_shards());
        if home == self.id {
            self.handle_msg(msg);
        } else {
            self.ctx.mesh.send(self.id, home, msg).await;
        }
    }

    fn handle_msg(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Request(req) => self.enqueue_owned(*req),
            ShardMsg::Reply { session, frame } => self.sessions.borrow().answer(session, frame),
            ShardMsg::Deliver {
                users,
                frame,
                ephemeral,
            } => {
                let n = self.sessions.borrow().deliver(&users, &frame, ephemeral);
                self.counters.deliveries.increment(n as u64);
            }
            ShardMsg::Presence(op) => self.apply_presence(op),
            ShardMsg::AdmitSession {
                user,
                max,
                admitted,
            } => {
                let _ = admitted.send(self.admit_here(user, max));
            }
            ShardMsg::PresenceEvents(events) => self.deliver_presence(&events),
            ShardMsg::PushCheck { users, notice } => self.offer_push(&users, &notice),
            ShardMsg::Home(job) => self.home.run(job),
            ShardMsg::Login(op) => self.home.login(op),
            ShardMsg::EndUser { user, frame } => {
                self.sessions.borrow().close_user(user, &frame, None);
            }
        }
    }

    async fn mesh_loop(self: Rc<Self>) {
        loop {
            let taken = self.ctx.mesh.drain(self.id, |msg| self.handle_msg(msg));
            if taken == 0 {
                self.ctx.mesh.readable(self.id).await;
            } else {
                // Let sessions and the commit loop run between turns.
                tokio::task::yield_now().await;
            }
        }
    }

    async fn commit_loop(self: Rc<Self>) {
        loop {
            let entries: Vec<(Instant, Pending)> = self.pipeline.borrow_mut().drain(..).collect();
            if entries.is_empty() {
                self.committing.set(false);
                self.pipeline_idle.notify_waiters();
                self.pipeline_ready.notified().await;
                continue;
            }
            self.committing.set(true);
            // Sized up front: growing a batch of a thousand writes by
            // doubling costs more in page faults than the writes themselves.
            let ops = entries.iter().map(|(_, e)| e.batch.len()).sum();
            let nr_effects = entries.iter().map(|(_, e)| e.effects.len()).sum();
            let mut batch = Batch::with_capacity(ops);
            let mut effects = Vec::with_capacity(nr_effects);
            let mut queued_at = Vec::with_capacity(entries.len());
            for (at, e) in entries {
                if !e.batch.is_empty() {
                    queued_at.push(at);
                }
                batch.extend(e.batch);
                effects.extend(e.effects);
            }
            let result = if batch.is_empty() {
                Ok(0)
            } else {
                self.ctx.writer.write(batch).await
            };
            match result {
                Ok(_) => {
                    let ack_latency = &self.counters.write_ack;
                    for at in queued_at {
                        ack_latency.record(at.elapsed().as_secs_f64());
                    }
                    let stored = &self.counters.messages_stored;
                    for effect in effects {
                        match effect {
                            Effect::Durable { conversation, seq } => {
                                stored.increment(1);
                                let mut owner = self.owner.borrow_mut();
                                owner.handle_durable(conversation, seq);
                            }
                            Effect::Reply(origin, frame) => self.reply(origin, Some(frame)).await,
                            Effect::Release(origin) => self.reply(origin, None).await,
                            Effect::Fanout(users, frame) => self.fanout(users, frame, false).await,
                            Effect::Ephemeral(users, frame) => {
                                self.fanout(users, frame, true).await;
                            }
                            Effect::Notify(users, notice) => {
                                self.notify_offline(&users, notice).await
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(shard = self.id, cause = %e, "commit failed");
                    self.ctx.fail();
                    for effect in effects {
                        if let Effect::Reply(origin, _) | Effect::Release(origin) = effect {
                            let frame = reply::error(
                                origin.request_id,
                                ErrorCode::StorageFailure,
                                "not stored; retry after reconnecting",
                            );
                            self.reply(origin, Some(frame)).await;
                        }
                    }
                }
            }
        }
    }

    async fn cursor_flush_loop(self: Rc<Self>) {
        let mut tick = tokio::time::interval(crate::owner::CURSOR_FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = self.ctx.now_ms();
            self.owner.borrow_mut().handle_tick(now);
            self.drive_owner();
        }
    }

    /// Updates the gauges that are sampled rather than counted. The store's
    /// are read on the blocking pool: fjall holds the journal list's lock
    /// while it deletes journal files.
    pub async fn sample_gauges(&self) {
        metrics::gauge!("chatd_storage_queue_depth").set(self.ctx.writer.queue_depth() as f64);
        if let Ok(g) = self.ctx.store.off_thread(|store| Ok(store.gauges())).await {
            metrics::gauge!("chatd_store_write_buffer_bytes").set(g.write_buffer_bytes as f64);
            metrics::gauge!("chatd_store_flushes_pending").set(g.flushes_pending as f64);
            metrics::gauge!("chatd_store_journal_files").set(g.journal_files as f64);
            metrics::gauge!("chatd_storage_unapplied_commits").set(g.unapplied_commits as f64);
        }
        for dst in 0..self.ctx.nr_shards() {
            metrics::gauge!("chatd_mesh_queue_depth", "shard" => dst.to_string())
                .set(self.ctx.mesh.depth(dst) as f64);
        }
    }

    /// Waits until every queued write has been committed and its effects
    /// sent.
    async fn pipeline_drained(&self) {
        loop {
            let mut idle = std::pin::pin!(self.pipeline_idle.notified());
            idle.as_mut().enable();
            if self.pipeline.borrow().is_empty() && !self.committing.get() {
                return;
            }
            idle.await;
        }
    }
}

/// Threads of a shard's blocking pool, which runs its store reads, password
/// hashes (at most one per core at once, see `Context::password_hashing`)
/// and other blocking calls. Reads are bounded per session; beyond this many
/// at once they queue. Each thread that has run holds its stack and its
/// allocator cache until it has been idle for 10 s.
const BLOCKING_THREADS: usize = 16;

/// Runs shard `id` on the current thread until shutdown completes.
pub fn run(
    id: ShardId,
    ctx: Arc<Context>,
    listeners: crate::ingress::Listeners,
    recovered: HashMap<u64, u64>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name(format!("chatd-shard-{id}-blocking"))
        .build()?;
    let local = tokio::task::LocalSet::new();
    let grace = Duration::from_millis(ctx.config.shutdown_grace_ms);
    let result = local.block_on(&runtime, async move {
        let shard = Rc::new(Shard::new(id, ctx.clone(), recovered));
        tokio::task::spawn_local(shard.clone().mesh_loop());
        tokio::task::spawn_local(shard.clone().commit_loop());
        tokio::task::spawn_local(shard.clone().cursor_flush_loop());
        tokio::task::spawn_local(shard.clone().presence_loop());
        let ingress = crate::ingress::start(&shard, listeners)?;
        let mut shutdown = ctx.shutdown.subscribe();
        let _ = shutdown.wait_for(|&s| s).await;
        ingress.stop_accepting();
        tracing::info!(
            shard = id,
            sessions = shard.sessions.borrow().len(),
            "draining"
        );
        let goaway = reply::push(pb::server_frame::Body::GoAway(pb::GoAway {
            code: ErrorCode::ShuttingDown as i32,
            message: "server shutting down".into(),
            reconnect_after_ms: 1000,
        }));
        let drained = async {
            shard.owner.borrow_mut().flush_cursors();
            shard.drive_owner();
            shard.pipeline_drained().await;
            shard.sessions.borrow().close_all(goaway);
            while !shard.sessions.borrow().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(shard = id, "shutdown grace period elapsed");
        }
        ingress.close().await;
        Ok::<(), std::io::Error>(())
    });
    runtime.shutdown_timeout(grace);
    result
}
