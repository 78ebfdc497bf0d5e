//! The tokio runtime every call runs on.
//!
//! `chat-client` spawns its connection, heartbeat and reconnect tasks with
//! `tokio::spawn`, so its futures must run inside a tokio runtime; the
//! foreign side polls futures from its own executor (Kotlin coroutines,
//! Swift tasks, asyncio). Each call is therefore spawned onto this runtime
//! and the foreign executor only awaits the join handle.
//!
//! The runtime starts with the first call and lives until
//! [`shutdown_runtime`]. An app whose language kills foreign threads at exit
//! calls that first: CPython before 3.14 ends a thread that still runs a
//! Python callback (a listener, or the wake-up of an awaited call) once the
//! interpreter is finalizing, and a Rust thread cannot be ended that way
//! without aborting the process.

use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::{Builder, Handle, Runtime};

use crate::error::ClientError;

/// Worker threads of the runtime. The client's work per connection is small
/// (frame codec, bounded queues); two threads keep a slow listener callback
/// from stalling heartbeats.
const WORKER_THREADS: usize = 2;

enum State {
    NotStarted,
    Running(Runtime),
    Stopped,
}

static RUNTIME: Mutex<State> = Mutex::new(State::NotStarted);

/// A handle to the running runtime, starting it on first use.
fn handle() -> Result<Handle, ClientError> {
    let mut state = RUNTIME.lock();
    if let State::NotStarted = *state {
        let runtime = Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("chat-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Io {
                detail: format!("cannot start the client runtime: {e}"),
            })?;
        *state = State::Running(runtime);
    }
    match &*state {
        State::Running(runtime) => Ok(runtime.handle().clone()),
        _ => Err(ClientError::Internal {
            detail: "the client runtime was shut down (shutdown_runtime)".into(),
        }),
    }
}

/// Runs `fut` on the client runtime and waits for its result.
pub(crate) async fn run<T, F>(fut: F) -> Result<T, ClientError>
where
    F: Future<Output = Result<T, ClientError>> + Send + 'static,
    T: Send + 'static,
{
    match handle()?.spawn(fut).await {
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
    Ok(handle()?.spawn(fut))
}

/// Stops the library's runtime: every connection, listener and pending call
/// ends, and the runtime's threads are joined, waiting at most `timeout_ms`
/// for a callback that is still running to return. Calls made afterwards
/// fail with `ClientError::Internal`. Idempotent.
///
/// Call it when the app is done with every client and before the process
/// exits, after closing the clients (`shutdown`). Python apps must: see the
/// module documentation.
#[uniffi::export]
pub fn shutdown_runtime(timeout_ms: u64) {
    let state = std::mem::replace(&mut *RUNTIME.lock(), State::Stopped);
    if let State::Running(runtime) = state {
        if Handle::try_current().is_ok() {
            // Called from a listener callback, on one of the runtime's own
            // threads, which cannot wait for itself.
            runtime.shutdown_background();
        } else {
            runtime.shutdown_timeout(Duration::from_millis(timeout_ms));
        }
    }
}
