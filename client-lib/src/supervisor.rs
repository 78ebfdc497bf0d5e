//! The connection's life: heartbeat, push processing, and reconnecting with
//! resume after a drop.
//!
//! One supervisor task per client waits for the current connection to end,
//! reports `Disconnected`, and (if reconnecting is on) dials again with
//! backoff, says Hello, resumes the session with the cursors, queues the
//! missed messages, publishes the connection and reports `Reconnected`.
//! Requests waiting for a connection then proceed; the ones that were in
//! flight are re-sent if that is safe (see `Inner::request_within`).

use std::sync::Arc;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backoff::{Backoff, go_away_delay};
use crate::connection::Conn;
use crate::error::Error;
use crate::events::Event;
use crate::inner::{Inner, Link};
use crate::lock;

/// Why a reconnect attempt failed.
enum Attempt {
    /// Try again after the backoff delay.
    Retry(Error),
    /// Stop reconnecting, for this reason.
    Fatal(String),
}

impl Inner {
    /// Takes the first connection into service and starts supervising it.
    pub(crate) fn start(self: &Arc<Self>, conn: Arc<Conn>, pushes: mpsc::Receiver<S>) {
        self.publish(&conn, pushes);
        tokio::spawn(self.clone().supervise(conn));
    }

    /// Makes `conn` the one requests use and starts its push and heartbeat
    /// tasks.
    fn publish(self: &Arc<Self>, conn: &Arc<Conn>, pushes: mpsc::Receiver<S>) {
        let published = self.link.send_if_modified(|l| {
            if matches!(l, Link::Closed) {
                false
            } else {
                *l = Link::Up(conn.clone());
                true
            }
        });
        if !published {
            conn.close("client closed");
            return;
        }
        tokio::spawn(self.clone().push_loop(pushes));
        tokio::spawn(heartbeat(conn.clone()));
    }

    async fn supervise(self: Arc<Self>, mut conn: Arc<Conn>) {
        loop {
            conn.closed().await;
            if self.is_closed() {
                return;
            }
            let reason = conn.reason();
            let going_away = conn.going_away();
            tracing::debug!(%reason, "disconnected");
            self.link.send_if_modified(|l| match l {
                Link::Up(c) if Arc::ptr_eq(c, &conn) => {
                    *l = Link::Connecting;
                    true
                }
                _ => false,
            });
            drop(conn);
            self.events
                .send(Event::Disconnected {
                    reason: reason.clone(),
                })
                .await;
            if !self.options.reconnect {
                self.finish(reason);
                return;
            }
            match self.reconnect(going_away).await {
                Some(next) => conn = next,
                None => return,
            }
            self.rewatch();
            self.events.send(Event::Reconnected).await;
        }
    }

    /// Presence subscriptions died with the old session: renew them (the
    /// current states follow as `Presence` events).
    fn rewatch(self: &Arc<Self>) {
        let users: Vec<u64> = lock(&self.watching).iter().copied().collect();
        if users.is_empty() || self.auth().is_none() {
            return;
        }
        let inner = self.clone();
        tokio::spawn(async move {
            let body = C::SubscribePresence(pb::SubscribePresence { user_ids: users });
            if let Err(e) = inner.request(body).await {
                tracing::debug!(cause = %e, "renewing presence subscriptions failed");
            }
        });
    }

