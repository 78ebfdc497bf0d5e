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
//!   in batches, the next one while the one before is being synced, and
//!   sends each batch's acks and fan-outs in order once it is durable;
//! - the accept loops of [`crate::ingress`] take connections until
//!   shutdown (the server's `run_shard` starts them beside the shard).
//!
//! This module's submodules are the shard's side of presence and push: they
//! move the outputs of the sans-IO [`crate::presence`] tables and the
//! [`crate::push`] queue between shards. Nothing below the shard (the
//! owner, presence, push, storage) knows the shard: the server's core is
//! free of import cycles, and only the session shell (ingress, transports,
//! connection, routes, http) still refers back and forth.

mod presence;
mod push;

use std::cell::RefCell;
use std::collections::VecDeque;

use hashbrown::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_protocol::{ConversationId, ErrorCode, Seq, UserId};
use tokio::sync::Notify;

use crate::accounts::Accounts;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::directory::Directory;
use crate::lifecycle::Lifecycle;
use crate::media::Media;
use crate::mesh::Mesh;
use crate::mesh::ShardId;
use crate::owner::{Effect, FoundKey, Loaded, Origin, Output, Owner, OwnerRequest, Pending};
use crate::placement::Placement;
use crate::push::Push;
use crate::reply::{self, Refusal};
use crate::session_table::SessionTable;
use crate::shard_msg::ShardMsg;
use crate::storage::writer::Batch;
use crate::storage::writer::Writer;
use crate::storage::{StorageError, Store};

/// What a shard is built from: the settings and the narrow, thread-safe
/// handles it shares with the other shards. Each handler gets only the
/// handle it needs (the catalog, the accounts, the store), never this.
#[derive(Debug, Clone)]
pub struct Handles {
    /// Settings.
    pub config: Arc<Config>,
    /// Where conversations, users and keys live among the shards.
    pub place: Placement,
    /// Shard-to-shard rings.
    pub mesh: Arc<Mesh<ShardMsg>>,
    /// Which shards may hold each user's sessions (fan-out targets).
    pub directory: Arc<Directory>,
    /// Read handle to the store (reads run on blocking threads).
    pub store: Store,
    /// Queue to the storage writer.
    pub writer: Writer,
    /// Registration, login, tokens and profiles.
    pub accounts: Accounts,
    /// Conversation creation, history, sync and the conversation list.
    pub catalog: Catalog,
    /// Media URL signing and files.
    pub media: Arc<Media>,
    /// Queue to the push thread.
    pub push: Push,
    /// Shutdown and storage failure.
    pub life: Lifecycle,
}

impl Handles {
    /// The handles over a started store, writer and push thread, for
    /// `config`'s shards; new user and conversation ids continue after
    /// `last_ids`.
    pub fn new(
        config: Config,
        store: Store,
        writer: Writer,
        media: Arc<Media>,
        push: Push,
        (last_user_id, last_conversation_id): (u64, u64),
    ) -> Self {
        let nr_shards = config.nr_shards();
        let place = match writer.cluster() {
            Some(link) => Placement::clustered(nr_shards, link.partitions()),
            None => Placement::new(nr_shards),
        };
        let mesh = Arc::new(Mesh::new(nr_shards, config.mesh_ring_capacity));
        let directory = Arc::new(Directory::new(nr_shards));
        if let Some(link) = writer.cluster() {
            link.attach(mesh.clone(), directory.clone(), place);
        }
        Self {
            place,
            mesh,
            directory,
            accounts: Accounts::new(&config, store.clone(), writer.clone(), last_user_id),
            catalog: Catalog::new(
                &config,
                store.clone(),
                writer.clone(),
                media.clone(),
                last_conversation_id,
            ),
            store,
            writer,
            media,
            push,
            life: Lifecycle::new(),
            config: Arc::new(config),
        }
    }
}

