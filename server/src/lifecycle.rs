//! The server's life as every thread sees it: whether shutdown has begun,
//! and whether storage failed (which begins it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// A handle on the server's shutdown state, shared by its threads.
#[derive(Debug, Clone)]
pub struct Lifecycle(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    shutdown: watch::Sender<bool>,
    failed: AtomicBool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A running server's.
    pub fn new() -> Self {
        let (shutdown, _) = watch::channel(false);
        Self(Arc::new(Inner {
            shutdown,
            failed: AtomicBool::new(false),
        }))
    }

    /// Begins shutting down. `send_replace` stores the value even when
    /// nobody has subscribed yet (a shutdown right after start).
    pub fn shut_down(&self) {
        self.0.shutdown.send_replace(true);
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        *self.0.shutdown.borrow()
    }

    /// Flips to `true` when shutdown begins.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.shutdown.subscribe()
    }

    /// Stops the server after a storage failure: acknowledged data is safe,
    /// but nothing new can be made durable.
    pub fn fail(&self) {
        if !self.0.failed.swap(true, Ordering::SeqCst) {
            tracing::error!("storage failed; shutting down");
            self.shut_down();
        }
    }

    /// Whether storage failed.
    pub fn failed(&self) -> bool {
        self.0.failed.load(Ordering::Relaxed)
    }
}
