//! The sessions of one shard: who is connected, as which user, and the
//! bounded queue of frames towards each.
//!
//! Owned by the shard thread alone (`RefCell`, no lock). Pushing never
//! waits: a session whose queue is full is closed as a slow consumer
//! (`spec/errors.md`, SLOW_CONSUMER) and catches up by syncing after it
//! reconnects, so one slow reader never holds up a fan-out or grows memory.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use hashbrown::HashMap;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::ErrorCode;
use tokio::sync::{Notify, Semaphore};

use crate::directory::{Directory, Local};
use crate::mesh::ShardId;
use crate::reply;

/// How a session ends.
#[derive(Debug, Clone)]
pub struct Close {
    /// Last frame written before closing (Error or GoAway), if any.
    pub frame: Option<Bytes>,
    /// Write what is already queued first (graceful), or drop it (the
    /// queue is the problem).
    pub flush_first: bool,
    /// Why, for transports that close with a code of their own (the
    /// WebSocket close code, the QUIC application error code).
    pub reason: CloseReason,
}

/// Why a session ends, as far as a transport's own close code can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer left, or the session ended without an error.
    Normal,
    /// The server is shutting down (GoAway was sent).
    GoingAway,
    /// The connection ends with this error (sent as the last frame).
    Error(ErrorCode),
    /// The peer sent data the transport does not carry (a WebSocket text
    /// message); an Error frame precedes the close.
    UnsupportedData,
}

/// One frame queued towards a session.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Encoded, length-prefixed ServerFrame (shared by every recipient).
    pub frame: Bytes,
    /// Typing or presence: may travel unreliably (a QUIC datagram).
    pub ephemeral: bool,
}

/// Tells a session's reader and writer tasks to stop.
#[derive(Debug, Default)]
pub struct CloseSignal {
    close: RefCell<Option<Close>>,
    notify: Notify,
}

impl CloseSignal {
    /// Asks the session to close; the first request wins.
    pub fn close(&self, close: Close) {
        let mut slot = self.close.borrow_mut();
        if slot.is_none() {
            *slot = Some(close);
            self.notify.notify_waiters();
        }
    }

    /// The close request, if one was made.
    pub fn get(&self) -> Option<Close> {
        self.close.borrow().clone()
    }

    /// Waits until the session is asked to close.
    pub async fn closed(&self) {
        loop {
            let mut notified = pin!(self.notify.notified());
            notified.as_mut().enable();
            if self.close.borrow().is_some() {
                return;
            }
            notified.await;
        }
    }
}

/// A session's outbound frames, in order, from the shard to its writer
/// task. Used on the shard thread only. It is bounded by [`enqueue`]
/// (`session_queue_frames`, `session_queue_bytes`) and holds no memory
/// while empty: the writer frees its storage whenever it drains it.
#[derive(Debug, Default)]
pub struct FrameQueue {
    frames: RefCell<VecDeque<Outbound>>,
    /// Wakes the writer when a frame is queued.
    ready: Notify,
    /// The writer is gone: frames queued now would never be taken.
    closed: Cell<bool>,
}

impl FrameQueue {
    fn len(&self) -> usize {
        self.frames.borrow().len()
    }

    /// Queues `frame`; false if the writer is gone.
    fn push(&self, frame: Outbound) -> bool {
        if self.closed.get() {
            return false;
        }
        self.frames.borrow_mut().push_back(frame);
        self.ready.notify_one();
        true
    }
}

/// The writer's end of a session's [`FrameQueue`]. Dropping it closes the
/// queue and drops what is left in it.
#[derive(Debug)]
pub struct FrameReceiver(Rc<SessionHandle>);

impl FrameReceiver {
    /// The session's close signal.
    pub fn signal(&self) -> &CloseSignal {
        &self.0.signal
    }

    /// The writer took `bytes` of queued frames off the queue.
    pub fn taken(&self, bytes: usize) {
        let queued = &self.0.queued_bytes;
        queued.set(queued.get().saturating_sub(bytes));
    }

    /// The next frame, if one is queued.
    pub fn try_recv(&self) -> Option<Outbound> {
        let mut frames = self.0.queue.frames.borrow_mut();
        let frame = frames.pop_front();
        if frames.is_empty() && frames.capacity() > 0 {
            *frames = VecDeque::new();
        }
        frame
    }

