//! Media: upload tickets. The bytes themselves travel over HTTP
//! (`crate::http`, `crate::media`), never over a chat/1 session.

use std::rc::Rc;

use chat_protocol::pb::{self, server_frame::Body as S};

use super::{Request, spawn_read};
use crate::connection::Conn;
use crate::storage::writer::{Batch, Writer};

/// RequestUpload: a signed URL to PUT the file to. The media id is
/// recorded as the user's, so that deleting the account removes the file.
pub(crate) fn request_upload(conn: &Rc<Conn>, req: Request, user: u64, r: pb::RequestUpload) {
    let shard = &conn.shard;
    let ticket = match shard
        .shared
        .media
        .ticket(&r, shard.shared.config.clock.now_ms())
    {
        Ok(t) => t,
        Err(refused) => return req.answer(Err(refused)),
    };
    spawn_read(conn, req, &shard.shared.writer, move |writer: &Writer| {
        let mut batch = Batch::new();
        batch.put_user_media(user, &ticket.media_id);
        writer.write_blocking(batch)?;
        Ok(S::UploadTicket(ticket))
    });
}
