//! The browser chat page, served by the HTTP listener at `/`.
//!
//! Plain HTML, CSS and JavaScript from `server/web/`, compiled into the
//! binary: no build step, nothing fetched from elsewhere, so the page works
//! on a machine without internet. The page talks to the WebSocket bridge
//! (`/ws`) of the same listener with chat/1 protobuf frames, encoded by the
//! small hand-written codec in `web/chat_proto.js` (its schema is
//! `spec/chat.proto` written as data; a test below keeps the two equal).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

/// One file of the page.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Request path that serves it.
    pub path: &'static str,
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// The file, as compiled in.
    pub body: &'static [u8],
}

/// Every file of the page. `/` is the page itself.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../web/index.html"),
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../web/app.css"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/app.js"),
    },
    Asset {
        path: "/heartbeat_worker.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/heartbeat_worker.js"),
    },
    Asset {
        path: "/chat_proto.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/chat_proto.js"),
    },
];

/// Scripts, the heartbeat worker and styles only from this origin, network
/// access only back to it (the WebSocket bridge), no plugins, no framing by
/// other sites.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     worker-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The asset served at `path`, if any (`/index.html` is `/`).
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

/// The response for `GET path`: the asset, or 404 if `path` is not part
/// of the page.
pub fn response(path: &str) -> Response<Full<Bytes>> {
    let Some(a) = asset(path) else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let mut r = Response::new(Full::new(Bytes::from_static(a.body)));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    // The assets change with the binary, not with time: revalidate on each
    // load so an upgraded server is never paired with a stale script.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_type() {
        for a in ASSETS {
            let r = response(a.path);
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[CONTENT_TYPE], a.content_type);
            assert!(!a.body.is_empty(), "{} is empty", a.path);
        }
        assert_eq!(response("/index.html").status(), StatusCode::OK);
        assert_eq!(response("/nope.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(response("/../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_page_loads_only_its_own_scripts() {
        let html = std::str::from_utf8(asset("/").unwrap().body).unwrap();
        for script in ["/chat_proto.js", "/app.js"] {
            assert!(html.contains(&format!("src=\"{script}\"")), "{script}");
        }
        assert!(html.contains("href=\"/app.css\""));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}
