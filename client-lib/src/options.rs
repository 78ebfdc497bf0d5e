//! Client settings.

use std::time::Duration;

/// How the client behaves. `ClientOptions::default()` suits an app; build
/// variations with struct update syntax:
///
/// ```
/// # use std::time::Duration;
/// let options = chat_client::ClientOptions {
///     device_id: "3f2c…stored-per-install".into(),
///     request_timeout: Duration::from_secs(5),
///     ..Default::default()
/// };
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Sent in Hello. Default `"chat-client"`.
    pub client_name: String,
    /// Sent in Hello. Default this crate's version.
    pub client_version: String,
    /// Identifies the installation in Register, Login and Resume; keep it
    /// stable across app restarts. Default: random per `ClientOptions`
    /// value (so per process, unless the app stores and restores it).
    pub device_id: String,
    /// Sent with `device_id`. Default the OS name (`std::env::consts::OS`).
    pub platform: String,
    /// Longest wait for one reply, including the wait for a reconnect when
    /// the request is issued while disconnected. Also bounds connecting and
    /// the Hello handshake. Default 10 s.
    pub request_timeout: Duration,
    /// Reconnect, resume and re-send after the connection drops. Default
    /// true. When false, the first disconnect ends the client.
    pub reconnect: bool,
    /// Nominal delay before the first reconnect attempt; it doubles per
    /// failed attempt up to `reconnect_max_delay`, and each actual delay is
    /// drawn from `[nominal / 2, nominal]`. Default 100 ms.
    pub reconnect_min_delay: Duration,
    /// Upper bound of the reconnect delay. Default 5 s.
    pub reconnect_max_delay: Duration,
    /// Events queued for the app ([`Events`](crate::Events)). When the queue
    /// is full the client waits for the app (typing and presence events are
    /// dropped instead), and after a further fixed buffer of server pushes it
    /// stops reading the socket. Memory: up to this many events (messages
    /// up to `Welcome.max_message_bytes` each). Default 4096.
    pub event_buffer: usize,
    /// How long [`Client::send`](crate::Client::send) keeps retrying one
    /// message (with the same `client_msg_id`) across reconnects and
    /// retryable refusals. Default 30 s.
    pub send_retry_timeout: Duration,
    /// Messages per conversation requested per Sync or Resume reply; the rest
    /// of a longer gap is fetched with GetHistory. Default 500.
    pub sync_limit_per_conversation: u32,
    /// Out-of-order pushes held per conversation while a gap before them is
    /// fetched. Beyond this, pushes are not held but fetched again with the
    /// gap. Default 10,000.
    pub max_held_per_conversation: usize,
    /// Certificates (PEM, one or more blocks) trusted as roots for
    /// `tls://`, `quic://` and `wss://`, besides the built-in webpki roots
    /// (Mozilla's list). For a development server with a generated
    /// certificate, the contents of its `data_dir/tls/cert.pem`
    /// ([`ClientOptions::trust_cert_file`]). Default empty.
    pub trusted_certs_pem: Vec<u8>,
}

impl ClientOptions {
    /// Adds the PEM certificates in `path` to
    /// [`ClientOptions::trusted_certs_pem`].
    pub fn trust_cert_file(mut self, path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let pem = std::fs::read(path)?;
        self.trusted_certs_pem.extend_from_slice(&pem);
        self.trusted_certs_pem.push(b'\n');
        Ok(self)
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            client_name: "chat-client".into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
            device_id: format!("{:032x}", rand::random::<u128>()),
            platform: std::env::consts::OS.into(),
            request_timeout: Duration::from_secs(10),
            reconnect: true,
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            event_buffer: 4096,
            send_retry_timeout: Duration::from_secs(30),
            sync_limit_per_conversation: 500,
            max_held_per_conversation: 10_000,
            trusted_certs_pem: Vec::new(),
        }
    }
}
