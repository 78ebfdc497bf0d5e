//! The HTTP listener: `GET /health`, `GET /metrics`, the WebSocket bridge
//! at `GET /ws` (`crate::transport::websocket`), the browser page
//! (`crate::web`) and the signed media URLs (`PUT`/`GET /media/<id>`, see
//! [`crate::media`]).
//!
//! Each shard accepts on the shared `http_listen` port (SO_REUSEPORT) and
//! serves HTTP/1.1 with hyper on its own runtime; the HTTPS listener
//! (`wss_listen`) serves the same routes over TLS.

use std::convert::Infallible;
use std::net::IpAddr;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::shard::Shard;

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Where an HTTP connection came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client's address.
    pub addr: Option<IpAddr>,
    /// `ws` on the plain listener, `wss` on the TLS one (metrics label).
    pub ws_transport: &'static str,
}

async fn route(
    shard: Rc<Shard>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if let Some(id) = req.uri().path().strip_prefix("/media/") {
        let id = id.to_string();
        return Ok(media(&shard, &id, req).await);
    }
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, crate::transport::websocket::PATH) => {
            crate::transport::websocket::upgrade(shard, req, peer.addr, peer.ws_transport)
                .map(BodyExt::boxed_unsync)
        }
        (&Method::GET, "/health") => {
            let healthy = !shard.shared.life.failed() && !shard.shared.life.shutting_down();
            let (status, text) = if healthy {
                (StatusCode::OK, "ok")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            };
            let body = format!(
                "{{\"status\":\"{text}\",\"shard\":{},\"shards\":{}}}\n",
                shard.id,
                shard.shared.place.nr_shards()
            );
            respond(status, "application/json", body)
        }
        (&Method::GET, "/metrics") => {
            shard.sample_gauges().await;
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                crate::metrics::render(),
            )
        }
        // The browser page (`crate::web`); matches only its own paths.
        (&Method::GET, path) if crate::web::asset(path).is_some() => {
            crate::web::response(path).map(BodyExt::boxed_unsync)
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    })
}

/// `PUT` or `GET /media/<id>?<signed query>`.
async fn media(shard: &Shard, id: &str, req: Request<Incoming>) -> Response<Body> {
    use crate::media::{Denied, Transfer};
    let query = req.uri().query().unwrap_or("").to_string();
    let media = &shard.shared.media;
    let result = match *req.method() {
        Method::PUT => crate::media::put(media, id, &query, req.into_body()).await,
        Method::GET => crate::media::get(media, id, &query).await,
        _ => Err(Denied(405, "use PUT or GET")),
    };
    match result {
        Ok(Transfer::Stored) => respond(StatusCode::CREATED, "text/plain", "stored\n"),
        Ok(Transfer::Body { mime, len, chunks }) => {
            let mut r = Response::new(chunks.boxed_unsync());
            if let Ok(v) = mime.parse() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r.headers_mut().insert(
                hyper::header::CONTENT_LENGTH,
                hyper::header::HeaderValue::from(len),
            );
            r
        }
        Err(Denied(status, why)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            respond(status, "text/plain", format!("{why}\n"))
        }
    }
}

/// Serves one HTTP connection (plain or TLS) until it closes, including a
/// WebSocket session it upgrades to.
pub async fn serve(
    shard: Rc<Shard>,
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    peer: Peer,
) {
    let headers = std::time::Duration::from_millis(shard.shared.config.handshake_timeout_ms);
    let service = hyper::service::service_fn(move |req| route(shard.clone(), peer, req));
    // A client gets the handshake timeout to send each request's headers.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(headers)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(cause = %e, "http connection ended");
    }
}
