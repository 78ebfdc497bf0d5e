//! Presence: online / away / busy / offline and last seen, sharded by user.
//!
//! Each user's presence is kept by one shard, `Placement::presence_of`.
//! Sessions report to it when they authenticate and when they end (a
//! session that stops heartbeating is closed after 3 heartbeat intervals,
//! so its user goes offline within that TTL). The state is interest-based:
//! a session subscribes to the users it shows, its shard keeps the local
//! list of interested sessions and registers once per watched user with the
//! owner, and the owner publishes changes only to shards that registered.
//! Changes are coalesced for [`PRESENCE_COALESCE`] (a flapping connection
//! costs one event per interval, not one per flap) and delivered as
//! ephemeral frames, which are shed first under pressure.
//!
//! [`PresenceTable`] (owner side) and [`Interest`] (subscriber side) are
//! sans-IO; `shard/presence.rs` moves their outputs around.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::mesh::ShardId;
use chat_protocol::pb::{self, PresenceStatus};

/// Presence changes are gathered this long before they are published.
pub const PRESENCE_COALESCE: Duration = Duration::from_millis(100);

/// Users one session may watch at once.
pub const MAX_PRESENCE_SUBSCRIPTIONS: usize = 1_000;

pub use crate::shard_msg::PresenceOp;

#[derive(Debug)]
struct UserPresence {
    sessions: u32,
    manual: PresenceStatus,
    last_seen_ms: u64,
    hide_last_seen: bool,
    /// Watching shards, with how many times each registered.
    subscribers: HashMap<ShardId, u32>,
    /// What subscribers last heard.
    published: Option<(i32, u64)>,
    /// Last seen and visibility are being read from the store: nothing is
    /// published yet, since it would show "never seen".
    loading: bool,
    /// Shards that subscribed while loading, owed their first state.
    awaiting: Vec<ShardId>,
    /// Cluster mode: the user's state on other nodes where it is not
    /// offline, with when each announcement runs out.
    remote: Vec<Remote>,
}

/// A user's state on another node ([`PresenceOp::Remote`]).
#[derive(Debug, Clone, Copy)]
struct Remote {
    node: u16,
    status: PresenceStatus,
    expires_ms: u64,
}

impl UserPresence {
    fn new() -> Self {
        Self {
            sessions: 0,
            manual: PresenceStatus::Online,
            last_seen_ms: 0,
            hide_last_seen: false,
            subscribers: HashMap::new(),
            published: None,
            loading: true,
            awaiting: Vec::new(),
            remote: Vec::new(),
        }
    }

    /// The user's state on this node alone.
    fn local_status(&self) -> PresenceStatus {
        if self.sessions > 0 && self.manual != PresenceStatus::Offline {
            self.manual
        } else {
            PresenceStatus::Offline
        }
    }

    fn event(&self, user: u64) -> pb::PresenceEvent {
        // This node's state first; else another node's (cluster mode).
        let status = match self.local_status() {
            PresenceStatus::Offline => self
                .remote
                .first()
                .map_or(PresenceStatus::Offline, |r| r.status),
            local => local,
        };
        let online = status != PresenceStatus::Offline;
        let last_seen_ms = if online || self.hide_last_seen {
            0
        } else {
            self.last_seen_ms
        };
        pb::PresenceEvent {
            user_id: user,
            status: status as i32,
            last_seen_ms,
        }
    }
}

/// Owner-side presence of the users a shard keeps.
#[derive(Debug, Default)]
pub struct PresenceTable {
    users: HashMap<u64, UserPresence>,
    changed: HashSet<u64>,
    /// Cluster mode: users whose state on this node changed, to announce
    /// to the other nodes.
    announce: HashSet<u64>,
}

/// What applying an op asks the caller to do.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    /// First sight of this user: load its last seen and visibility.
    pub load: bool,
    /// The user's last session ended at this time: persist it.
    pub went_offline_at: Option<u64>,
    /// Send this current state to the shard that just subscribed (once the
    /// user is loaded: until then [`PresenceTable::loaded`] returns it).
    pub initial: Option<(ShardId, pb::PresenceEvent)>,
}

