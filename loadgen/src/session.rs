//! A chat/1 session driven request by request, for setting a run up
//! (register, create conversations, subscribe) and for the `connections` and
//! `sync` scenarios. The load itself goes through [`crate::conn`].

use std::net::IpAddr;

use anyhow::{Context as _, bail};
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};

use crate::transport::{Dialer, Link};
use crate::wire::chat::{self, ChatDecoder};

/// Password of every loadgen account.
pub const PASSWORD: &str = "loadgen password";

/// An open chat/1 connection past `Hello`.
pub struct ChatSession {
    pub link: Link,
    pub decoder: ChatDecoder,
    next_rid: u64,
    pub user_id: u64,
    pub token: String,
    /// Heartbeat interval announced in `Welcome`.
    pub heartbeat_ms: u32,
}

impl ChatSession {
    /// Connects and says Hello.
    pub async fn connect(dialer: &Dialer, source: Option<IpAddr>) -> anyhow::Result<Self> {
        let link = dialer.connect(source).await?;
        let mut s = Self {
            link,
            decoder: ChatDecoder::default(),
            next_rid: 1,
            user_id: 0,
            token: String::new(),
            heartbeat_ms: 0,
        };
        match s
            .request(C::Hello(pb::Hello {
                protocol_version: chat_protocol::PROTOCOL_VERSION,
                client_name: "loadgen".into(),
                client_version: env!("CARGO_PKG_VERSION").into(),
                capabilities: vec![],
            }))
            .await?
        {
            S::Welcome(w) => s.heartbeat_ms = w.heartbeat_interval_ms,
            other => bail!("expected Welcome, got {other:?}"),
        }
        Ok(s)
    }

    /// Writes a request and returns its request id.
    pub async fn send(&mut self, body: C) -> anyhow::Result<u64> {
        let rid = self.next_rid;
        self.next_rid += 1;
        let mut out = Vec::new();
        chat::encode(&mut out, rid, body);
        self.write(&out).await?;
        Ok(rid)
    }

    /// Writes encoded frames.
    pub async fn write(&mut self, frames: &[u8]) -> anyhow::Result<()> {
        self.link.writer.write_all(frames).await?;
        Ok(())
    }

    /// The next frame from the server (`None` when it closed).
    pub async fn next_frame(&mut self) -> anyhow::Result<Option<pb::ServerFrame>> {
        loop {
            if let Some(f) = self.decoder.next_frame()? {
                return Ok(Some(f));
            }
            let buf = crate::wire::Decoder::buffer(&mut self.decoder);
            buf.reserve(16 * 1024);
            if self.link.reader.read_buf(buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads until the reply to `rid`, skipping pushes; a server error is
    /// an `Err`.
    pub async fn reply(&mut self, rid: u64) -> anyhow::Result<S> {
        loop {
            let frame = self
                .next_frame()
                .await?
                .context("server closed the connection")?;
            if frame.request_id == rid {
                return chat::expect_ok(frame);
            }
            if let Some(S::GoAway(g)) = frame.body {
                bail!("GoAway {:?}: {}", g.code(), g.message);
            }
        }
    }

    pub async fn request(&mut self, body: C) -> anyhow::Result<S> {
        let rid = self.send(body).await?;
        self.reply(rid).await
    }

    /// Registers a new account and keeps its id and token.
    pub async fn register(&mut self, username: &str) -> anyhow::Result<()> {
        match self
            .request(C::Register(pb::Register {
                username: username.into(),
                password: PASSWORD.into(),
                display_name: username.into(),
                device: Some(pb::DeviceInfo {
                    device_id: "loadgen".into(),
                    platform: "loadgen".into(),
                }),
            }))
            .await
            .with_context(|| format!("registering {username}"))?
        {
            S::AuthOk(a) => {
                self.user_id = a.user_id;
                self.token = a.session_token;
                Ok(())
            }
            other => bail!("expected AuthOk, got {other:?}"),
        }
    }

    /// Hands the connection and anything already buffered to the load
    /// phase.
    pub fn into_parts(self) -> (Link, Box<dyn crate::wire::Decoder>) {
        (self.link, Box::new(self.decoder))
    }
}

/// A name no earlier run against the same server used.
pub fn run_prefix() -> String {
    format!("lg{:x}", rand::random::<u32>())
}
