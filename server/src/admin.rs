//! Operator commands on the data directory of a stopped server
//! (`chatd set-password`, `list-users`, `list-conversations`,
//! `disable-user`, `enable-user`, `delete-user`). They open the store as the server does,
//! so the store's lock refuses them while the server runs; what they change
//! holds from the server's next start.

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

/// Runs `f` on the store of a stopped server with a writer, then applies
/// the log and persists the store, as a server stop does.
fn with_store<T>(
    config: &Config,
    f: impl FnOnce(&Store, &Writer) -> Result<T, AdminError>,
) -> Result<T, AdminError> {
    let store_dir = config.data_dir.join("store");
    if !store_dir.is_dir() {
        return Err(AdminError::NoStore(store_dir));
    }
    let store = Store::open(&store_dir, &config.data_dir.join("log"))?;
    let (writer, thread) = Writer::start(store.clone(), config.durability, 16)?;
    let result = f(&store, &writer);
    drop(writer);
    thread.join();
    result
}

/// One user as `chatd list-users` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// User id.
    pub id: u64,
    /// Username.
    pub username: String,
    /// Display name.
    pub display_name: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Disabled by the operator.
    pub disabled: bool,
}

/// Every user of a stopped server's data, by id.
pub fn list_users(config: &Config) -> Result<Vec<UserRow>, AdminError> {
    with_store(config, |store, _| {
        Ok(store
            .all_users()?
            .into_iter()
            .map(|(id, r)| UserRow {
                id,
                username: r.username,
                display_name: r.display_name,
                created_at_ms: r.created_at_ms,
                disabled: r.disabled,
            })
            .collect())
    })
}

/// One conversation as `chatd list-conversations` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    /// Conversation id.
    pub id: u64,
    /// `direct`, `group` or `channel`.
    pub kind: &'static str,
    /// Title (empty for direct chats).
    pub title: String,
    /// Members (subscribers included).
    pub members: usize,
    /// Highest seq.
    pub last_seq: u64,
}

/// Every conversation of a stopped server's data, by id.
pub fn list_conversations(config: &Config) -> Result<Vec<ConversationRow>, AdminError> {
    use chat_protocol::pb::ConversationKind;
    with_store(config, |store, _| {
        let mut rows = Vec::new();
        for (id, r) in store.all_conversations()? {
            let kind = match ConversationKind::try_from(r.kind) {
                Ok(ConversationKind::Direct) => "direct",
                Ok(ConversationKind::Group) => "group",
                Ok(ConversationKind::Channel) => "channel",
                _ => "unknown",
            };
            rows.push(ConversationRow {
                id,
                kind,
                title: r.title,
                members: store.members(id)?.len(),
                last_seq: store.last_seq(id)?,
            });
        }
        Ok(rows)
    })
}

/// Disables (or enables) the account `username`. Disabling revokes every
/// session token, so no session of it resumes when the server starts, and
/// refuses its logins with ACCOUNT_DISABLED. Returns how many tokens were
/// revoked.
pub fn set_disabled(config: &Config, username: &str, disabled: bool) -> Result<usize, AdminError> {
    with_store(config, |store, writer| {
        let no_user = || AdminError::Refused(format!("no user named {username:?}"));
        let user = store.user_id_by_name(username)?.ok_or_else(no_user)?;
        if store.user(user)?.is_none_or(|r| r.deleted) {
            return Err(no_user());
        }
        Ok(accounts::set_disabled(store, writer, user, disabled)?)
    })
}

/// Deletes the account `username` as DeleteAccount does
/// ([`accounts::erase`]): a tombstone whose username stays taken, every
/// token and push registration revoked, its media files removed. Returns
/// how many media ids it had.
pub fn delete_user(config: &Config, username: &str) -> Result<usize, AdminError> {
    with_store(config, |store, writer| {
        let no_user = || AdminError::Refused(format!("no user named {username:?}"));
        let user = store.user_id_by_name(username)?.ok_or_else(no_user)?;
        if store.user(user)?.is_none_or(|r| r.deleted) {
            return Err(no_user());
        }
        let media = accounts::erase(store, writer, user)?;
        let dir = config.data_dir.join("media");
        for id in &media {
            crate::media::remove_files(&dir, id)?;
        }
        Ok(media.len())
    })
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
