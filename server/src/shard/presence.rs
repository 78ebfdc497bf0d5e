//! The shard's side of presence: it moves the outputs of the sans-IO
//! presence tables ([`crate::presence`]) between shards, sessions and the
//! store.

use std::rc::Rc;

use chat_protocol::UserId;
use chat_protocol::pb::{self, server_frame::Body};

use super::Shard;
use crate::mesh::ShardId;
use crate::owner::Pending;
use crate::presence::{PRESENCE_COALESCE, PresenceOp};
use crate::reply;
use crate::shard_msg::ShardMsg;
use crate::storage::writer::Batch;

impl Shard {
    /// Sends a presence op to the shard keeping `user`'s presence.
    pub async fn presence_op(self: &Rc<Self>, op: PresenceOp) {
        let owner = self.shared.place.presence_of(UserId(op.user()));
        if owner == self.id {
            self.apply_presence(op);
        } else {
            self.shared
                .mesh
                .send(self.id, owner, ShardMsg::Presence(op))
                .await;
        }
    }

    /// Counts a new session of `user`, on the shard that keeps the user's
    /// presence, unless the user already has `max` (0: no limit); whether
    /// it was counted. The one count of a user's sessions across shards,
    /// kept by one shard: no lock is shared.
    pub async fn admit_session(self: &Rc<Self>, user: u64, max: u32) -> bool {
        let keeper = self.shared.place.presence_of(UserId(user));
        if keeper == self.id {
            return self.admit_here(user, max);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = ShardMsg::AdmitSession {
            user,
            max,
            admitted: tx,
        };
        self.shared.mesh.send(self.id, keeper, msg).await;
        // Dropped only when the keeping shard is shutting down.
        rx.await.unwrap_or(false)
    }

    /// [`admit_session`](Self::admit_session) on the keeping shard.
    pub fn admit_here(self: &Rc<Self>, user: u64, max: u32) -> bool {
        if max > 0 && self.presence.borrow().sessions(user) >= max {
            return false;
        }
        self.apply_presence(PresenceOp::Session { user, delta: 1 });
        true
    }

    /// Owner side: applies an op; never waits.
    pub fn apply_presence(self: &Rc<Self>, op: PresenceOp) {
        let now = self.shared.config.clock.now_ms();
        let applied = self.presence.borrow_mut().apply(op, now);
        if applied.load {
            let shard = self.clone();
            let user = op.user();
            tokio::task::spawn_local(async move {
                let found = shard.shared.store.off_thread(move |store| {
                    let last_seen = store.last_seen(user)?;
                    let hide = store.user(user)?.is_some_and(|u| u.hide_last_seen);
                    Ok((last_seen, hide))
                });
                // A failed read shows the user as never seen rather than
                // leaving its watchers without a state.
                let (last_seen, hide) = found.await.unwrap_or((0, false));
                let owed = shard.presence.borrow_mut().loaded(user, last_seen, hide);
                for (dst, event) in owed {
                    shard.publish_presence(dst, vec![event]).await;
                }
            });
        }
        if let Some(at) = applied.went_offline_at {
            let mut batch = Batch::new();
            batch.put_last_seen(op.user(), at);
            self.commit(
                0,
                Pending {
                    batch,
                    effects: Vec::new(),
                },
            );
        }
        if let Some((shard, event)) = applied.initial {
            let this = self.clone();
            tokio::task::spawn_local(async move {
                this.publish_presence(shard, vec![event]).await;
            });
        }
    }

    async fn publish_presence(&self, dst: ShardId, events: Vec<pb::PresenceEvent>) {
        if dst == self.id {
            self.deliver_presence(&events);
        } else {
            self.shared
                .mesh
                .send(self.id, dst, ShardMsg::PresenceEvents(events))
                .await;
        }
    }

    /// One of `a` and `b` blocked the other: their sessions on every shard
    /// of every node stop watching each other's presence.
    pub async fn unwatch_pair(self: &Rc<Self>, a: u64, b: u64) {
        if let Some(link) = self.shared.writer.cluster() {
            link.publish_unwatch(a, b);
        }
        for dst in 0..self.shared.place.nr_shards() {
            if dst == self.id {
                self.unwatch_here(a, b);
            } else {
                self.shared
                    .mesh
                    .send(self.id, dst, ShardMsg::Unwatch(a, b))
                    .await;
            }
        }
    }

    /// [`Shard::unwatch_pair`] for this shard's sessions.
    pub fn unwatch_here(self: &Rc<Self>, a: u64, b: u64) {
        let mut last = Vec::new();
        {
            let sessions = self.sessions.borrow();
            let mut interest = self.interest.borrow_mut();
            for (watcher, watched) in [(a, b), (b, a)] {
                for session in sessions.ids_of(watcher) {
                    if interest.remove(session, watched) {
                        last.push(watched);
                    }
                }
            }
        }
        if last.is_empty() {
            return;
        }
        let shard = self.clone();
        tokio::task::spawn_local(async move {
            for user in last {
                let op = PresenceOp::Subscribe {
                    user,
                    shard: shard.id,
                    on: false,
                };
                shard.presence_op(op).await;
            }
        });
    }

    /// Subscriber side: pushes published states to the watching sessions.
    pub fn deliver_presence(&self, events: &[pb::PresenceEvent]) {
        let mut interest = self.interest.borrow_mut();
        let sessions = self.sessions.borrow();
        for event in events {
            let frame = reply::push(Body::PresenceEvent(*event));
            for session in interest.update(event) {
                sessions.push_ephemeral(session, frame.clone());
            }
        }
    }

    /// Publishes coalesced changes every [`PRESENCE_COALESCE`].
    /// In cluster mode it also announces this node's changes to the other
    /// nodes, announces every user online here again each heartbeat
    /// interval, and forgets other nodes' announcements older than the
    /// heartbeat TTL (three intervals).
    pub(crate) async fn presence_loop(self: Rc<Self>) {
        let mut tick = tokio::time::interval(PRESENCE_COALESCE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let interval = u64::from(self.shared.config.heartbeat_interval_ms).max(100);
        let refresh_every = (interval / PRESENCE_COALESCE.as_millis() as u64).max(1);
        let ttl_ms = self.shared.config.idle_timeout().as_millis() as u64;
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            ticks += 1;
            if let Some(link) = self.shared.writer.cluster() {
                let mut table = self.presence.borrow_mut();
                let mut states = table.take_announcements();
                if ticks % refresh_every == 0 {
                    states.extend(table.online_here());
                    table.expire_remote(self.shared.config.clock.now_ms());
                }
                drop(table);
                if !states.is_empty() {
                    link.publish_presence(&states, ttl_ms);
                }
            }
            let changes = self.presence.borrow_mut().take_changes();
            for (dst, events) in changes {
                self.publish_presence(dst, events).await;
            }
        }
    }
}
