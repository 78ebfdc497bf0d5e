//! Media sharing: signed upload and download URLs on the HTTP listener.
//!
//! `RequestUpload` hands out a fresh media id and two URLs signed with
//! HMAC-SHA256 under a key kept in `data_dir/media.key`:
//!
//! - `PUT /media/<id>?exp=<ms>&size=<bytes>&type=<mime>&sig=<hex>` stores at
//!   most `size` bytes once (a second upload of the same id is refused);
//! - `GET /media/<id>?exp=<ms>&sig=<hex>` returns them.
//!
//! Messages are stored with a [`pb::MediaRef`] that carries no URL. The
//! server signs a fresh download URL into it each time it hands a message
//! out (push, history, sync, conversation list), so whoever can read the
//! message can fetch its media, for `media_url_ttl_secs` after reading it.
//!
//! Files live in `data_dir/media/<id>`, their content type beside them in
//! `<id>.type`. Transfers run on the shard that accepted the HTTP
//! connection, file I/O on the blocking pool; at most `media_transfers`
//! run at once, each holding one chunk in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::{ErrorCode, pb};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::reply::Refusal;

/// Characters of a media id: 128 random bits in lowercase hex.
pub const MEDIA_ID_LEN: usize = 32;
/// Longest accepted content type.
const MIME_MAX: usize = 127;
/// Bytes read from a file per chunk of a download.
const CHUNK: usize = 64 * 1024;

/// Which transfer a URL allows; part of what is signed, so a download URL
/// cannot be used to upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Put,
    Get,
}

/// Signs and checks media URLs and knows where the files are.
#[derive(Debug)]
pub struct Media {
    key: [u8; 32],
    dir: PathBuf,
    base_url: String,
    url_ttl_ms: u64,
    max_bytes: u64,
    /// Judges URL expiry on uploads and downloads.
    clock: crate::clock::Clock,
    /// Transfers in progress, across all shards.
    pub transfers: Arc<Semaphore>,
}

/// A failed transfer: HTTP status and a one-line reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Denied(pub u16, pub &'static str);

impl Media {
    /// Opens (or creates) the media directory and signing key under
    /// `data_dir`. `base_url` is what clients prepend to `/media/...`.
    pub fn open(
        data_dir: &Path,
        base_url: String,
        url_ttl_secs: u64,
        max_bytes: u64,
        transfers: usize,
    ) -> std::io::Result<Self> {
        let dir = data_dir.join("media");
        std::fs::create_dir_all(&dir)?;
        let key = load_or_create_key(&data_dir.join("media.key"))?;
        Ok(Self {
            key,
            dir,
            base_url: base_url.trim_end_matches('/').to_string(),
            url_ttl_ms: url_ttl_secs.saturating_mul(1000),
            max_bytes,
            clock: crate::clock::Clock::system(),
            transfers: Arc::new(Semaphore::new(transfers.max(1))),
        })
    }