/// One shard's state: the handles it shares with the other shards, and
/// what it alone holds, each reached only from its thread: its sessions,
/// the conversations it owns with their commit pipeline, the presence of
/// the users it keeps, and its homes.
pub struct Shard {
    /// This shard's index.
    pub id: ShardId,
    /// What it shares with the other shards (settings, placement, mesh,
    /// store, writer, accounts, catalog, media, push, lifecycle).
    pub shared: Handles,
    /// Connected sessions.
    pub sessions: RefCell<SessionTable>,
    /// Connections accepted and not yet closed, counted at accept time (a
    /// session enters `sessions` only once its task runs, which a burst of
    /// accepts would outrun).
    pub connections: std::cell::Cell<usize>,
    /// Send rate per user with sessions on this shard.
    pub user_buckets: RefCell<HashMap<u64, crate::limits::TokenBucket>>,
    /// Conversations this shard owns (sans-IO; driven by `drive_owner`).
    pub owner: RefCell<Owner>,
    /// The owner's writes on their way to the storage writer.
    pipeline: Pipeline,
    /// Cluster mode: per partition, the epoch ([`crate::cluster::Link::epoch`])
    /// the owner's loaded conversations belong to.
    seen_epochs: RefCell<HashMap<u32, u64>>,
    /// Presence of the users this shard keeps.
    pub presence: RefCell<crate::presence::PresenceTable>,
    /// Which local sessions watch which users' presence.
    pub interest: RefCell<crate::presence::Interest>,
    /// This shard as the home of keyed writes and login counts.
    pub home: crate::home::Home,
    /// Metric handles of the per-message path.
    pub counters: crate::metrics::PerMessage,
}

/// A pipeline entry: the owner's writes and effects for one conversation
/// (0: effects only), with the time it was queued.
struct Entry {
    at: Instant,
    conversation: u64,
    /// Cluster mode: the partition's epoch the owner's state was loaded in
    /// ([`Shard::seen_epochs`]); the entry is dropped unwritten if the
    /// partition has changed hands since.
    epoch: u64,
    pending: Pending,
}

/// Batches a shard has handed to the storage writer and not yet settled,
/// at most: enough for what arrives during one sync to be queued behind
/// it, few enough that a slow disk pushes back on the shard soon. Before,
/// the shard waited for each batch's answer before handing over the next,
/// so what arrived meanwhile waited for that answer's trip back to the
/// shard and for its acks to be sent (benches/changes.md).
const COMMITS_IN_FLIGHT: usize = 4;

/// A batch handed to the storage writer, with what is to be done once it
/// is durable. A batch with no writes, or one the writer refused, gets an
/// answer at once, so that its effects still wait for those before it.
struct InFlight {
    done: tokio::sync::oneshot::Receiver<Result<u64, StorageError>>,
    effects: Vec<Effect>,
    queued_at: Vec<Instant>,
}

/// Entries waiting for the commit loop, in order.
struct Pipeline {
    /// With the time each entry was queued, for `chatd_write_ack_seconds`.
    entries: RefCell<VecDeque<Entry>>,
    /// An entry was queued.
    ready: Notify,
    /// The commit loop found nothing to commit.
    idle: Notify,
    /// A batch is being written.
    committing: std::cell::Cell<bool>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("id", &self.id).finish()
    }
}

impl Shard {
    fn new(id: ShardId, h: Handles, recovered: HashMap<u64, u64>) -> Self {
        let c = &h.config;
        let rules = crate::owner::Rules {
            max_message_bytes: c.max_message_bytes,
            max_group_members: c.max_group_members,
            push_preview: c.push_preview,
            push: h.push.clone(),
            media: h.media.clone(),
        };
        // Message id generators: one per shard of each node, 10 bits
        // (`cluster::validate` keeps (node + 1) × shards ≤ 1024).
        let generator = usize::from(c.node_number()) * h.place.nr_shards() + id;
        let owner = Owner::new(generator as u16, recovered, c.recent_messages, rules);
        Self {
            id,
            sessions: RefCell::new(SessionTable::new(id, h.directory.clone())),
            connections: std::cell::Cell::new(0),
            user_buckets: RefCell::new(HashMap::new()),
            owner: RefCell::new(owner),
            seen_epochs: RefCell::new(HashMap::new()),
            pipeline: Pipeline {
                entries: RefCell::new(VecDeque::new()),
                ready: Notify::new(),
                idle: Notify::new(),
                committing: std::cell::Cell::new(false),
            },
            presence: RefCell::new(crate::presence::PresenceTable::default()),
            interest: RefCell::new(crate::presence::Interest::default()),
            home: crate::home::Home::new(
                c.login_failures_per_username,
                c.login_failures_per_address,
                crate::config::cores() / h.place.nr_shards(),
            ),
            counters: crate::metrics::PerMessage::new(),
            shared: h,
        }
    }

