//! Turning messages into events: in order, once, with gaps filled.
//!
//! Every path that carries messages (live pushes, Sync and Resume replies,
//! gap fetches) goes through [`Inner::deliver_locked`] under `Inner::order`,
//! which runs them through [`Cursors`](crate::cursors::Cursors) and queues
//! what may be emitted.

use std::sync::Arc;
use std::time::Duration;

use chat_protocol::ConversationId;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use tokio::time::Instant;

use crate::connection::Conn;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::inner::Inner;
use crate::lock;

/// Messages asked for per GetHistory page while filling a gap (the server's
/// maximum, `spec/messages.md`).
const GAP_PAGE: u32 = 200;

/// Attempts per page of a gap fetch before giving up; a later push, Sync or
/// Resume reopens the gap.
const GAP_ATTEMPTS: u32 = 5;

impl Inner {
    /// Queues what `messages` allow, in order. The caller holds `order`.
    /// Returns the conversations left with a gap.
    pub(crate) async fn deliver_locked(&self, messages: Vec<pb::Message>) -> Vec<u64> {
        let mut emit = Vec::new();
        let mut gaps = Vec::new();
        {
            let mut cursors = lock(&self.cursors);
            for m in messages {
                let conversation = m.conversation_id;
                let offered = cursors.offer(m);
                emit.extend(offered.emit);
                if offered.missing_after.is_some() && !gaps.contains(&conversation) {
                    gaps.push(conversation);
                }
            }
        }
        for m in emit {
            self.events.send(Event::Message(m)).await;
        }
        gaps
    }

    /// Delivers pushed messages and starts fetching any gap they reveal.
    pub(crate) async fn deliver(self: &Arc<Self>, messages: Vec<pb::Message>) {
        let gaps = {
            let _order = self.order.lock().await;
            self.deliver_locked(messages).await
        };
        self.fetch_gaps(gaps);
    }

    /// Applies a Sync or Resume result like pushes (each gap's messages are
    /// oldest first). The caller holds `order`. Returns the conversations
    /// whose gap was truncated or is otherwise still open.
    pub(crate) async fn apply_sync_locked(&self, result: pb::SyncResult) -> Vec<u64> {
        {
            let mut cursors = lock(&self.cursors);
            for removed in &result.removed_conversation_ids {
                cursors.remove(*removed);
            }
            for gap in &result.gaps {
                cursors.begin_gap(gap.conversation_id, gap.from_seq);
            }
        }
        for removed in result.removed_conversation_ids {
            self.events
                .send(Event::ConversationRemoved(ConversationId(removed)))
                .await;
        }
        let mut open = Vec::new();
        for gap in result.gaps {
            let conversation = gap.conversation_id;
            let mut left = self.deliver_locked(gap.messages).await;
            if gap.truncated {
                left.push(conversation);
            }
            for c in left {
                if !open.contains(&c) {
                    open.push(c);
                }
            }
        }
        open
    }

    /// Sends Sync with the queued cursors, applies the result and fetches
    /// the rest of truncated gaps; returns once everything is queued.
    pub(crate) async fn sync(self: &Arc<Self>) -> Result<()> {
        let deadline = Instant::now() + self.options.request_timeout;
        let open = loop {
            let conn = self.current_conn(deadline).await?;
            // Taken before the cursors are read and held until the reply is
            // applied: pushes that overtake the reply wait, then drop as
            // duplicates, and a push cannot start an unknown conversation
            // ahead of its Sync gap.
            let order = self.order.lock().await;
            let body = C::Sync(pb::Sync {
                cursors: lock(&self.cursors).all_queued(),
                limit_per_conversation: self.options.sync_limit_per_conversation,
            });
            let pending = match conn.send_request(body, deadline).await {
                Ok(pending) => pending,
                Err(Error::Disconnected(_)) => continue,
                Err(e) => return Err(e),
            };
            match pending.reply(deadline).await {
                Ok(S::SyncResult(result)) => {
                    let open = self.apply_sync_locked(result).await;
                    drop(order);
                    break open;
                }
                Ok(other) => return Err(Error::unexpected(&other)),
                Err(Error::Disconnected(_)) => continue,
                Err(e) => return Err(e),
            }
        };
        for conversation in open {
            self.fill_gap(conversation).await;
        }
        Ok(())
    }