impl PresenceTable {
    /// Sessions of `user` counted here (on every shard).
    pub fn sessions(&self, user: u64) -> u32 {
        self.users.get(&user).map_or(0, |u| u.sessions)
    }

    /// Applies one op at time `now_ms`.
    pub fn apply(&mut self, op: PresenceOp, now_ms: u64) -> Applied {
        let user = op.user();
        let mut out = Applied::default();
        let entry = self.users.entry(user).or_insert_with(|| {
            out.load = true;
            UserPresence::new()
        });
        let before = entry.local_status();
        match op {
            PresenceOp::Remote {
                node,
                status,
                last_seen_ms,
                ttl_ms,
                ..
            } => {
                entry.last_seen_ms = entry.last_seen_ms.max(last_seen_ms);
                entry.remote.retain(|r| r.node != node);
                if status != PresenceStatus::Offline {
                    entry.remote.push(Remote {
                        node,
                        status,
                        expires_ms: now_ms.saturating_add(ttl_ms),
                    });
                }
            }
            PresenceOp::Session { delta, .. } => {
                if delta > 0 {
                    entry.sessions += 1;
                } else if entry.sessions > 0 {
                    entry.sessions -= 1;
                    if entry.sessions == 0 {
                        entry.last_seen_ms = now_ms;
                        entry.manual = PresenceStatus::Online;
                        out.went_offline_at = Some(now_ms);
                    }
                }
            }
            PresenceOp::Status { status, .. } => {
                entry.manual = match status {
                    PresenceStatus::Unspecified => PresenceStatus::Online,
                    s => s,
                };
            }
            PresenceOp::Hide { hide, .. } => entry.hide_last_seen = hide,
            PresenceOp::Subscribe { shard, on, .. } => {
                let count = entry.subscribers.entry(shard).or_insert(0);
                if on {
                    *count += 1;
                    if entry.loading {
                        entry.awaiting.push(shard);
                    } else {
                        out.initial = Some((shard, entry.event(user)));
                    }
                } else {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        entry.subscribers.remove(&shard);
                    }
                }
            }
        }
        if entry.local_status() != before {
            self.announce.insert(user);
        }
        self.changed.insert(user);
        out
    }

    /// Cluster mode: the users whose state on this node changed since the
    /// last call, with that state and their last seen.
    pub fn take_announcements(&mut self) -> Vec<(u64, PresenceStatus, u64)> {
        let users = std::mem::take(&mut self.announce);
        users
            .into_iter()
            .map(|u| match self.users.get(&u) {
                Some(e) => (u, e.local_status(), e.last_seen_ms),
                None => (u, PresenceStatus::Offline, 0),
            })
            .collect()
    }

    /// Cluster mode: every user with a session on this node and the state
    /// shown, announced again so that other nodes keep it.
    pub fn online_here(&self) -> Vec<(u64, PresenceStatus, u64)> {
        self.users
            .iter()
            .filter(|(_, e)| e.local_status() != PresenceStatus::Offline)
            .map(|(&u, e)| (u, e.local_status(), e.last_seen_ms))
            .collect()
    }

    /// Cluster mode: forgets other nodes' announcements that ran out by
    /// `now_ms` (a node that died stops announcing).
    pub fn expire_remote(&mut self, now_ms: u64) {
        for (&user, e) in self.users.iter_mut() {
            let before = e.remote.len();
            e.remote.retain(|r| r.expires_ms > now_ms);
            if e.remote.len() != before {
                self.changed.insert(user);
            }
        }
    }

    /// Whether `user` has a connected session (whatever status it shows).
    pub fn connected(&self, user: u64) -> bool {
        // In cluster mode, a session on another node counts too.
        self.users
            .get(&user)
            .is_some_and(|e| e.sessions > 0 || !e.remote.is_empty())
    }

    /// Fills in what the store knows of a user seen for the first time;
    /// returns the first state owed to each shard that subscribed
    /// meanwhile.
    pub fn loaded(
        &mut self,
        user: u64,
        last_seen_ms: u64,
        hide_last_seen: bool,
    ) -> Vec<(ShardId, pb::PresenceEvent)> {
        let Some(e) = self.users.get_mut(&user) else {
            return Vec::new();
        };
        e.last_seen_ms = e.last_seen_ms.max(last_seen_ms);
        e.hide_last_seen = hide_last_seen;
        e.loading = false;
        self.changed.insert(user);
        let event = e.event(user);
        std::mem::take(&mut e.awaiting)
            .into_iter()
            .map(|shard| (shard, event))
            .collect()
    }

    /// The coalesced changes since the last call, per watching shard.
    /// Forgets users nobody watches and nobody is connected as.
    pub fn take_changes(&mut self) -> HashMap<ShardId, Vec<pb::PresenceEvent>> {
        let mut out: HashMap<ShardId, Vec<pb::PresenceEvent>> = HashMap::new();
        let mut still_loading = Vec::new();
        for user in std::mem::take(&mut self.changed) {
            let Some(e) = self.users.get_mut(&user) else {
                continue;
            };
            if e.loading {
                still_loading.push(user);
                continue;
            }
            let event = e.event(user);
            let state = (event.status, event.last_seen_ms);
            if e.published != Some(state) {
                e.published = Some(state);
                for &shard in e.subscribers.keys() {
                    out.entry(shard).or_default().push(event);
                }
            }
            if e.sessions == 0 && e.subscribers.is_empty() && e.remote.is_empty() {
                self.users.remove(&user);
            }
        }
        self.changed.extend(still_loading);
        out
    }
}

