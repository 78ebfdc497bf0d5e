//! Server addresses: `tcp://host:port`, and the schemes of the other
//! transports (`tls://`, `quic://`, `ws://`, `wss://`).

use crate::error::{Error, Result};

/// A transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// QUIC.
    Quic,
    /// WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

/// A parsed server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The transport.
    pub transport: Transport,
    /// `host:port`.
    pub authority: String,
}

impl Endpoint {
    /// Parses `scheme://host:port[/path]`.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = || Error::InvalidUrl(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let transport = match scheme {
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "quic" => Transport::Quic,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            _ => return Err(bad()),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        Ok(Self {
            transport,
            authority: authority.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme_and_refuses_garbage() {
        let e = Endpoint::parse("tcp://127.0.0.1:7400").expect("valid");
        assert_eq!(
            (e.transport, e.authority.as_str()),
            (Transport::Tcp, "127.0.0.1:7400")
        );
        assert_eq!(
            Endpoint::parse("wss://chat.example:443/ws")
                .map(|e| e.transport)
                .ok(),
            Some(Transport::Wss)
        );
        for bad in [
            "127.0.0.1:7400",
            "http://h:1",
            "tcp://h",
            "tcp://:80",
            "tcp://h:99999",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