    /// Builds shard `id` on the current thread's runtime and starts its
    /// loops (mesh, commit, cursor flush, presence); must run inside a
    /// `LocalSet`.
    pub fn start(id: ShardId, handles: Handles, recovered: HashMap<u64, u64>) -> Rc<Self> {
        let shard = Rc::new(Shard::new(id, handles, recovered));
        tokio::task::spawn_local(shard.clone().mesh_loop());
        tokio::task::spawn_local(shard.clone().commit_loop());
        tokio::task::spawn_local(shard.clone().cursor_flush_loop());
        tokio::task::spawn_local(shard.clone().presence_loop());
        shard
    }

    /// Drains the shard for shutdown: changed cursors and every queued
    /// write are committed and answered, then each session gets `goaway`
    /// and is closed once its queue is sent. The caller bounds the wait.
    pub async fn drain(self: &Rc<Self>, goaway: Bytes) {
        tracing::info!(
            shard = self.id,
            sessions = self.sessions.borrow().len(),
            "draining"
        );
        self.owner.borrow_mut().flush_cursors();
        self.drive_owner();
        self.pipeline_drained().await;
        self.sessions.borrow().close_all(goaway);
        while !self.sessions.borrow().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Queues writes and their effects for the commit loop: the writes of
    /// `conversation`, or of none (0).
    pub fn commit(&self, conversation: u64, pending: Pending) {
        let epoch = match self.shared.writer.cluster() {
            Some(link) if conversation != 0 => {
                let p = link.partition_of(ConversationId(conversation));
                self.seen_epochs.borrow().get(&p).copied().unwrap_or(0)
            }
            _ => 0,
        };
        self.pipeline.entries.borrow_mut().push_back(Entry {
            at: Instant::now(),
            conversation,
            epoch,
            pending,
        });
        self.pipeline.ready.notify_one();
    }

    /// Cluster mode: whether this node owns `req`'s conversation now. If
    /// not, the request is refused (to be retried where it lives); if the
    /// partition changed hands since the owner loaded its conversations,
    /// they are forgotten first.
    fn still_owned(&self, req: &OwnerRequest) -> bool {
        let Some(link) = self.shared.writer.cluster() else {
            return true;
        };
        let p = link.partition_of(req.conversation());
        if !link.owns(p) {
            let busy = crate::cluster::busy(
                req.origin.request_id,
                "this node no longer owns the conversation",
            );
            self.commit(
                0,
                Pending::effects(vec![crate::owner::Effect::Reply(req.origin, busy)]),
            );
            return false;
        }
        let epoch = link.epoch(p);
        let seen = self.seen_epochs.borrow().get(&p).copied();
        if seen != Some(epoch) {
            self.owner
                .borrow_mut()
                .forget(|c| link.partition_of(c) == p);
            self.seen_epochs.borrow_mut().insert(p, epoch);
        }
        true
    }

    /// Accepts a request for a conversation this shard owns.
    pub fn enqueue_owned(self: &Rc<Self>, req: OwnerRequest) {
        if !self.still_owned(&req) {
            self.drive_owner();
            return;
        }
        let now = self.shared.config.clock.now_ms();
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
                Output::Commit(conversation, pending) => self.commit(conversation, pending),
                Output::Load {
                    conversation,
                    recovered_seq,
                } => self.read_for_owner(
                    move |store| load(store, conversation, recovered_seq),
                    move |owner, now, loaded| owner.handle_loaded(now, conversation, loaded),
                ),
                Output::LookUp { conversation, keys } => self.read_for_owner(
                    move |store| look_up(store, conversation, keys),
                    move |owner, now, found| owner.handle_keys(now, conversation, found),
                ),
            }
        }
    }

    /// Runs `read` on the blocking pool (the owner never reads the store on
    /// the shard thread), hands its result to the owner with `answer`, and
    /// carries out what the owner does next.
    fn read_for_owner<T: Send + 'static>(
        self: &Rc<Self>,
        read: impl FnOnce(&Store) -> Result<T, Refusal> + Send + 'static,
        answer: impl FnOnce(&mut Owner, u64, Result<T, Refusal>) + 'static,
    ) {
        let shard = self.clone();
        tokio::task::spawn_local(async move {
            let result = shard.shared.store.off_thread(read).await;
            let now = shard.shared.config.clock.now_ms();
            answer(&mut shard.owner.borrow_mut(), now, result);
            shard.drive_owner();
        });
    }

    /// Routes a reply to the session that asked, returning the request's
    /// in-flight permit; `None` returns only the permit.
    pub async fn reply(&self, origin: Origin, frame: Option<Bytes>) {
        if origin.shard == self.id {
            self.sessions.borrow().answer(origin.session, frame);
        } else if let Some(link) = self
            .shared
            .writer
            .cluster()
            .filter(|l| l.is_forwarded(&origin))
        {
            link.answer_forwarded(origin, frame);
        } else {
            let msg = ShardMsg::Reply {
                session: origin.session,
                frame,
            };
            self.shared.mesh.send(self.id, origin.shard, msg).await;
        }
    }

    /// Closes every authenticated session of `user` on every shard, after
    /// `frame`, except session `spared` of this shard.
    pub async fn end_user(&self, user: u64, frame: Bytes, spared: Option<u64>) {
        if let Some(link) = self.shared.writer.cluster() {
            link.publish_end_user(user, frame.clone());
        }
        for dst in 0..self.shared.place.nr_shards() {
            if dst == self.id {
                self.sessions.borrow().close_user(user, &frame, spared);
            } else {
                let msg = ShardMsg::EndUser {
                    user,
                    frame: frame.clone(),
                };
                self.shared.mesh.send(self.id, dst, msg).await;
            }
        }
    }

    /// Pushes `frame` to every session of `users`, on the shards that may
    /// hold one ([`crate::directory`]).
    pub async fn fanout(&self, users: Arc<[u64]>, frame: Bytes, ephemeral: bool) {
        let targets = self.shared.directory.shards_of(&users);
        for dst in 0..self.shared.place.nr_shards() {
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
                self.shared.mesh.send(self.id, dst, msg).await;
            }
        }
    }

    /// Sends a conversation operation to the shard that owns it.
    pub async fn to_owner(self: &Rc<Self>, req: OwnerRequest) {
        let Some(req) = self.to_other_node(req) else {
            return;
        };
        let owner = self.shared.place.owner_of(req.conversation());
        if owner == self.id {
            self.enqueue_owned(req);
        } else {
            let msg = ShardMsg::Request(Box::new(req));
            self.shared.mesh.send(self.id, owner, msg).await;
        }
    }

    /// [`Shard::to_owner`] without waiting: gives the message back, with
    /// the owner, if the owner is another shard and the ring towards it is
    /// full.
    pub fn try_to_owner(
        self: &Rc<Self>,
        req: OwnerRequest,
    ) -> Result<(), (crate::mesh::ShardId, ShardMsg)> {
        let Some(req) = self.to_other_node(req) else {
            return Ok(());
        };
        let owner = self.shared.place.owner_of(req.conversation());
        if owner == self.id {
            self.enqueue_owned(req);
            Ok(())
        } else {
            let msg = ShardMsg::Request(Box::new(req));
            self.shared
                .mesh
                .try_send(self.id, owner, msg)
                .map_err(|msg| (owner, msg))
        }
    }

    /// Cluster mode: hands `req` to the cluster link unless this node owns
    /// its conversation now; gives it back if it does (or in single-node
    /// mode).
    fn to_other_node(&self, req: OwnerRequest) -> Option<OwnerRequest> {
        match self.shared.writer.cluster() {
            Some(link) if !link.direct(link.partition_of(req.conversation())) => {
                link.forward(req);
                None
            }
            _ => Some(req),
        }
    }

    /// Sends `msg` to shard `dst`, waiting for room in the ring.
    pub async fn send_to(&self, dst: crate::mesh::ShardId, msg: ShardMsg) {
        self.shared.mesh.send(self.id, dst, msg).await;
    }

    /// Sends `msg` to the home shard of `key` ([`crate::home`]), or
    /// handles it here if this is its home.
    pub async fn to_home(self: &Rc<Self>, key: &crate::home::Key, msg: ShardMsg) {
        let home = crate::home::home_of(key, self.shared.place.nr_shards());
        if home == self.id {
            self.handle_msg(msg);
        } else {
            self.shared.mesh.send(self.id, home, msg).await;
        }
    }

    fn handle_msg(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Request(req) => self.enqueue_owned(*req),
            ShardMsg::Routed(req) => {
                let conversation = req.conversation();
                self.enqueue_owned(*req);
                if let Some(link) = self.shared.writer.cluster() {
                    link.routed(conversation);
                }
            }
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
            ShardMsg::Unwatch(a, b) => self.unwatch_here(a, b),
            ShardMsg::Operator(job) => crate::routes::account::operator(self, job),
        }
    }

    async fn mesh_loop(self: Rc<Self>) {
        loop {
            let taken = self.shared.mesh.drain(self.id, |msg| self.handle_msg(msg));
            if taken == 0 {
                self.shared.mesh.readable(self.id).await;
            } else {
                // Let sessions and the commit loop run between turns.
                tokio::task::yield_now().await;
            }
        }
    }

    async fn commit_loop(self: Rc<Self>) {
        loop {
            let entries: Vec<Entry> = self.pipeline.entries.borrow_mut().drain(..).collect();
            if entries.is_empty() {
                self.pipeline.committing.set(false);
                self.pipeline.idle.notify_waiters();
                self.pipeline.ready.notified().await;
                continue;
            }
            self.pipeline.committing.set(true);
            match self.shared.writer.cluster().cloned() {
                None => self.commit_pipelined(entries).await,
                Some(link) => self.commit_clustered(&link, entries).await,
            }
        }
    }

    /// One node: `entries` and whatever is queued after them go to the
    /// storage writer as soon as they are staged, up to [`COMMITS_IN_FLIGHT`]
    /// batches ahead of the oldest one not yet durable, and are settled in
    /// the order they were queued. The writer commits in queue order, so a
    /// batch staged while another is being synced joins the very next
    /// commit instead of waiting for the one before it to be answered.
    /// Returns once nothing is queued or in flight.
    async fn commit_pipelined(&self, mut entries: Vec<Entry>) {
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(COMMITS_IN_FLIGHT);
        loop {
            if !entries.is_empty() {
                let (batch, effects, queued_at) = merge(std::mem::take(&mut entries));
                let done = if batch.is_empty() {
                    answered(Ok(0))
                } else {
                    match self.shared.writer.enqueue(batch).await {
                        Ok(done) => done,
                        Err(e) => answered(Err(e)),
                    }
                };
                in_flight.push_back(InFlight {
                    done,
                    effects,
                    queued_at,
                });
            }
            let room = in_flight.len() < COMMITS_IN_FLIGHT;
            let Some(front) = in_flight.front_mut() else {
                return;
            };
            tokio::select! {
                biased;
                result = &mut front.done => {
                    let result = result.unwrap_or(Err(StorageError::WriterStopped));
                    if let Some(done) = in_flight.pop_front() {
                        self.settle(result, done.effects, done.queued_at).await;
                    }
                }
                // More to stage while the oldest batch is synced.
                _ = self.pipeline.ready.notified(), if room => {}
            }
            if in_flight.len() < COMMITS_IN_FLIGHT {
                entries = self.pipeline.entries.borrow_mut().drain(..).collect();
            }
        }
    }

    /// Cluster mode: one stream write per partition (on the partition's
    /// subject, so that only its owner can write it), and one for writes
    /// that are no conversation's, all at once; then each group's effects,
    /// in order within the group. Entries staged in an earlier tenure of
    /// their partition are refused unwritten.
    async fn commit_clustered(&self, link: &Arc<crate::cluster::Link>, entries: Vec<Entry>) {
        let mut order: Vec<Option<u32>> = Vec::new();
        let mut groups: HashMap<Option<u32>, Vec<Entry>> = HashMap::new();
        let mut stale = Vec::new();
        for e in entries {
            let key = if e.conversation != 0 {
                let p = link.partition_of(ConversationId(e.conversation));
                if e.epoch != link.epoch(p) {
                    stale.push(e);
                    continue;
                }
                Some(p)
            } else {
                None
            };
            groups
                .entry(key)
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push(e);
        }
        let mut writes = Vec::with_capacity(order.len());
        let mut outcomes = Vec::with_capacity(order.len());
        for key in order {
            let Some(group) = groups.remove(&key) else {
                continue;
            };
            let (batch, effects, queued_at) = merge(group);
            let pushes: Vec<crate::cluster::wire::Push> = effects
                .iter()
                .filter_map(|e| match e {
                    Effect::Fanout(users, frame) => Some((users.clone(), frame.clone())),
                    _ => None,
                })
                .collect();
            let link = link.clone();
            writes.push(async move {
                if batch.is_empty() {
                    Ok(0)
                } else {
                    link.write(key, batch, pushes).await
                }
            });
            outcomes.push((effects, queued_at));
        }
        let results = futures_util::future::join_all(writes).await;
        for ((effects, queued_at), result) in outcomes.into_iter().zip(results) {
            self.settle(result, effects, queued_at).await;
        }
        for e in stale {
            self.settle(Err(StorageError::Moved), e.pending.effects, Vec::new())
                .await;
        }
    }

    /// Carries out `effects` once their writes are durable (`Ok`), or
    /// answers their requests with the failure.
    async fn settle(
        &self,
        result: Result<u64, StorageError>,
        effects: Vec<Effect>,
        queued_at: Vec<Instant>,
    ) {
        match result {
            Ok(_) => {
                let ack_latency = &self.counters.write_ack;
                let now = Instant::now();
                for at in queued_at {
                    ack_latency.record(now.saturating_duration_since(at).as_secs_f64());
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
                            if let Some(link) = self.shared.writer.cluster() {
                                link.publish_ephemeral(users.clone(), frame.clone());
                            }
                            self.fanout(users, frame, true).await;
                        }
                        Effect::Notify(users, notice) => self.notify_offline(&users, notice).await,
                    }
                }
            }
            Err(e) if e.is_passing() => {
                tracing::debug!(shard = self.id, cause = %e, "cluster write not taken");
                for effect in effects {
                    if let Effect::Reply(origin, _) | Effect::Release(origin) = effect {
                        let frame = crate::cluster::busy(
                            origin.request_id,
                            "the cluster did not take the write",
                        );
                        self.reply(origin, Some(frame)).await;
                    }
                }
            }
            Err(e) => {
                tracing::error!(shard = self.id, cause = %e, "commit failed");
                self.shared.life.fail();
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

    async fn cursor_flush_loop(self: Rc<Self>) {
        let mut tick = tokio::time::interval(crate::owner::CURSOR_FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = self.shared.config.clock.now_ms();
            self.owner.borrow_mut().handle_tick(now);
            self.drive_owner();
        }
    }

    /// Updates the gauges that are sampled rather than counted. The store's
    /// are read on the blocking pool: fjall holds the journal list's lock
    /// while it deletes journal files.
    pub async fn sample_gauges(&self) {
        metrics::gauge!("chatd_storage_queue_depth").set(self.shared.writer.queue_depth() as f64);
        if let Ok(g) = self
            .shared
            .store
            .off_thread(|store| Ok(store.gauges()))
            .await
        {
            metrics::gauge!("chatd_store_write_buffer_bytes").set(g.write_buffer_bytes as f64);
            metrics::gauge!("chatd_store_flushes_pending").set(g.flushes_pending as f64);
            metrics::gauge!("chatd_store_journal_files").set(g.journal_files as f64);
            metrics::gauge!("chatd_storage_unapplied_commits").set(g.unapplied_commits as f64);
        }
        for dst in 0..self.shared.place.nr_shards() {
            metrics::gauge!("chatd_mesh_queue_depth", "shard" => dst.to_string())
                .set(self.shared.mesh.depth(dst) as f64);
        }
    }

    /// Waits until every queued write has been committed and its effects
    /// sent.
    async fn pipeline_drained(&self) {
        loop {
            let mut idle = std::pin::pin!(self.pipeline.idle.notified());
            idle.as_mut().enable();
            if self.pipeline.entries.borrow().is_empty() && !self.pipeline.committing.get() {
                return;
            }
            idle.await;
        }
    }
}

