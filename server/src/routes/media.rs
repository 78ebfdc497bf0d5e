//! Media: upload tickets. The bytes themselves travel over HTTP
//! (`crate::http`, `crate::media`), never over a chat/1 session.

use std::rc::Rc;

use chat_protocol::pb::{self, server_frame::Body as S};

use super::Request;
use crate::connection::Conn;

/// RequestUpload: a signed URL to PUT the file to.
pub(crate) fn request_upload(conn: &Rc<Conn>, req: Request, r: pb::RequestUpload) {
    let shard = &conn.shard;
    let ticket = shard
        .shared
        .media
        .ticket(&r, shard.shared.config.clock.now_ms());
    req.answer(ticket.map(S::UploadTicket));
}