    /// Judges URL expiry by `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Answers `RequestUpload` (`spec/messages.md`).
    pub fn ticket(
        &self,
        req: &pb::RequestUpload,
        now_ms: u64,
    ) -> Result<pb::UploadTicket, Refusal> {
        if !valid_mime(&req.mime_type) {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "mime_type must look like type/subtype",
            ));
        }
        if req.size_bytes == 0 {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "size_bytes must be positive",
            ));
        }
        if req.size_bytes > self.max_bytes {
            return Err(Refusal::new(
                ErrorCode::MessageTooLarge,
                format!("media is limited to {} bytes", self.max_bytes),
            ));
        }
        let id = hex::encode(rand::random::<[u8; MEDIA_ID_LEN / 2]>());
        let exp = now_ms.saturating_add(self.url_ttl_ms);
        let size = req.size_bytes.to_string();
        let mime = &req.mime_type;
        let put_sig = self.sign(Verb::Put, &id, exp, &size, mime);
        let upload_url = format!(
            "{}/media/{id}?exp={exp}&size={size}&type={}&sig={put_sig}",
            self.base_url,
            percent_encode(mime)
        );
        Ok(pb::UploadTicket {
            download_url: self.download_url(&id, exp),
            media_id: id,
            upload_url,
            expires_at_ms: exp,
        })
    }

    /// Fills in the download URL of a message's media, if it has any.
    pub fn sign_message(&self, m: &mut pb::Message, now_ms: u64) {
        if let Some(media) = m.media.as_mut() {
            media.url = self.download_url(&media.media_id, now_ms.saturating_add(self.url_ttl_ms));
        }
    }

    /// [`Media::sign_message`] for each message.
    pub fn sign_messages<'a>(&self, ms: impl IntoIterator<Item = &'a mut pb::Message>, now: u64) {
        for m in ms {
            self.sign_message(m, now);
        }
    }

    fn download_url(&self, id: &str, exp: u64) -> String {
        let sig = self.sign(Verb::Get, id, exp, "", "");
        format!("{}/media/{id}?exp={exp}&sig={sig}", self.base_url)
    }

    fn mac(&self, verb: Verb, id: &str, exp: u64, size: &str, mime: &str) -> Hmac<Sha256> {
        // The key is 32 bytes; HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        let verb = match verb {
            Verb::Put => "PUT",
            Verb::Get => "GET",
        };
        for part in [verb, id, &exp.to_string(), size, mime] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    fn sign(&self, verb: Verb, id: &str, exp: u64, size: &str, mime: &str) -> String {
        hex::encode(self.mac(verb, id, exp, size, mime).finalize().into_bytes())
    }

    /// Checks a request's id, expiry and signature; returns the query.
    fn check(&self, verb: Verb, id: &str, query: &str, now_ms: u64) -> Result<Query, Denied> {
        if !valid_media_id(id) {
            return Err(Denied(404, "no such media"));
        }
        let q = Query::parse(query).ok_or(Denied(400, "malformed query"))?;
        let sig = hex::decode(&q.sig).map_err(|_| Denied(403, "bad signature"))?;
        let (size, mime) = match verb {
            Verb::Put => (q.size.to_string(), q.mime.as_str()),
            Verb::Get => (String::new(), ""),
        };
        self.mac(verb, id, q.exp, &size, mime)
            .verify_slice(&sig)
            .map_err(|_| Denied(403, "bad signature"))?;
        if q.exp < now_ms {
            return Err(Denied(403, "URL expired"));
        }
        Ok(q)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Where the files are (`data_dir/media`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The parameters of a media URL.
#[derive(Debug, Default)]
struct Query {
    exp: u64,
    size: u64,
    mime: String,
    sig: String,
}

impl Query {
    fn parse(query: &str) -> Option<Self> {
        let mut q = Query::default();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=')?;
            match k {
                "exp" => q.exp = v.parse().ok()?,
                "size" => q.size = v.parse().ok()?,
                "type" => q.mime = percent_decode(v)?,
                "sig" => q.sig = v.to_string(),
                _ => {}
            }
        }
        Some(q)
    }
}

/// Removes the file of media `id` in `dir` (`data_dir/media`) and its
/// content type; nothing if it was never uploaded.
pub fn remove_files(dir: &Path, id: &str) -> std::io::Result<()> {
    if !valid_media_id(id) {
        return Ok(());
    }
    let path = dir.join(id);
    for p in [path.with_extension("type"), path] {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `id` is a media id this server could have made (and so a safe
/// file name).
pub fn valid_media_id(id: &str) -> bool {
    id.len() == MEDIA_ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn valid_mime(mime: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    mime.len() <= MIME_MAX
        && mime
            .split_once('/')
            .is_some_and(|(t, sub)| token(t) && token(sub))
}

/// Checks the media reference of a message being sent.
pub fn check_ref(media: &pb::MediaRef) -> Result<(), Refusal> {
    if !valid_media_id(&media.media_id) {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            "media_id must come from an UploadTicket",
        ));
    }
    if !media.mime_type.is_empty() && !valid_mime(&media.mime_type) {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            "mime_type must look like type/subtype",
        ));
    }
    Ok(())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => bytes.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} must hold 32 bytes", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&key)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, path)?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// What an upload or download produced, for the HTTP layer.
#[derive(Debug)]
pub enum Transfer {
    /// Upload stored.
    Stored,
    /// Download: content type, length, and a receiver of the chunks.
    Body {
        /// `Content-Type`.
        mime: String,
        /// `Content-Length`.
        len: u64,
        /// The file's chunks, in order, one buffered at a time.
        chunks: http_body_util::channel::Channel<Bytes>,
    },
}

/// Stores an upload: at most the signed size, written to a temporary file,
/// synced, then renamed into place so that a partial upload is never served.
pub async fn put<B>(media: &Media, id: &str, query: &str, mut body: B) -> Result<Transfer, Denied>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    let q = media.check(Verb::Put, id, query, media.clock.now_ms())?;
    let _permit = media
        .transfers
        .acquire()
        .await
        .map_err(|_| Denied(503, "shutting down"))?;
    let path = media.path(id);
    if tokio::fs::try_exists(&path).await.unwrap_or(true) {
        return Err(Denied(409, "media already uploaded"));
    }
    let part = path.with_extension(format!("part-{:x}", rand::random::<u64>()));
    let result = async {
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|_| Denied(500, "cannot store media"))?;
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Denied(400, "upload interrupted"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            written += data.len() as u64;
            if written > q.size {
                return Err(Denied(413, "more bytes than the ticket allows"));
            }
            file.write_all(&data)
                .await
                .map_err(|_| Denied(500, "cannot store media"))?;
        }
        if written == 0 {
            return Err(Denied(400, "empty upload"));
        }
        file.sync_all()
            .await
            .map_err(|_| Denied(500, "cannot store media"))?;
        tokio::fs::write(path.with_extension("type"), q.mime.as_bytes())
            .await
            .map_err(|_| Denied(500, "cannot store media"))?;
        // A concurrent upload of the same id may have won; the first stays.
        if tokio::fs::try_exists(&path).await.unwrap_or(true) {
            return Err(Denied(409, "media already uploaded"));
        }
        tokio::fs::rename(&part, &path)
            .await
            .map_err(|_| Denied(500, "cannot store media"))?;
        Ok(Transfer::Stored)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    result
}