/// Subscriber side: which local sessions watch which users.
#[derive(Debug, Default)]
pub struct Interest {
    users: HashMap<u64, (HashSet<u64>, Option<pb::PresenceEvent>)>,
    by_session: HashMap<u64, HashSet<u64>>,
}

impl Interest {
    /// `session` watches `user`. Returns whether this shard must register
    /// with the owner (first local watcher) and the cached state, if any.
    pub fn add(&mut self, session: u64, user: u64) -> (bool, Option<pb::PresenceEvent>) {
        let watched = self.by_session.entry(session).or_default();
        if !watched.insert(user) {
            let cached = self.users.get(&user).and_then(|(_, e)| *e);
            return (false, cached);
        }
        let entry = self.users.entry(user).or_default();
        let first = entry.0.is_empty();
        entry.0.insert(session);
        (first, entry.1)
    }

    /// Number of users `session` watches.
    pub fn count(&self, session: u64) -> usize {
        self.by_session.get(&session).map_or(0, HashSet::len)
    }

    /// `session` stops watching `user`. Returns whether this shard must
    /// deregister (last local watcher gone).
    pub fn remove(&mut self, session: u64, user: u64) -> bool {
        let Some(watched) = self.by_session.get_mut(&session) else {
            return false;
        };
        if !watched.remove(&user) {
            return false;
        }
        if watched.is_empty() {
            self.by_session.remove(&session);
        }
        match self.users.get_mut(&user) {
            Some(entry) => {
                entry.0.remove(&session);
                if entry.0.is_empty() {
                    self.users.remove(&user);
                    return true;
                }
                false
            }
            None => false,
        }
    }

    /// The session ended: the users whose last local watcher it was.
    pub fn remove_session(&mut self, session: u64) -> Vec<u64> {
        let watched: Vec<u64> = self
            .by_session
            .get(&session)
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default();
        watched
            .into_iter()
            .filter(|&u| self.remove(session, u))
            .collect()
    }

