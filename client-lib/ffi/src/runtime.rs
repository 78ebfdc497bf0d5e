//! The tokio runtime every call runs on.
//!
//! `chat-client` spawns its connection, heartbeat and reconnect tasks with
//! `tokio::spawn`, so its futures must run inside a tokio runtime; the
//! foreign side polls futures from its own executor (Kotlin coroutines,
//! Swift tasks, asyncio). Each call is therefore spawned onto this runtime
//! and the foreign executor only awaits the join handle.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

use crate::error::ClientError;

/// Worker threads of the runtime. The client's work per connection is small
/// (frame codec, bounded queues); two threads keep a slow listener callback
/// from stalling heartbeats.
const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

fn runtime() -> Result<&'static Runtime, ClientError> {
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .thread_name("chat-client")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ClientError::Io {
            detail: format!("cannot start the client runtime: {e}"),
        })
}

/// Runs `fut` on the client runtime and waits for its result.
pub(crate) async fn run<T, F>(fut: F) -> Result<T, ClientError>
where
    F: Future<Output = Result<T, ClientError>> + Send + 'static,
    T: Send + 'static,
{
    match runtime()?.spawn(fut).await {
        Ok(result) => result,
        Err(e) => Err(ClientError::Internal {
            detail: format!("client task failed: {e}"),
        }),
    }
}

/// Spawns a background task on the client runtime.
pub(crate) fn spawn<F>(fut: F) -> Result<tokio::task::JoinHandle<()>, ClientError>
where
    F: Future<Output = ()> + Send + 'static,
{
    Ok(runtime()?.spawn(fut))
}
