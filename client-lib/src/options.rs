//! Client settings.

use std::time::Duration;

/// How the client behaves. `ClientOptions::default()` suits an app.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Sent in Hello. Default `"chat-client"`.
    pub client_name: String,
    /// Sent in Hello. Default this crate's version.
    pub client_version: String,
    /// Stable per installation. Default: random per `Client`.
    pub device_id: String,
    /// Wait for one reply at most this long. Default 10 s.
    pub request_timeout: Duration,
    /// Reconnect and resume after the connection drops. Default true.
    pub reconnect: bool,
    /// First reconnect delay; doubles per failed attempt up to
    /// `reconnect_max_delay`, with ±50 % jitter. Default 100 ms.
    pub reconnect_min_delay: Duration,
    /// See `reconnect_min_delay`. Default 5 s.
    pub reconnect_max_delay: Duration,
    /// Events buffered for the app before the client stops reading the
    /// socket (backpressure). Default 4096.
    pub event_buffer: usize,
    /// A send is retried (same `client_msg_id`) across reconnects for at
    /// most this long. Default 30 s.
    pub send_retry_timeout: Duration,
    /// Messages per conversation requested per Sync. Default 500.
    pub sync_limit_per_conversation: u32,
    /// Out-of-order pushes held per conversation while a gap is fetched;
    /// beyond, they are dropped and fetched again. Default 10,000.
    pub max_held_per_conversation: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            client_name: "chat-client".into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
            device_id: format!("{:032x}", rand::random::<u128>()),
            request_timeout: Duration::from_secs(10),
            reconnect: true,
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            event_buffer: 4096,
            send_retry_timeout: Duration::from_secs(30),
            sync_limit_per_conversation: 500,
            max_held_per_conversation: 10_000,
        }
    }
}