    /// Resumes the session on `conn` with the queued cursors and applies the
    /// reply's sync. `on_resumed` runs once the session is authenticated,
    /// before the catch-up is queued (the supervisor publishes the connection
    /// there, so the app's requests need not wait for the catch-up). Returns
    /// the reply and the conversations still to fetch.
    pub(crate) async fn resume_on(
        &self,
        conn: &Arc<Conn>,
        token: &str,
        on_resumed: impl FnOnce(),
    ) -> Result<(pb::ResumeOk, Vec<u64>)> {
        let deadline = Instant::now() + self.options.request_timeout;
        // Held as in `sync`: `spec/states.md` says the server registers the
        // session for pushes before it reads the data for ResumeOk, so
        // pushes may overtake the reply.
        let _order = self.order.lock().await;
        let body = C::Resume(pb::Resume {
            session_token: token.to_owned(),
            device: self.device(),
            cursors: lock(&self.cursors).all_queued(),
        });
        let ok = match conn.request(body, deadline).await? {
            S::ResumeOk(ok) => ok,
            other => return Err(Error::unexpected(&other)),
        };
        if let Some(auth) = &ok.auth {
            self.set_auth(auth, token);
        }
        on_resumed();
        let open = match ok.sync.clone() {
            Some(sync) => self.apply_sync_locked(sync).await,
            None => Vec::new(),
        };
        Ok((ok, open))
    }

    /// Fetches each conversation's gap in a task of its own, one task per
    /// conversation at a time.
    pub(crate) fn fetch_gaps(self: &Arc<Self>, conversations: Vec<u64>) {
        for conversation in conversations {
            if lock(&self.fetching).insert(conversation) {
                let inner = self.clone();
                tokio::spawn(async move {
                    inner.fill_gap(conversation).await;
                    lock(&inner.fetching).remove(&conversation);
                });
            }
        }
    }

    /// Pages through `GetHistory{after_seq: cursor}` until the conversation
    /// has no gap. Messages other paths delivered meanwhile drop as
    /// duplicates, so no lock is held while waiting for a page.
    pub(crate) async fn fill_gap(&self, conversation: u64) {
        loop {
            let after = lock(&self.cursors).queued(conversation);
            let Some(page) = self.history_page(conversation, after).await else {
                return;
            };
            let has_more = page.has_more;
            {
                let _order = self.order.lock().await;
                // Gaps found here are this loop's next turns.
                let _ = self.deliver_locked(page.messages).await;
            }
            let (now, gap) = {
                let cursors = lock(&self.cursors);
                (cursors.queued(conversation), cursors.has_gap(conversation))
            };
            if now == after || !(has_more || gap) || self.is_closed() {
                return;
            }
        }
    }

    async fn history_page(&self, conversation: u64, after: u64) -> Option<pb::MessagePage> {
        let body = C::GetHistory(pb::GetHistory {
            conversation_id: conversation,
            before_seq: 0,
            after_seq: Some(after),
            limit: GAP_PAGE,
        });
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=GAP_ATTEMPTS {
            let err = match self.request(body.clone()).await {
                Ok(S::MessagePage(page)) => return Some(page),
                Ok(other) => Error::unexpected(&other),
                Err(e) => e,
            };
            if !err.is_transient() || attempt == GAP_ATTEMPTS {
                tracing::debug!(conversation, cause = %err, "gap fetch failed; a later sync repairs it");
                return None;
            }
            if let Error::Server { retry_after_ms, .. } = err {
                wait = wait.max(Duration::from_millis(u64::from(retry_after_ms)));
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        None
    }
}
