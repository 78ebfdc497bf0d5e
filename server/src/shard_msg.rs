//! What shards send each other over the [`Mesh`](crate::mesh::Mesh):
//! values only. A leaf among the server's modules: it names the requests,
//! replies and pushes that cross shards, and nothing here reaches a shard,
//! the store or a socket.

use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::pb::PresenceStatus;

use crate::mesh::ShardId;
use crate::owner::OwnerRequest;

/// What travels between shards.
#[derive(Debug)]
pub enum ShardMsg {
    /// A conversation operation for the owner shard.
    Request(Box<OwnerRequest>),
    /// Cluster mode: one the cluster link routed to this node's owner
    /// shard ([`crate::cluster::Link::routed`] once taken).
    Routed(Box<OwnerRequest>),
    /// The owner's reply to a session's request.
    Reply {
        /// Session on the receiving shard.
        session: u64,
        /// Encoded ServerFrame; none for a request that gets no answer,
        /// whose in-flight permit is returned all the same.
        frame: Option<Bytes>,
    },
    /// A push for every session of these users on the receiving shard.
    Deliver {
        /// Recipients.
        users: Arc<[u64]>,
        /// Encoded ServerFrame (shared, encoded once).
        frame: Bytes,
        /// Typing or presence: dropped for sessions that are falling behind.
        ephemeral: bool,
    },
    /// A presence change for the user's presence shard.
    Presence(PresenceOp),
    /// Count a new session of a user whose presence the receiving shard
    /// keeps, unless the user has `max` already; the answer says whether
    /// it was counted (`Shard::admit_session`).
    AdmitSession {
        /// The user.
        user: u64,
        /// `max_sessions_per_user`.
        max: u32,
        /// Whether the session was counted.
        admitted: tokio::sync::oneshot::Sender<bool>,
    },
    /// Published presence states for the watching sessions of this shard.
    PresenceEvents(Vec<chat_protocol::pb::PresenceEvent>),
    /// Recipients of a message whose presence this shard keeps: notify
    /// those with no connected session.
    PushCheck {
        /// Users kept by the receiving shard.
        users: Vec<u64>,
        /// The notification.
        notice: Arc<crate::push::Notice>,
    },
    /// Blocking work for a key homed on the receiving shard
    /// ([`crate::home`]).
    Home(crate::home::Job),
    /// A failed-login count for a key homed on the receiving shard.
    Login(crate::home::LoginOp),
    /// Close every session of this user on the receiving shard with
    /// `frame` (Logout on all devices).
    EndUser {
        /// The user.
        user: u64,
        /// Encoded Error frame sent before the close.
        frame: Bytes,
    },
    /// One of these two users blocked the other: the receiving shard's
    /// sessions of each stop watching the other's presence.
    Unwatch(u64, u64),
    /// A command from the control socket ([`crate::control`]) for the
    /// receiving shard to run, as it runs a session's request.
    Operator(OperatorJob),
}

/// A control-socket command and where its answer goes.
#[derive(Debug)]
pub struct OperatorJob {
    /// The command.
    pub op: OperatorOp,
    /// The answer line (without `ok `) or the error. The control thread
    /// waits on it; a shard that stops drops it.
    pub answer: std::sync::mpsc::SyncSender<Result<String, String>>,
}

/// What the operator asks of a running server.
#[derive(Debug, Clone)]
pub enum OperatorOp {
    /// `disable-user` / `enable-user`: the account's logins are refused
    /// (or allowed again); disabling revokes its tokens and closes its
    /// sessions on every shard and node.
    SetDisabled {
        /// The account.
        username: String,
        /// Disable (true) or enable.
        disabled: bool,
    },
}

/// A presence change sent to a user's owner shard.
#[derive(Debug, Clone, Copy)]
pub enum PresenceOp {
    /// A session of `user` authenticated (+1) or ended (-1).
    Session {
        /// The user.
        user: u64,
        /// +1 or -1.
        delta: i32,
    },
    /// SetPresence.
    Status {
        /// The user.
        user: u64,
        /// The chosen status.
        status: PresenceStatus,
    },
    /// UpdateProfile changed last-seen visibility.
    Hide {
        /// The user.
        user: u64,
        /// Whether last seen is hidden.
        hide: bool,
    },
    /// Cluster mode: the user's state on another node, as that node last
    /// announced it; it holds for `ttl_ms` unless announced again.
    Remote {
        /// The user.
        user: u64,
        /// The announcing node.
        node: u16,
        /// The user's state there (offline: no session there).
        status: PresenceStatus,
        /// When the user's last session there ended (0: unknown).
        last_seen_ms: u64,
        /// How long the announcement holds.
        ttl_ms: u64,
    },
    /// A shard gained (`on`) or lost its first/last interested session.
    Subscribe {
        /// The watched user.
        user: u64,
        /// The watching shard.
        shard: ShardId,
        /// Gained or lost.
        on: bool,
    },
}

impl PresenceOp {
    pub(crate) fn user(&self) -> u64 {
        match *self {
            PresenceOp::Session { user, .. }
            | PresenceOp::Status { user, .. }
            | PresenceOp::Hide { user, .. }
            | PresenceOp::Remote { user, .. }
            | PresenceOp::Subscribe { user, .. } => user,
        }
    }
}