/// The owner's `Output::Load`: a conversation as the store holds it, none
/// if it does not exist. `recovered_seq` is its last seq if the commit
/// log's recovery knows it.
fn load(
    store: &Store,
    conversation: ConversationId,
    recovered_seq: Option<Seq>,
) -> Result<Option<Loaded>, Refusal> {
    let conversation = conversation.get();
    let Some(record) = store.conversation(conversation)? else {
        return Ok(None);
    };
    let members = store.members(conversation)?;
    let last_seq = match recovered_seq {
        Some(s) => s.get(),
        None => store.last_seq(conversation)?,
    };
    // A direct conversation's pair may have blocked each other.
    let mut blocked_by = Vec::new();
    if let [(a, _), (b, _)] = members.as_slice() {
        if record.kind == chat_protocol::pb::ConversationKind::Direct as i32 {
            for (blocker, blocked) in [(*a, *b), (*b, *a)] {
                if store.blocked(blocker, blocked)? {
                    blocked_by.push(blocker);
                }
            }
        }
    }
    let banned = store.bans(conversation, crate::owner::BANS_MAX)?;
    Ok(Some(Loaded {
        record,
        members,
        last_seq,
        blocked_by,
        banned,
    }))
}

/// The owner's `Output::LookUp`: which of the idempotency `keys` (sender,
/// client_msg_id) of `conversation` the store holds.
fn look_up(
    store: &Store,
    conversation: ConversationId,
    keys: Vec<(UserId, String)>,
) -> Result<Vec<FoundKey>, Refusal> {
    let mut found = Vec::new();
    for (sender, cmid) in keys {
        if let Some(rec) = store.idempotency(conversation.get(), sender.get(), &cmid)? {
            found.push((sender, cmid, rec));
        }
    }
    Ok(found)
}

/// A commit's answer that is known already.
fn answered(
    result: Result<u64, StorageError>,
) -> tokio::sync::oneshot::Receiver<Result<u64, StorageError>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _ = tx.send(result);
    rx
}

/// The entries' writes as one batch, their effects in order, and the times
/// the entries with writes were queued.
fn merge(entries: Vec<Entry>) -> (Batch, Vec<Effect>, Vec<Instant>) {
    // Sized up front: growing a batch of a thousand writes by doubling
    // costs more in page faults than the writes themselves.
    let bytes = entries.iter().map(|e| e.pending.batch.encoded_len()).sum();
    let nr_effects = entries.iter().map(|e| e.pending.effects.len()).sum();
    let mut batch = Batch::with_capacity(bytes);
    let mut effects = Vec::with_capacity(nr_effects);
    let mut queued_at = Vec::with_capacity(entries.len());
    for e in entries {
        if !e.pending.batch.is_empty() {
            queued_at.push(e.at);
        }
        batch.extend(e.pending.batch);
        effects.extend(e.pending.effects);
    }
    (batch, effects, queued_at)
}
