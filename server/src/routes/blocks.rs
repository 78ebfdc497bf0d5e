//! Blocking (`spec/messages.md`, "BlockUser"): a user's blocks are written
//! at the home of the pair's direct chat, in its lane, so that a block and
//! the creation of the pair's direct chat never interleave; the owner of an
//! existing direct chat is told, so that it refuses what the two send there
//! from then on; and the pair's presence watches end everywhere.

use std::rc::Rc;

use chat_protocol::pb::{self, server_frame::Body as S};
use chat_protocol::{ConversationId, ErrorCode, UserId};

use super::{Request, at_home, spawn_read};
use crate::connection::Conn;
use crate::home::Key;
use crate::owner::OwnerOp;
use crate::reply::Refusal;
use crate::storage::Store;
use crate::storage::writer::{Batch, Writer};

/// Users one user may block at most (`spec/README.md`, "Limits").
pub const BLOCKED_MAX: usize = 1000;

/// BlockUser.
pub(crate) fn block(conn: &Rc<Conn>, req: Request, user: u64, b: pb::BlockUser) {
    set(conn, req, user, b.user_id, true);
}

/// UnblockUser.
pub(crate) fn unblock(conn: &Rc<Conn>, req: Request, user: u64, u: pb::UnblockUser) {
    set(conn, req, user, u.user_id, false);
}

/// ListBlocked.
pub(crate) fn list(conn: &Rc<Conn>, req: Request, user: u64) {
    spawn_read(conn, req, &conn.shard.shared.store, move |store| {
        let user_ids = store.blocks_of(user, BLOCKED_MAX)?;
        Ok(S::BlockedUsers(pb::BlockedUsers { user_ids }))
    });
}

fn set(conn: &Rc<Conn>, req: Request, user: u64, other: u64, on: bool) {
    if other == user {
        req.answer(Err(Refusal::new(
            ErrorCode::InvalidArgument,
            "a user cannot block themselves",
        )));
        return;
    }
    let shard = conn.shard.clone();
    tokio::task::spawn_local(async move {
        let handle = (shard.shared.store.clone(), shard.shared.writer.clone());
        let key = Key::direct(UserId(user), UserId(other));
        let write =
            move |(store, writer): &(Store, Writer)| write_block(store, writer, user, other, on);
        let direct = match at_home(&shard, &key, true, &handle, write).await {
            Ok(direct) => direct,
            Err(r) => return req.answer(Err(r)),
        };
        if on {
            shard.unwatch_pair(user, other).await;
        }
        match direct {
            Some(conversation) => {
                let op = OwnerOp::SetBlocked(on);
                let owned = req.to_owner(UserId(user), ConversationId(conversation), op);
                shard.to_owner(owned).await;
            }
            None => req.answer(Ok(S::Done(pb::Done {}))),
        }
    });
}

/// Writes (or deletes) the block of `other` by `user` unless it is so
/// already; returns the pair's direct chat, if there is one.
fn write_block(
    store: &Store,
    writer: &Writer,
    user: u64,
    other: u64,
    on: bool,
) -> Result<Option<u64>, Refusal> {
    if store.user(other)?.is_none() {
        return Err(Refusal::new(
            ErrorCode::NotFound,
            format!("no user {other}"),
        ));
    }
    let already = store.blocked(user, other)?;
    if on && !already && store.blocks_of(user, BLOCKED_MAX)?.len() >= BLOCKED_MAX {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            format!("at most {BLOCKED_MAX} blocked users"),
        ));
    }
    if on != already {
        let mut batch = Batch::new();
        if on {
            batch.put_block(user, other);
        } else {
            batch.delete_block(user, other);
        }
        writer.write_blocking(batch)?;
    }
    Ok(store.direct(user, other)?)
}