/// Opens a download; the chunks follow through the returned receiver.
pub async fn get(media: &Media, id: &str, query: &str) -> Result<Transfer, Denied> {
    media.check(Verb::Get, id, query, media.clock.now_ms())?;
    let permit = media
        .transfers
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Denied(503, "shutting down"))?;
    let path = media.path(id);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| Denied(404, "no such media"))?;
    let len = file
        .metadata()
        .await
        .map_err(|_| Denied(404, "no such media"))?
        .len();
    let mime = tokio::fs::read_to_string(path.with_extension("type"))
        .await
        .unwrap_or_else(|_| "application/octet-stream".into());
    let (mut tx, chunks) = http_body_util::channel::Channel::new(1);
    tokio::task::spawn_local(async move {
        let _permit = permit;
        loop {
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send_data(Bytes::from(buf)).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok(Transfer::Body { mime, len, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(dir: &Path) -> Media {
        Media::open(dir, "http://h".into(), 60, 1000, 4).unwrap()
    }

    fn split(url: &str) -> (&str, &str) {
        let rest = url.strip_prefix("http://h/media/").unwrap();
        rest.split_once('?').unwrap()
    }

    #[test]
    fn tickets_verify_and_tampering_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let m = media(dir.path());
        let req = pb::RequestUpload {
            mime_type: "image/jpeg".into(),
            size_bytes: 10,
        };
        let t = m.ticket(&req, 1_000).unwrap();
        let (id, q) = split(&t.upload_url);
        assert_eq!(id, t.media_id);
        assert!(m.check(Verb::Put, id, q, 1_000).is_ok());
        // A download URL is not an upload URL, and the reverse.
        let (_, dq) = split(&t.download_url);
        assert!(m.check(Verb::Get, id, dq, 1_000).is_ok());
        assert_eq!(m.check(Verb::Put, id, dq, 1_000).unwrap_err().0, 403);
        assert_eq!(m.check(Verb::Get, id, q, 1_000).unwrap_err().0, 403);
        // A larger size, another id, or after the expiry: refused.
        let bigger = q.replace("size=10", "size=999");
        assert_eq!(m.check(Verb::Put, id, &bigger, 1_000).unwrap_err().0, 403);
        let other = "0".repeat(MEDIA_ID_LEN);
        assert_eq!(m.check(Verb::Put, &other, q, 1_000).unwrap_err().0, 403);
        assert_eq!(m.check(Verb::Put, id, q, 62_000).unwrap_err().0, 403);
        assert_eq!(m.check(Verb::Get, "../x", dq, 1_000).unwrap_err().0, 404);
    }

    #[test]
    fn the_key_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t = media(dir.path())
            .ticket(
                &pb::RequestUpload {
                    mime_type: "text/plain".into(),
                    size_bytes: 1,
                },
                0,
            )
            .unwrap();
        let (id, q) = split(&t.download_url);
        assert!(media(dir.path()).check(Verb::Get, id, q, 0).is_ok());
    }

    #[test]
    fn requests_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let m = media(dir.path());
        let ask = |mime: &str, size| {
            m.ticket(
                &pb::RequestUpload {
                    mime_type: mime.into(),
                    size_bytes: size,
                },
                0,
            )
            .map_err(|r| r.code)
        };
        assert_eq!(ask("jpeg", 1).unwrap_err(), ErrorCode::InvalidArgument);
        assert_eq!(
            ask("image/jpeg", 0).unwrap_err(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            ask("image/jpeg", 1001).unwrap_err(),
            ErrorCode::MessageTooLarge
        );
        assert!(ask("image/svg+xml", 1000).is_ok());
        assert_eq!(
            percent_decode(&percent_encode("a/b+c d")).unwrap(),
            "a/b+c d"
        );
    }
}