    /// Waits for the next frame. Cancel-safe: a frame is taken only when
    /// it is returned.
    pub async fn recv(&self) -> Outbound {
        loop {
            if let Some(frame) = self.try_recv() {
                return frame;
            }
            self.0.queue.ready.notified().await;
        }
    }
}

impl Drop for FrameReceiver {
    fn drop(&mut self) {
        self.0.queue.closed.set(true);
        *self.0.queue.frames.borrow_mut() = VecDeque::new();
    }
}

/// What the shard keeps per session: one allocation, shared by the
/// session's reader, its writer and the table.
#[derive(Debug)]
pub struct SessionHandle {
    user: Cell<Option<u64>>,
    queue: FrameQueue,
    max_frames: usize,
    /// Permits for requests being processed; a reply returns one.
    pub inflight: Semaphore,
    /// Permits for store-backed replies being built.
    pub reads: Semaphore,
    /// Bytes queued towards the socket; the writer subtracts what it takes.
    queued_bytes: Cell<usize>,
    max_bytes: usize,
    /// Closes the session.
    pub signal: CloseSignal,
}

/// Sessions of one shard.
#[derive(Debug)]
pub struct SessionTable {
    next_id: u64,
    sessions: HashMap<u64, Rc<SessionHandle>>,
    by_user: HashMap<u64, Vec<u64>>,
    /// Where fan-outs look for the shards with a user's sessions.
    directory: Arc<Directory>,
    /// This shard's part of `directory`.
    online: Local,
}

impl SessionTable {
    /// The sessions of `shard`, none yet.
    pub fn new(shard: ShardId, directory: Arc<Directory>) -> Self {
        Self {
            next_id: 0,
            sessions: HashMap::new(),
            by_user: HashMap::new(),
            directory,
            online: Local::new(shard),
        }
    }

    /// Registers a new connection, returning its id, its handle and the
    /// receiving end of its queue of at most `max_frames` frames and
    /// `max_bytes` bytes. `inflight` and `reads` are the session's permits
    /// for requests and for store-backed replies in progress.
    pub fn insert(
        &mut self,
        max_frames: usize,
        max_bytes: usize,
        inflight: usize,
        reads: usize,
    ) -> (u64, Rc<SessionHandle>, FrameReceiver) {
        self.next_id += 1;
        let handle = Rc::new(SessionHandle {
            user: Cell::new(None),
            queue: FrameQueue::default(),
            max_frames: max_frames.max(1),
            inflight: Semaphore::new(inflight),
            reads: Semaphore::new(reads),
            queued_bytes: Cell::new(0),
            max_bytes,
            signal: CloseSignal::default(),
        });
        self.sessions.insert(self.next_id, handle.clone());
        (self.next_id, handle.clone(), FrameReceiver(handle))
    }

    /// The session logged in as `user`: it now receives the user's pushes.
    pub fn authenticate(&mut self, id: u64, user: u64) {
        if let Some(s) = self.sessions.get(&id) {
            s.user.set(Some(user));
            let ids = self.by_user.entry(user).or_default();
            if ids.is_empty() {
                self.online.online(&self.directory, user);
            }
            ids.push(id);
        }
    }

    /// The session logged out.
    pub fn deauthenticate(&mut self, id: u64) {
        if let Some(user) = self.sessions.get(&id).and_then(|s| s.user.take()) {
            self.unindex(user, id);
        }
    }

    /// The connection is gone.
    pub fn remove(&mut self, id: u64) {
        if let Some(s) = self.sessions.remove(&id) {
            if let Some(user) = s.user.get() {
                self.unindex(user, id);
            }
        }
    }

    fn unindex(&mut self, user: u64, id: u64) {
        if let Some(list) = self.by_user.get_mut(&user) {
            list.retain(|&s| s != id);
            if list.is_empty() {
                self.by_user.remove(&user);
                self.online.offline(&self.directory, user);
            }
        }
    }

    /// Number of authenticated sessions of `user` on this shard.
    pub fn sessions_of(&self, user: u64) -> usize {
        self.by_user.get(&user).map_or(0, Vec::len)
    }

    /// Number of connected sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is connected.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Queues `frame` towards session `id`. A full queue closes the session.
    pub fn push(&self, id: u64, frame: Bytes) {
        if let Some(s) = self.sessions.get(&id) {
            enqueue(s, frame, false);
        }
    }

