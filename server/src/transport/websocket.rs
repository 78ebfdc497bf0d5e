//! The WebSocket bridge: `GET /ws` on the HTTP listeners (`ws://`) and the
//! HTTPS listener (`wss://`) upgrades to a chat/1 session.
//!
//! `spec/framing.md`, "Frames on WebSocket": one binary message carries one
//! frame body without the varint prefix. Pings are answered by the
//! WebSocket layer (tungstenite) and count as traffic for the idle timeout.
//! A text message gets `MALFORMED_FRAME` and close code 1003, a message
//! over `max_frame_bytes` `FRAME_TOO_LARGE` and 1009, an undecodable body
//! `MALFORMED_FRAME` and 1002.
//!
//! Origin check (browsers send `Origin`; other clients usually do not):
//! a request without `Origin` is accepted, one whose Origin names the host
//! it was sent to (`Host`) is accepted, and otherwise the Origin must be in
//! `ws_allowed_origins` (`*` allows any). Refused upgrades get 403.

use std::net::IpAddr;
use std::rc::Rc;

use bytes::Bytes;
use chat_protocol::{ErrorCode, pb};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming as Body;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{Capabilities, FrameSink, FrameSource, Incoming, WRITE_COALESCE};
use crate::session_table::{CloseReason, Outbound};
use crate::shard::Shard;

/// The path of the bridge on the HTTP listeners.
pub const PATH: &str = "/ws";

/// Bytes read from the socket at once (tungstenite allocates this buffer
/// per connection up front, so it is kept small).
const READ_BUFFER: usize = 16 * 1024;

type Io = TokioIo<hyper::upgrade::Upgraded>;

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a browser on `origin` may open a session (see the module doc).
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // `scheme://host[:port]`: same host means the page came from this server.
    let origin_host = origin
        .split_once("://")
        .map(|(_, h)| h.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(o), Some(h)) => o.eq_ignore_ascii_case(h),
        _ => false,
    }
}

/// Answers an upgrade request on `/ws`: 101 and a session on this shard,
/// or an HTTP error saying why not.
pub fn upgrade(
    shard: Rc<Shard>,
    mut req: Request<Body>,
    peer: Option<IpAddr>,
    transport: &'static str,
) -> Response<Full<Bytes>> {
    let headers = req.headers();
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "chat/1 WebSocket endpoint: send a WebSocket upgrade\n",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version\n",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !origin_allowed(origin, host, &shard.shared.config.ws_allowed_origins) {
        tracing::debug!(?origin, "WebSocket upgrade from a foreign origin refused");
        return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let Some(slot) = crate::ingress::ConnectionSlot::take(&shard) else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections; retry later\n",
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let max = shard.shared.config.max_frame_bytes;
    tokio::task::spawn_local(async move {
        let _slot = slot;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(cause = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_COALESCE)
            .max_write_buffer_size(2 * (WRITE_COALESCE + max) + READ_BUFFER)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (sink, stream) = ws.split();
        crate::connection::serve(
            shard,
            WsSource { stream },
            WsSink { sink },
            peer,
            Capabilities::default(),
            transport,
        )
        .await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// Client frames from WebSocket messages.
pub struct WsSource {
    stream: SplitStream<WebSocketStream<Io>>,
}

impl FrameSource for WsSource {
    async fn next(&mut self) -> Incoming {
        let malformed = |message: String, reason| Incoming::Invalid {
            code: ErrorCode::MalformedFrame,
            message,
            reason,
        };
        match self.stream.next().await {
            None | Some(Ok(Message::Close(_))) => Incoming::Closed,
            Some(Ok(Message::Binary(body))) => match pb::ClientFrame::decode(body) {
                Ok(frame) => Incoming::Frame(frame),
                Err(e) => malformed(
                    format!("malformed frame body: {e}"),
                    CloseReason::Error(ErrorCode::MalformedFrame),
                ),
            },
            Some(Ok(Message::Text(_))) | Some(Err(WsError::Utf8(_))) => malformed(
                "text messages are not part of chat/1: send each frame as one binary message"
                    .into(),
                CloseReason::UnsupportedData,
            ),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Incoming::Activity,
            Some(Err(WsError::Capacity(e))) => Incoming::Invalid {
                code: ErrorCode::FrameTooLarge,
                message: format!("message too large: {e}"),
                reason: CloseReason::Error(ErrorCode::FrameTooLarge),
            },
            Some(Err(WsError::Protocol(e))) => malformed(
                format!("WebSocket protocol error: {e}"),
                CloseReason::Error(ErrorCode::MalformedFrame),
            ),
            Some(Err(_)) => Incoming::Closed,
        }
    }
}

/// Server frames as WebSocket messages.
pub struct WsSink {
    sink: SplitSink<WebSocketStream<Io>, Message>,
}

fn io_error(e: WsError) -> std::io::Error {
    std::io::Error::other(e)
}

/// The WebSocket close code for a session's end (RFC 6455, section 7.4.1).
pub fn close_code(reason: CloseReason) -> (CloseCode, &'static str) {
    match reason {
        CloseReason::Normal => (CloseCode::Normal, ""),
        CloseReason::GoingAway => (CloseCode::Away, "server shutting down"),
        CloseReason::UnsupportedData => (CloseCode::Unsupported, "binary messages only"),
        CloseReason::Error(ErrorCode::FrameTooLarge) => (CloseCode::Size, "frame too large"),
        CloseReason::Error(ErrorCode::MalformedFrame) => (CloseCode::Protocol, "malformed frame"),
        CloseReason::Error(ErrorCode::ServerBusy) => (CloseCode::Again, "server busy"),
        CloseReason::Error(ErrorCode::Internal | ErrorCode::StorageFailure) => {
            (CloseCode::Error, "server error")
        }
        CloseReason::Error(_) => (
            CloseCode::Policy,
            "closed by the server; see the Error frame",
        ),
    }
}

impl FrameSink for WsSink {
    async fn send(&mut self, batch: &[Outbound]) -> std::io::Result<()> {
        for f in batch {
            let body = super::frame_body(&f.frame);
            self.sink
                .feed(Message::Binary(body))
                .await
                .map_err(io_error)?;
        }
        self.sink.flush().await.map_err(io_error)
    }

    async fn finish(&mut self, reason: CloseReason) {
        let (code, text) = close_code(reason);
        let close = CloseFrame {
            code,
            reason: text.into(),
        };
        let _ = self.sink.send(Message::Close(Some(close))).await;
        let _ = self.sink.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origins() {
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed(None, Some("h:1"), &none));
        assert!(origin_allowed(
            Some("http://127.0.0.1:7480"),
            Some("127.0.0.1:7480"),
            &none
        ));
        assert!(!origin_allowed(
            Some("http://evil.example"),
            Some("127.0.0.1:7480"),
            &none
        ));
        assert!(!origin_allowed(Some("null"), Some("h"), &none));
        let list = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(
            Some("https://app.example"),
            Some("h"),
            &list
        ));
        assert!(origin_allowed(
            Some("https://x"),
            Some("h"),
            &["*".to_owned()]
        ));
    }
}
