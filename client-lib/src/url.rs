//! Server addresses: `scheme://host:port[/path]`.
//!
//! The scheme names the transport (`spec/README.md`, "Transports"): `tcp`,
//! `tls`, `quic`, `ws` and `wss`; the client connects with each.

use crate::error::{Error, Result};

/// A transport named by a URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP, `tcp://` (server default port 7400).
    Tcp,
    /// TLS over TCP, `tls://` (7401).
    Tls,
    /// QUIC, `quic://` (7402/udp).
    Quic,
    /// WebSocket, `ws://` (7480, path `/ws`).
    Ws,
    /// WebSocket over TLS, `wss://` (7443, path `/ws`).
    Wss,
}

impl Transport {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Quic => "quic",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    fn from_scheme(scheme: &str) -> Option<Self> {
        Some(match scheme.to_ascii_lowercase().as_str() {
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "quic" => Transport::Quic,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            _ => return None,
        })
    }

    /// Byte-stream transports carry no path.
    fn has_path(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

/// A parsed server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The transport.
    pub transport: Transport,
    /// Host name or IP address, without the brackets of an IPv6 literal.
    pub host: String,
    /// Port; always given explicitly.
    pub port: u16,
    /// Path for WebSocket URLs (`/` if none was given); `/` for the others.
    pub path: String,
}

impl Endpoint {
    /// Parses `scheme://host:port[/path]`. The port is required; a path is
    /// only allowed for `ws` and `wss`; user info (`user@`) is refused.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = || Error::InvalidUrl(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let transport = Transport::from_scheme(scheme).ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.contains('@') || (!transport.has_path() && path != "/") {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':').ok_or_else(bad)?)
        } else {
            let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
            if host.contains(':') {
                return Err(bad());
            }
            (host, port)
        };
        let port = port.parse::<u16>().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Self {
            transport,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Endpoint {
        Endpoint::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn tcp_host_and_port() {
        let e = parse("tcp://127.0.0.1:7400");
        assert_eq!(e.transport, Transport::Tcp);
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 7400));
        let e = parse("TCP://chat.example.com:1/");
        assert_eq!((e.host.as_str(), e.port), ("chat.example.com", 1));
    }

    #[test]
    fn ipv6_literals_lose_their_brackets() {
        let e = parse("tcp://[::1]:7400");
        assert_eq!((e.host.as_str(), e.port), ("::1", 7400));
        assert!(Endpoint::parse("tcp://::1:7400").is_err());
        assert!(Endpoint::parse("tcp://[::1]7400").is_err());
    }

    #[test]
    fn every_transport_parses() {
        for (url, transport) in [
            ("tls://h:7401", Transport::Tls),
            ("quic://h:7402", Transport::Quic),
            ("ws://h:7480/ws", Transport::Ws),
            ("wss://h:443/ws", Transport::Wss),
        ] {
            let e = parse(url);
            assert_eq!(e.transport, transport);
            assert!(url.starts_with(transport.scheme()));
        }
        assert_eq!(parse("wss://h:443/ws").path, "/ws");
        assert_eq!(parse("ws://h:80").path, "/");
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "127.0.0.1:7400",
            "http://h:1",
            "tcp://h",
            "tcp://h:",
            "tcp://:80",
            "tcp://h:0",
            "tcp://h:99999",
            "tcp://h:port",
            "tcp://user@h:1",
            "tcp://h:1/path",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(Error::InvalidUrl(_))),
                "{bad}"
            );
        }
    }
}