    /// Queues an ephemeral frame (presence, typing) towards session `id`,
    /// dropping it if the session's queue is more than half full.
    pub fn push_ephemeral(&self, id: u64, frame: Bytes) {
        if let Some(s) = self.sessions.get(&id) {
            if !s.half_full() {
                enqueue(s, frame, true);
            } else {
                metrics::counter!("chatd_ephemeral_shed_total").increment(1);
            }
        }
    }

    /// Queues the reply to a request of session `id` (none: the request
    /// gets no answer, such as Typing) and frees its in-flight permit.
    pub fn answer(&self, id: u64, frame: Option<Bytes>) {
        if let Some(s) = self.sessions.get(&id) {
            s.inflight.add_permits(1);
            if let Some(frame) = frame {
                enqueue(s, frame, false);
            }
        }
    }

    /// [`answer`](Self::answer) with a frame.
    pub fn reply(&self, id: u64, frame: Bytes) {
        self.answer(id, Some(frame));
    }

    /// [`answer`](Self::answer) without one: only frees the permit.
    pub fn release(&self, id: u64) {
        self.answer(id, None);
    }

    /// Queues `frame` to every session of every user in `users`. Ephemeral
    /// frames are dropped for a session whose queue is more than half full
    /// (shed first, `spec/README.md`); other frames close a session whose
    /// queue is full. Returns the number of sessions queued to.
    pub fn deliver(&self, users: &[u64], frame: &Bytes, ephemeral: bool) -> usize {
        let mut n = 0;
        for user in users {
            if let Some(ids) = self.by_user.get(user) {
                for id in ids {
                    let Some(s) = self.sessions.get(id) else {
                        continue;
                    };
                    if ephemeral && s.half_full() {
                        metrics::counter!("chatd_ephemeral_shed_total").increment(1);
                        continue;
                    }
                    enqueue(s, frame.clone(), ephemeral);
                    n += 1;
                }
            }
        }
        n
    }

    /// The authenticated sessions of `user` on this shard.
    pub fn ids_of(&self, user: u64) -> Vec<u64> {
        self.by_user
            .get(&user)
            .map(|ids| ids.to_vec())
            .unwrap_or_default()
    }

    /// Closes every session of `user` on this shard but `spared` gracefully
    /// with `frame` (Logout on all devices, ChangePassword).
    pub fn close_user(&self, user: u64, frame: &Bytes, spared: Option<u64>) {
        let Some(ids) = self.by_user.get(&user) else {
            return;
        };
        for &id in ids.iter().filter(|&&id| Some(id) != spared) {
            self.close_revoked(id, frame, None);
        }
    }

    /// Closes session `id` gracefully with `frame`: its token is revoked.
    /// With `user`, only while the session is still logged in as `user`.
    pub fn close_revoked(&self, id: u64, frame: &Bytes, user: Option<u64>) {
        let session = self.sessions.get(&id);
        if let Some(s) = session.filter(|s| user.is_none() || s.user.get() == user) {
            s.signal.close(Close {
                frame: Some(frame.clone()),
                flush_first: true,
                reason: CloseReason::Error(ErrorCode::TokenInvalid),
            });
        }
    }

    /// Closes every session gracefully with `frame` (GoAway).
    pub fn close_all(&self, frame: Bytes) {
        for s in self.sessions.values() {
            s.signal.close(Close {
                frame: Some(frame.clone()),
                flush_first: true,
                reason: CloseReason::GoingAway,
            });
        }
    }
}

impl SessionHandle {
    /// More than half of the frame or byte bound is used: shed ephemeral
    /// frames.
    fn half_full(&self) -> bool {
        self.queue.len() * 2 > self.max_frames || self.queued_bytes.get() * 2 > self.max_bytes
    }
}

fn enqueue(s: &SessionHandle, frame: Bytes, ephemeral: bool) {
    let len = frame.len();
    if s.queued_bytes.get() + len <= s.max_bytes && s.queue.len() < s.max_frames {
        if s.queue.push(Outbound { frame, ephemeral }) {
            s.queued_bytes.set(s.queued_bytes.get() + len);
        }
        return;
    }
    if s.signal.get().is_none() {
        metrics::counter!("chatd_slow_consumers_total").increment(1);
    }
    s.signal.close(Close {
        frame: Some(reply::error(
            0,
            ErrorCode::SlowConsumer,
            "outbound queue full; reconnect and sync",
        )),
        flush_first: false,
        reason: CloseReason::Error(ErrorCode::SlowConsumer),
    });
}