    /// Dials until a connection is back in service; `None` if the client
    /// was closed or gave up.
    async fn reconnect(
        self: &Arc<Self>,
        going_away: Option<std::time::Duration>,
    ) -> Option<Arc<Conn>> {
        let mut backoff = Backoff::new(
            self.options.reconnect_min_delay,
            self.options.reconnect_max_delay,
        );
        let mut first = going_away
            .filter(|d| !d.is_zero())
            .map(|d| go_away_delay(d, rand::random()));
        loop {
            let delay = first
                .take()
                .unwrap_or_else(|| backoff.next_delay(rand::random()));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.closed_by_app() => return None,
            }
            match self.establish().await {
                Ok(conn) => return Some(conn),
                Err(Attempt::Retry(e)) => {
                    tracing::debug!(cause = %e, ?delay, "reconnect attempt failed");
                }
                Err(Attempt::Fatal(reason)) => {
                    tracing::debug!(%reason, "stopped reconnecting");
                    self.events
                        .send(Event::Disconnected {
                            reason: reason.clone(),
                        })
                        .await;
                    self.finish(reason);
                    return None;
                }
            }
            if self.is_closed() {
                return None;
            }
        }
    }

    /// One attempt: connect, Hello, and Resume if logged in.
    async fn establish(self: &Arc<Self>) -> Result<Arc<Conn>, Attempt> {
        let (conn, pushes) = match Conn::open(&self.endpoint, &self.options).await {
            Ok(opened) => opened,
            Err(Error::Server {
                code: ErrorCode::UnsupportedVersion,
                message,
                ..
            }) => {
                return Err(Attempt::Fatal(format!(
                    "server refused protocol version: {message}"
                )));
            }
            Err(e) => return Err(Attempt::Retry(e)),
        };
        let Some(auth) = self.auth() else {
            self.publish(&conn, pushes);
            return Ok(conn);
        };
        let mut pushes = Some(pushes);
        let resumed = self
            .resume_on(&conn, &auth.token, || {
                if let Some(pushes) = pushes.take() {
                    self.publish(&conn, pushes);
                }
            })
            .await;
        match resumed {
            Ok((_, open)) => {
                self.fetch_gaps(open);
                Ok(conn)
            }
            Err(Error::Server { code, message, .. })
                if !code.is_retryable() && !code.closes_connection() =>
            {
                // TOKEN_INVALID (expired or revoked) and the like: resuming
                // cannot succeed; the app must log in again.
                self.clear_auth();
                Err(Attempt::Fatal(format!(
                    "session could not be resumed: {code:?}: {message}"
                )))
            }
            Err(e) => {
                conn.close("resume failed");
                Err(Attempt::Retry(e))
            }
        }
    }

    /// Processes one connection's pushes, in arrival order.
    async fn push_loop(self: Arc<Self>, mut pushes: mpsc::Receiver<S>) {
        while let Some(push) = pushes.recv().await {
            match push {
                S::MessagePush(p) => {
                    if let Some(m) = p.message {
                        self.deliver(vec![m]).await;
                    }
                }
                S::MessageEdited(e) => {
                    if let Some(m) = e.message {
                        self.events.send(Event::MessageEdited(m)).await;
                    }
                }
                S::ReactionEvent(r) => {
                    self.events.send(Event::Reaction(r)).await;
                }
                S::ReceiptEvent(r) => {
                    self.events.send(Event::Receipt(r)).await;
                }
                // Ephemeral (`DESIGN.md`: shed first under pressure).
                S::TypingEvent(t) => self.events.try_send(Event::Typing(t)),
                S::PresenceEvent(p) => self.events.try_send(Event::Presence(p)),
                S::ConversationEvent(c) => {
                    self.events.send(Event::ConversationChanged(c)).await;
                }
                S::GoAway(g) => {
                    self.events.send(Event::GoAway(g)).await;
                }
                other => tracing::debug!(push = ?other, "unexpected push ignored"),
            }
        }
    }
}

/// Pings every heartbeat interval (`spec/states.md`: the server closes
/// sessions silent for 3 intervals) and closes a connection whose Pong does
/// not come back within two intervals: a half-open connection (a phone that
/// changed networks) is otherwise only noticed by the next write.
async fn heartbeat(conn: Arc<Conn>) {
    let interval = conn.heartbeat_interval();
    let mut nonce = 0u64;
    loop {
        tokio::select! {
            _ = conn.closed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        nonce += 1;
        let ping = C::Ping(pb::Ping { nonce });
        match conn.request(ping, Instant::now() + interval * 2).await {
            Ok(_) => {}
            Err(Error::Timeout) => {
                conn.close(format!("no Pong within {:?}", interval * 2));
                return;
            }
            Err(e) => {
                if conn.is_closed() {
                    return;
                }
                tracing::debug!(cause = %e, "ping refused");
            }
        }
    }
}
