//! Operator commands on the data directory of a stopped server
//! (`chatd set-password`). They open the store as the server does, so the
//! store's lock refuses them while the server runs.

use crate::accounts;
use crate::config::Config;
use crate::storage::writer::{Batch, Writer};
use crate::storage::{StorageError, Store};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// `data_dir` holds no store.
    #[error("no store in {0} (check data_dir)")]
    NoStore(std::path::PathBuf),
    /// The store could not be opened or written; a running server holds
    /// its lock.
    #[error("the store (is the server still running?): {0}")]
    Storage(#[from] StorageError),
    /// The storage threads could not be started.
    #[error("starting the storage writer: {0}")]
    Io(#[from] std::io::Error),
    /// The request itself is refused.
    #[error("{0}")]
    Refused(String),
}

/// Sets the password of `username` and signs the user out everywhere:
/// every session token is revoked, with its push registration. Returns how
/// many tokens were revoked.
pub fn set_password(config: &Config, username: &str, password: &str) -> Result<usize, AdminError> {
    let store_dir = config.data_dir.join("store");
    if !store_dir.is_dir() {
        return Err(AdminError::NoStore(store_dir));
    }
    let store = Store::open(&store_dir, &config.data_dir.join("log"))?;
    let (writer, thread) = Writer::start(store.clone(), config.durability, 16)?;
    let result = (|| {
        let no_user = || AdminError::Refused(format!("no user named {username:?}"));
        let user = store.user_id_by_name(username)?.ok_or_else(no_user)?;
        let mut record = store.user(user)?.ok_or_else(no_user)?;
        record.password_hash =
            accounts::new_hash(config, password).map_err(|r| AdminError::Refused(r.message))?;
        let mut batch = Batch::new();
        batch.put_user(user, &record);
        let revoked = accounts::revoke_all(&store, user, None, &mut batch)?;
        writer.write_blocking(batch)?;
        Ok(revoked)
    })();
    // Applies the log to the store and persists it, as a server stop does.
    drop(writer);
    thread.join();
    result
}