    /// A published state: cache it and return the sessions to tell; none
    /// if they heard this very state already (a shard's first state and the
    /// next publication can carry the same).
    pub fn update(&mut self, event: &pb::PresenceEvent) -> Vec<u64> {
        match self.users.get_mut(&event.user_id) {
            Some(entry) if entry.1 != Some(*event) => {
                entry.1 = Some(*event);
                entry.0.iter().copied().collect()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(t: &mut PresenceTable, shard: ShardId) -> Vec<(i32, u64)> {
        t.take_changes()
            .remove(&shard)
            .unwrap_or_default()
            .iter()
            .map(|e| (e.status, e.last_seen_ms))
            .collect()
    }

    const ONLINE: i32 = PresenceStatus::Online as i32;
    const OFFLINE: i32 = PresenceStatus::Offline as i32;

    #[test]
    fn another_nodes_announcement_shows_until_it_runs_out() {
        let mut t = PresenceTable::default();
        t.apply(
            PresenceOp::Subscribe {
                user: 1,
                shard: 0,
                on: true,
            },
            0,
        );
        t.loaded(1, 0, false);
        t.take_changes();
        let remote = |status, at| PresenceOp::Remote {
            user: 1,
            node: 2,
            status,
            last_seen_ms: at,
            ttl_ms: 3000,
        };
        t.apply(remote(PresenceStatus::Busy, 0), 1000);
        assert_eq!(status(&mut t, 0), vec![(PresenceStatus::Busy as i32, 0)]);
        assert!(t.connected(1));
        assert!(
            t.take_announcements().is_empty(),
            "nothing changed on this node to announce"
        );
        // Announced again before it runs out: it holds.
        t.apply(remote(PresenceStatus::Busy, 0), 3500);
        t.expire_remote(5000);
        assert_eq!(status(&mut t, 0), vec![]);
        // The node stops announcing (it died): offline once it runs out.
        t.expire_remote(6600);
        assert_eq!(status(&mut t, 0), vec![(OFFLINE, 0)]);
        assert!(!t.connected(1));
        // A session here wins over nothing elsewhere, and is announced.
        t.apply(PresenceOp::Session { user: 1, delta: 1 }, 7000);
        assert_eq!(t.take_announcements(), vec![(1, PresenceStatus::Online, 0)]);
        assert_eq!(status(&mut t, 0), vec![(ONLINE, 0)]);
        // Gone offline elsewhere at 6000: last seen is the latest known.
        t.apply(PresenceOp::Session { user: 1, delta: -1 }, 8000);
        t.apply(remote(PresenceStatus::Offline, 9000), 9100);
        assert_eq!(status(&mut t, 0), vec![(OFFLINE, 9000)]);
    }

    #[test]
    fn online_while_any_device_is_connected() {
        let mut t = PresenceTable::default();
        let sub = PresenceOp::Subscribe {
            user: 1,
            shard: 0,
            on: true,
        };
        assert_eq!(t.apply(sub, 0).initial, None, "not before it is loaded");
        let owed = t.loaded(1, 0, false);
        assert_eq!(
            owed.iter().map(|(s, e)| (*s, e.status)).collect::<Vec<_>>(),
            vec![(0, OFFLINE)]
        );
        t.take_changes();
        t.apply(PresenceOp::Session { user: 1, delta: 1 }, 10);
        t.apply(PresenceOp::Session { user: 1, delta: 1 }, 11);
        assert_eq!(status(&mut t, 0), vec![(ONLINE, 0)]);
        t.apply(PresenceOp::Session { user: 1, delta: -1 }, 20);
        assert_eq!(
            status(&mut t, 0),
            vec![],
            "still online on the other device"
        );
        let applied = t.apply(PresenceOp::Session { user: 1, delta: -1 }, 30);
        assert_eq!(applied.went_offline_at, Some(30));
        assert_eq!(status(&mut t, 0), vec![(OFFLINE, 30)]);
    }

    #[test]
    fn changes_within_an_interval_are_coalesced_and_hidden_last_seen_is_zero() {
        let mut t = PresenceTable::default();
        t.apply(
            PresenceOp::Subscribe {
                user: 1,
                shard: 3,
                on: true,
            },
            0,
        );
        t.loaded(1, 0, false);
        t.take_changes();
        for i in 0..10 {
            t.apply(PresenceOp::Session { user: 1, delta: 1 }, i);
            t.apply(PresenceOp::Session { user: 1, delta: -1 }, i);
        }
        assert_eq!(
            status(&mut t, 3),
            vec![(OFFLINE, 9)],
            "one event for ten flaps"
        );
        t.apply(
            PresenceOp::Hide {
                user: 1,
                hide: true,
            },
            10,
        );
        assert_eq!(status(&mut t, 3), vec![(OFFLINE, 0)], "last seen hidden");
        t.apply(PresenceOp::Session { user: 1, delta: 1 }, 11);
        t.apply(
            PresenceOp::Status {
                user: 1,
                status: PresenceStatus::Busy,
            },
            12,
        );
        assert_eq!(status(&mut t, 3), vec![(PresenceStatus::Busy as i32, 0)]);
        t.apply(
            PresenceOp::Status {
                user: 1,
                status: PresenceStatus::Offline,
            },
            13,
        );
        assert_eq!(status(&mut t, 3), vec![(OFFLINE, 0)], "appear offline");
    }

    #[test]
    fn only_subscribed_shards_hear_and_idle_entries_are_forgotten() {
        let mut t = PresenceTable::default();
        t.apply(PresenceOp::Session { user: 7, delta: 1 }, 0);
        t.loaded(7, 0, false);
        assert!(t.take_changes().is_empty(), "nobody watches user 7");
        t.apply(PresenceOp::Session { user: 7, delta: -1 }, 1);
        t.take_changes();
        assert!(t.users.is_empty());
    }

    #[test]
    fn a_shard_subscribing_while_the_user_loads_gets_one_state_with_the_stored_last_seen() {
        let mut t = PresenceTable::default();
        let sub = |shard| PresenceOp::Subscribe {
            user: 5,
            shard,
            on: true,
        };
        assert_eq!(t.apply(sub(0), 0).initial, None);
        assert_eq!(t.apply(sub(1), 0).initial, None);
        assert!(t.take_changes().is_empty(), "nothing while loading");
        let owed = t.loaded(5, 1234, false);
        let states: Vec<_> = owed
            .iter()
            .map(|(s, e)| (*s, e.status, e.last_seen_ms))
            .collect();
        assert_eq!(states, vec![(0, OFFLINE, 1234), (1, OFFLINE, 1234)]);
        // The owner publishes the loaded state too; the subscriber side
        // tells its sessions only once.
        let mut i = Interest::default();
        i.add(10, 5);
        let (_, first) = owed[0];
        assert_eq!(i.update(&first), vec![10]);
        for event in t.take_changes().remove(&0).unwrap_or_default() {
            assert_eq!(i.update(&event), Vec::<u64>::new(), "{event:?} again");
        }
        let later = t.apply(sub(2), 1).initial.map(|(s, e)| (s, e.last_seen_ms));
        assert_eq!(later, Some((2, 1234)), "loaded: at once");
    }

    #[test]
    fn interest_registers_once_per_shard() {
        let mut i = Interest::default();
        assert_eq!(i.add(1, 9), (true, None));
        assert_eq!(i.add(2, 9), (false, None));
        let event = pb::PresenceEvent {
            user_id: 9,
            status: ONLINE,
            last_seen_ms: 0,
        };
        let mut told = i.update(&event);
        told.sort_unstable();
        assert_eq!(told, vec![1, 2]);
        assert_eq!(i.add(3, 9), (false, Some(event)));
        assert!(!i.remove(1, 9));
        assert_eq!(i.remove_session(2), Vec::<u64>::new());
        assert_eq!(i.remove_session(3), vec![9]);
    }
}
