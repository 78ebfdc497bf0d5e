//! Conversations: creating, reading and listing them (store-backed, on the
//! blocking pool), and the membership changes their owner carries out.

use std::rc::Rc;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, server_frame::Body as S};

use super::{Request, read_then_owner, spawn_at_home, spawn_read, to_owner};
use crate::catalog::{self, Catalog};
use crate::connection::Conn;
use crate::owner::OwnerOp;
use crate::reply::Refusal;
use crate::storage::Store;

/// CreateConversation; a direct chat, unique per pair, is created at the
/// pair's home, in its lane.
pub(crate) fn create(conn: &Rc<Conn>, req: Request, user: u64, c: pb::CreateConversation) {
    let key = catalog::direct_key(user, &c);
    let create = move |catalog: &Catalog| catalog.create(user, &c).map(S::Conversation);
    let catalog = &conn.shard.shared.catalog;
    match key {
        Some(key) => spawn_at_home(conn, req, key, catalog, create),
        None => spawn_read(conn, req, catalog, create),
    }
}

/// GetConversation.
pub(crate) fn get(conn: &Rc<Conn>, req: Request, user: u64, g: pb::GetConversation) {
    spawn_read(conn, req, &conn.shard.shared.catalog, move |catalog| {
        catalog.get(user, g.conversation_id).map(S::Conversation)
    });
}

/// ListConversations.
pub(crate) fn list(conn: &Rc<Conn>, req: Request, user: u64, l: pb::ListConversations) {
    spawn_read(conn, req, &conn.shard.shared.catalog, move |catalog| {
        catalog.list(user, &l).map(S::ConversationList)
    });
}

/// AddMembers: the users are checked to exist here, the rest is the
/// owner's.
pub(crate) fn add_members(conn: &Rc<Conn>, req: Request, user: u64, a: pb::AddMembers) {
    let ids = a.user_ids.clone();
    let check = move |store: &Store| {
        for &u in &ids {
            if store.user(u)?.is_none_or(|r| r.deleted) {
                return Err(Refusal::new(ErrorCode::NotFound, format!("no user {u}")));
            }
        }
        Ok(())
    };
    let op = |()| OwnerOp::AddMembers(a.user_ids);
    let store = &conn.shard.shared.store;
    read_then_owner(conn, req, (user, a.conversation_id), store, check, op);
}

/// BanMember: the user is checked to exist here, the rest is the owner's.
pub(crate) fn ban(conn: &Rc<Conn>, req: Request, user: u64, b: pb::BanMember) {
    let target = b.user_id;
    let check = move |store: &Store| match store.user(target)? {
        Some(_) => Ok(()),
        None => Err(Refusal::new(
            ErrorCode::NotFound,
            format!("no user {target}"),
        )),
    };
    let op = move |()| OwnerOp::Ban(target);
    let store = &conn.shard.shared.store;
    read_then_owner(conn, req, (user, b.conversation_id), store, check, op);
}

/// UnbanMember.
pub(crate) async fn unban(conn: &Rc<Conn>, req: Request, user: u64, u: pb::UnbanMember) {
    let op = OwnerOp::Unban(u.user_id);
    to_owner(conn, req, user, u.conversation_id, op).await;
}

/// RemoveMember.
pub(crate) async fn remove_member(conn: &Rc<Conn>, req: Request, user: u64, r: pb::RemoveMember) {
    let op = OwnerOp::RemoveMember(r.user_id);
    to_owner(conn, req, user, r.conversation_id, op).await;
}

/// LeaveConversation.
pub(crate) async fn leave(conn: &Rc<Conn>, req: Request, user: u64, l: pb::LeaveConversation) {
    to_owner(conn, req, user, l.conversation_id, OwnerOp::Leave).await;
}

/// SetRole.
pub(crate) async fn set_role(conn: &Rc<Conn>, req: Request, user: u64, r: pb::SetRole) {
    let op = OwnerOp::SetRole(r.user_id, r.role);
    to_owner(conn, req, user, r.conversation_id, op).await;
}

/// UpdateConversation.
pub(crate) async fn update(conn: &Rc<Conn>, req: Request, user: u64, u: pb::UpdateConversation) {
    let op = OwnerOp::UpdateTitle(u.title);
    to_owner(conn, req, user, u.conversation_id, op).await;
}

/// TransferOwnership.
pub(crate) async fn transfer(conn: &Rc<Conn>, req: Request, user: u64, t: pb::TransferOwnership) {
    let op = OwnerOp::TransferOwnership(t.new_owner_id);
    to_owner(conn, req, user, t.conversation_id, op).await;
}

/// SubscribeChannel.
pub(crate) async fn subscribe(conn: &Rc<Conn>, req: Request, user: u64, c: pb::SubscribeChannel) {
    to_owner(
        conn,
        req,
        user,
        c.conversation_id,
        OwnerOp::SubscribeChannel,
    )
    .await;
}

/// UnsubscribeChannel.
pub(crate) async fn unsubscribe(
    conn: &Rc<Conn>,
    req: Request,
    user: u64,
    c: pb::UnsubscribeChannel,
) {
    to_owner(
        conn,
        req,
        user,
        c.conversation_id,
        OwnerOp::UnsubscribeChannel,
    )
    .await;
}
