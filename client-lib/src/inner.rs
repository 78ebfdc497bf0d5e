//! State shared by the `Client` handles and the background tasks, and the
//! routing of requests to the current connection.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connection::Conn;
use crate::cursors::Cursors;
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::lock;
use crate::options::ClientOptions;
use crate::url::Endpoint;

/// Where requests go.
#[derive(Debug)]
pub(crate) enum Link {
    /// Reconnecting; requests wait (within their timeout).
    Connecting,
    /// Connected (and resumed, if logged in).
    Up(Arc<Conn>),
    /// The app closed the client.
    Closed,
    /// The client gave up (reconnect disabled, or the token was refused).
    Ended(String),
}

/// The login the client resumes after a reconnect.
#[derive(Debug, Clone)]
pub(crate) struct Auth {
    pub(crate) user_id: u64,
    pub(crate) token: String,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) endpoint: Endpoint,
    pub(crate) options: ClientOptions,
    /// Replaced by the supervisor on every (re)connect; watched by
    /// requests waiting for a connection.
    pub(crate) link: watch::Sender<Link>,
    /// Set by Register, Login and Resume; cleared by Logout and by a refused
    /// resume.
    pub(crate) auth: Mutex<Option<Auth>>,
    /// Held while messages are turned into events, so that one conversation's
    /// events leave in seq order whoever delivers them (push task, gap
    /// fetches, Sync, Resume). Sync and Resume hold it from the request to
    /// the applied reply, so live pushes queue behind the catch-up. Never
    /// taken while waiting for a connection.
    pub(crate) order: tokio::sync::Mutex<()>,
    /// Shared with `Events`, which advances the delivered cursors. A plain
    /// mutex, never held across an await.
    pub(crate) cursors: Arc<Mutex<Cursors>>,
    /// Conversations with a gap fetch running, so there is one per
    /// conversation.
    pub(crate) fetching: Mutex<HashSet<u64>>,
    /// Users whose presence the app watches; subscriptions belong to a
    /// session, so they are sent again after every reconnect.
    pub(crate) watching: Mutex<HashSet<u64>>,
    pub(crate) events: EventSink,
}

/// Requests that may be sent again after the connection dropped with the
/// first attempt in flight: the server may have applied it, and applying it
/// twice must not change the outcome. Sends are idempotent by
/// `client_msg_id`; reads and monotonic cursors trivially.
fn safe_to_retry(body: &C) -> bool {
    matches!(
        body,
        C::SendMessage(_)
            | C::GetHistory(_)
            | C::Sync(_)
            | C::GetProfile(_)
            | C::ListConversations(_)
            | C::GetConversation(_)
            | C::GetReceipts(_)
            | C::MarkDelivered(_)
            | C::MarkRead(_)
            | C::Typing(_)
            | C::SetPresence(_)
            | C::SubscribePresence(_)
            | C::UnsubscribePresence(_)
            | C::SubscribeChannel(_)
            | C::UnsubscribeChannel(_)
            | C::UpdateProfile(_)
            | C::RegisterPushToken(_)
            | C::Ping(_)
    )
}

impl Inner {
    pub(crate) fn is_closed(&self) -> bool {
        matches!(*self.link.borrow(), Link::Closed)
    }

    /// Waits until the app closes the client.
    pub(crate) async fn closed_by_app(&self) {
        let mut rx = self.link.subscribe();
        let _ = rx.wait_for(|l| matches!(l, Link::Closed)).await.map(drop);
    }

    /// The connection in use, if connected.
    pub(crate) fn conn(&self) -> Option<Arc<Conn>> {
        match &*self.link.borrow() {
            Link::Up(c) if c.is_usable() => Some(c.clone()),
            _ => None,
        }
    }

    /// The connection to use, waiting for a reconnect until `deadline`.
    pub(crate) async fn current_conn(&self, deadline: Instant) -> Result<Arc<Conn>> {
        let mut rx = self.link.subscribe();
        loop {
            let ready = match &*rx.borrow_and_update() {
                Link::Up(c) if c.is_usable() => Some(c.clone()),
                Link::Up(_) | Link::Connecting => None,
                Link::Closed => return Err(Error::Closed),
                Link::Ended(reason) => return Err(Error::Disconnected(reason.clone())),
            };
            if let Some(conn) = ready {
                return Ok(conn);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => return Err(Error::Disconnected("not connected".into())),
            }
        }
    }

    /// Sends a request on the current connection and waits for its reply,
    /// all within `timeout`. A request that never left is sent again on the
    /// next connection; one lost in flight is sent again only if
    /// [`safe_to_retry`].
    pub(crate) async fn request_within(&self, mut body: C, timeout: Duration) -> Result<S> {
        let retry = safe_to_retry(&body);
        let deadline = Instant::now() + timeout;
        loop {
            let conn = self.current_conn(deadline).await?;
            let sent = conn.send_request(body.clone(), deadline).await;
            // Whatever became of it, the next transmission is a retry.
            if let C::SendMessage(m) = &mut body {
                m.first_attempt = false;
            }
            let pending = match sent {
                Ok(pending) => pending,
                // Not sent: wait for the next connection.
                Err(Error::Disconnected(_)) => continue,
                Err(e) => return Err(e),
            };
            match pending.reply(deadline).await {
                Err(Error::Disconnected(_)) if retry => continue,
                other => return other,
            }
        }
    }

    /// [`Inner::request_within`] with the configured request timeout.
    pub(crate) async fn request(&self, body: C) -> Result<S> {
        self.request_within(body, self.options.request_timeout)
            .await
    }

    /// Sends a frame that gets no reply (`request_id` 0).
    pub(crate) async fn notify(&self, body: C) -> Result<()> {
        let deadline = Instant::now() + self.options.request_timeout;
        loop {
            let conn = self.current_conn(deadline).await?;
            match conn.notify(body.clone(), deadline).await {
                Err(Error::Disconnected(_)) => continue,
                other => return other,
            }
        }
    }

    pub(crate) fn device(&self) -> Option<pb::DeviceInfo> {
        Some(pb::DeviceInfo {
            device_id: self.options.device_id.clone(),
            platform: self.options.platform.clone(),
        })
    }

    pub(crate) fn auth(&self) -> Option<Auth> {
        lock(&self.auth).clone()
    }

    /// Remembers a login; `token` is used if the reply carries none.
    pub(crate) fn set_auth(&self, ok: &pb::AuthOk, token: &str) {
        let token = if ok.session_token.is_empty() {
            token.to_owned()
        } else {
            ok.session_token.clone()
        };
        *lock(&self.auth) = Some(Auth {
            user_id: ok.user_id,
            token,
        });
    }

    pub(crate) fn clear_auth(&self) {
        *lock(&self.auth) = None;
    }

    /// Closes the client: no more reconnects, requests fail with
    /// [`Error::Closed`], the event stream ends once drained. Returns the
    /// connection that was in use.
    pub(crate) fn shutdown(&self) -> Option<Arc<Conn>> {
        let previous = self.link.send_replace(Link::Closed);
        self.events.close();
        match previous {
            Link::Up(conn) => {
                conn.close("client closed");
                Some(conn)
            }
            _ => None,
        }
    }

    /// The client gives up: requests fail with `reason`, the event stream
    /// ends once drained.
    pub(crate) fn finish(&self, reason: String) {
        self.link.send_if_modified(|l| {
            if matches!(l, Link::Closed) {
                false
            } else {
                *l = Link::Ended(reason);
                true
            }
        });
        self.events.close();
    }
}
