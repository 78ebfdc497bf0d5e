//! Client settings as a record, with the durations in milliseconds.

use std::time::Duration;

/// How the client behaves; start from [`default_client_options`] and change
/// fields. The meaning of each field is that of `chat_client::ClientOptions`.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ClientOptions {
    /// Sent in Hello.
    pub client_name: String,
    /// Sent in Hello.
    pub client_version: String,
    /// Identifies the installation in Register, Login and Resume; store it
    /// and pass the same value after every app restart.
    pub device_id: String,
    /// Sent with `device_id`, e.g. "android" or "ios".
    pub platform: String,
    /// Longest wait for one reply, and for connecting, in milliseconds.
    pub request_timeout_ms: u64,
    /// Reconnect, resume and re-send after the connection drops.
    pub reconnect: bool,
    /// Nominal first reconnect delay in milliseconds; doubles per failure.
    pub reconnect_min_delay_ms: u64,
    /// Upper bound of the reconnect delay in milliseconds.
    pub reconnect_max_delay_ms: u64,
    /// Events queued for the listener. Memory: up to this many events.
    pub event_buffer: u32,
    /// How long a send keeps retrying one message, in milliseconds.
    pub send_retry_timeout_ms: u64,
    /// Messages per conversation requested per Sync or Resume reply.
    pub sync_limit_per_conversation: u32,
    /// Out-of-order pushes held per conversation while a gap is fetched.
    pub max_held_per_conversation: u32,
    /// PEM certificates trusted as roots for `tls://`, `quic://` and
    /// `wss://`, besides the built-in webpki roots. Empty by default.
    pub trusted_certs_pem: String,
}

/// The defaults of `chat_client::ClientOptions` (a fresh random
/// `device_id`: replace it with the app's stored one).
#[uniffi::export]
pub fn default_client_options() -> ClientOptions {
    chat_client::ClientOptions::default().into()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl From<chat_client::ClientOptions> for ClientOptions {
    fn from(o: chat_client::ClientOptions) -> Self {
        Self {
            client_name: o.client_name,
            client_version: o.client_version,
            device_id: o.device_id,
            platform: o.platform,
            request_timeout_ms: ms(o.request_timeout),
            reconnect: o.reconnect,
            reconnect_min_delay_ms: ms(o.reconnect_min_delay),
            reconnect_max_delay_ms: ms(o.reconnect_max_delay),
            event_buffer: saturating_u32(o.event_buffer),
            send_retry_timeout_ms: ms(o.send_retry_timeout),
            sync_limit_per_conversation: o.sync_limit_per_conversation,
            max_held_per_conversation: saturating_u32(o.max_held_per_conversation),
            trusted_certs_pem: String::from_utf8_lossy(&o.trusted_certs_pem).into_owned(),
        }
    }
}

impl From<ClientOptions> for chat_client::ClientOptions {
    fn from(o: ClientOptions) -> Self {
        Self {
            client_name: o.client_name,
            client_version: o.client_version,
            device_id: o.device_id,
            platform: o.platform,
            request_timeout: Duration::from_millis(o.request_timeout_ms),
            reconnect: o.reconnect,
            reconnect_min_delay: Duration::from_millis(o.reconnect_min_delay_ms),
            reconnect_max_delay: Duration::from_millis(o.reconnect_max_delay_ms),
            // A zero-capacity queue cannot hold the first event.
            event_buffer: (o.event_buffer as usize).max(1),
            send_retry_timeout: Duration::from_millis(o.send_retry_timeout_ms),
            sync_limit_per_conversation: o.sync_limit_per_conversation,
            max_held_per_conversation: o.max_held_per_conversation as usize,
            trusted_certs_pem: o.trusted_certs_pem.into_bytes(),
        }
    }
}
