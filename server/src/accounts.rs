//! Registration, login, session tokens and profiles.
//!
//! Every function here blocks (argon2 takes milliseconds by design, the
//! store may touch the disk): callers run them on the blocking pool.
//! Passwords are hashed with argon2id; session tokens are 256 random bits
//! handed to the client once and stored only as their SHA-256.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use chat_protocol::{ErrorCode, pb};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::clock::Clock;
use crate::config::Config;
use crate::limits::LoginKey;
use crate::push;
use crate::records::{PushRegistration, TokenRecord, UserRecord};
use crate::reply::Refusal;
use crate::storage::writer::Batch;
use crate::storage::writer::Writer;
use crate::storage::{StorageError, Store};

/// Usernames: 3 to 32 of `a-z 0-9 _ . -` (`spec/messages.md`, "Register").
pub fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

fn hasher(memory_kib: u32, iterations: u32) -> Result<Argon2<'static>, Refusal> {
    let params = Params::new(memory_kib, iterations, 1, None)
        .map_err(|e| Refusal::new(ErrorCode::Internal, format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn invalid(message: &str) -> Refusal {
    Refusal::new(ErrorCode::InvalidArgument, message)
}

/// Hash under which a token is stored.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn device_id(device: Option<&pb::DeviceInfo>) -> &str {
    device.map_or("", |d| d.device_id.as_str())
}

/// The device a Register or Login names, or none.
pub fn device_of(device: Option<&pb::DeviceInfo>) -> String {
    device_id(device).to_owned()
}

/// What a login attempt for `username` from `peer` is counted against:
/// the username (one that cannot exist counts as the empty name: it is
/// not kept per name, since it could be a frame long) and the address.
pub fn login_keys(username: &str, peer: Option<IpAddr>) -> Vec<LoginKey> {
    let name = if valid_username(username) {
        username
    } else {
        ""
    };
    let mut keys = vec![LoginKey::Username(name.to_owned())];
    keys.extend(peer.map(LoginKey::Address));
    keys
}

/// The refusal of a login (or password change) while the failed-login
/// limits hold, for `wait` more.
pub(crate) fn too_many(wait: std::time::Duration) -> Refusal {
    Refusal::new(
        ErrorCode::TooManyLoginAttempts,
        "too many failed logins; wait",
    )
    .retry_after(wait.as_millis().min(u128::from(u32::MAX)) as u32)
}

/// Whether `password` matches the stored argon2 `hash`.
fn verify(hash: &str, password: &str) -> Result<bool, Refusal> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| Refusal::new(ErrorCode::Internal, format!("stored hash: {e}")))?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// The argon2id hash of a new password, checked against the rules of
/// Register.
pub(crate) fn new_hash(config: &Config, password: &str) -> Result<String, Refusal> {
    hash_new(
        &hasher(config.argon2_memory_kib, config.argon2_iterations)?,
        password,
    )
}

fn hash_new(hasher: &Argon2<'static>, password: &str) -> Result<String, Refusal> {
    if !(8..=256).contains(&password.len()) {
        return Err(invalid("password must be 8-256 bytes"));
    }
    Ok(hasher
        .hash_password(password.as_bytes())
        .map_err(|e| Refusal::new(ErrorCode::Internal, format!("hashing: {e}")))?
        .to_string())
}

/// Adds the deletion of a token (by its hash) and its index entry, which
/// holds the device's push registration.
fn revoke(batch: &mut Batch, user: u64, hash: Vec<u8>) {
    batch.revoke_token(user, &hash);
}

/// Adds the revocation of every token of `user` but `kept` (a token hash)
/// to `batch`; returns how many.
pub(crate) fn revoke_all(
    store: &Store,
    user: u64,
    kept: Option<&[u8]>,
    batch: &mut Batch,
) -> Result<usize, StorageError> {
    let mut revoked = 0;
    for hash in store.tokens_of(user)? {
        if kept != Some(hash.as_slice()) {
            revoke(batch, user, hash);
            revoked += 1;
        }
    }
    Ok(revoked)
}

/// Erases account `user` (DeleteAccount, `chatd delete-user`): the record
/// becomes its tombstone (the username stays taken, `spec/messages.md`,
/// "DeleteAccount"), then every token is revoked with its push
/// registration, and the last-seen time and the media index are dropped.
/// Returns the ids of the media the user uploaded, whose files the caller
/// removes. The tombstone is written first: a login that checked the
/// password before then withdraws its token (`Accounts::login`).
pub(crate) fn erase(
    store: &Store,
    writer: &Writer,
    user: u64,
) -> Result<Vec<String>, StorageError> {
    let Some(record) = store.user(user)? else {
        return Ok(Vec::new());
    };
    let mut batch = Batch::new();
    batch.put_user(user, &record.tombstone());
    writer.write_blocking(batch)?;
    let mut batch = Batch::new();
    revoke_all(store, user, None, &mut batch)?;
    batch.delete_last_seen(user);
    let media = store.user_media(user)?;
    for id in &media {
        batch.delete_user_media(user, id);
    }
    writer.write_blocking(batch)?;
    Ok(media)
}

/// Disables (or enables) account `user`: a disabled account's logins are
/// refused with ACCOUNT_DISABLED, and disabling revokes every token with
/// its push registration (its sessions are closed by the caller, if a
/// server runs). The record is written first: a login that checked it
/// before then withdraws its token (`Accounts::login`). Returns how many
/// tokens were revoked; none for a deleted account (a tombstone stays one).
pub(crate) fn set_disabled(
    store: &Store,
    writer: &Writer,
    user: u64,
    disabled: bool,
) -> Result<usize, StorageError> {
    let Some(mut record) = store.user(user)?.filter(|r| !r.deleted) else {
        return Ok(0);
    };
    if record.disabled != disabled {
        record.disabled = disabled;
        let mut batch = Batch::new();
        batch.put_user(user, &record);
        writer.write_blocking(batch)?;
    }
    if !disabled {
        return Ok(0);
    }
    let mut batch = Batch::new();
    let revoked = revoke_all(store, user, None, &mut batch)?;
    if !batch.is_empty() {
        writer.write_blocking(batch)?;
    }
    Ok(revoked)
}

/// The accounts handle: what registration, login, tokens and profiles
/// need (the store, the writer, the user id allocator, the clock, the
/// password and token settings) and nothing else; cheap to clone into a
/// blocking closure.
#[derive(Debug, Clone)]
pub struct Accounts {
    store: Store,
    writer: Writer,
    last_user_id: Arc<AtomicU64>,
    /// Cluster mode: this node's number, which the ids it gives out carry
    /// ([`crate::idgen::next_id`]); 0 on a single node.
    node: u16,
    clock: Clock,
    argon2_memory_kib: u32,
    argon2_iterations: u32,
    token_ttl_secs: u64,
}

impl Accounts {
    /// The handle over `store` and `writer`, with the settings of
    /// `config`; user ids continue after `last_user_id`.
    pub fn new(config: &Config, store: Store, writer: Writer, last_user_id: u64) -> Self {
        Self {
            store,
            writer,
            last_user_id: Arc::new(AtomicU64::new(last_user_id)),
            node: config.node_number(),
            clock: config.clock.clone(),
            argon2_memory_kib: config.argon2_memory_kib,
            argon2_iterations: config.argon2_iterations,
            token_ttl_secs: config.token_ttl_secs,
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A fresh user id.
    fn next_user_id(&self) -> u64 {
        crate::idgen::next_id(&self.last_user_id, self.node)
    }

    fn hasher(&self) -> Result<Argon2<'static>, Refusal> {
        hasher(self.argon2_memory_kib, self.argon2_iterations)
    }

    fn new_hash(&self, password: &str) -> Result<String, Refusal> {
        hash_new(&self.hasher()?, password)
    }

    /// Creates a token for `user`, adding its record to `batch`.
    fn issue_token(&self, user: u64, device_id: &str, batch: &mut Batch) -> (String, u64) {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let expires_at_ms = self.now_ms() + self.token_ttl_secs * 1000;
        let record = TokenRecord {
            user_id: user,
            expires_at_ms,
            device_id: device_id.to_owned(),
        };
        let hash = token_hash(&token);
        batch.put_token(&hash, &record);
        (token, expires_at_ms)
    }

    /// The record of a new account, its password hashed (milliseconds of
    /// argon2: run under the shard's hashing permit). Nothing is stored yet:
    /// [`Accounts::create_account`] takes the name.
    pub fn new_account(&self, req: &pb::Register) -> Result<UserRecord, Refusal> {
        if !valid_username(&req.username) {
            return Err(invalid("username must be 3-32 characters of a-z 0-9 _ . -"));
        }
        if req.display_name.chars().count() > 64 {
            return Err(invalid("display name longer than 64 characters"));
        }
        let password_hash = self.new_hash(&req.password)?;
        let display_name = if req.display_name.is_empty() {
            req.username.clone()
        } else {
            req.display_name.clone()
        };
        Ok(UserRecord {
            username: req.username.clone(),
            display_name,
            password_hash,
            created_at_ms: self.now_ms(),
            hide_last_seen: false,
            disabled: false,
            deleted: false,
        })
    }

    /// Stores the account `record` unless its username is taken, and logs it
    /// in on `device_id`. A check-then-write of the name: run only at the
    /// home of [`Key::Username`](crate::home::Key), in its lane.
    pub fn create_account(
        &self,
        record: UserRecord,
        device_id: &str,
    ) -> Result<pb::AuthOk, Refusal> {
        if self.store.user_id_by_name(&record.username)?.is_some() {
            return Err(Refusal::new(ErrorCode::UsernameTaken, "username taken"));
        }
        let user = self.next_user_id();
        let mut batch = Batch::new();
        batch.put_user(user, &record);
        batch.put_username(&record.username, user);
        let (token, expires) = self.issue_token(user, device_id, &mut batch);
        match self
            .writer
            .claim_blocking(&format!("username:{}", record.username), batch)
        {
            Err(crate::storage::StorageError::Taken) => {
                return Err(Refusal::new(ErrorCode::UsernameTaken, "username taken"));
            }
            other => other?,
        };
        Ok(pb::AuthOk {
            user_id: user,
            session_token: token,
            token_expires_at_ms: expires,
            profile: Some(record.profile(user)),
        })
    }

    /// Checks a password and issues a token (milliseconds of argon2: run under
    /// the shard's hashing permit, after the failed-login limits allowed the
    /// attempt). INVALID_CREDENTIALS is the failure the limits count.
    pub fn login(&self, req: &pb::Login) -> Result<pb::AuthOk, Refusal> {
        let refused = || Refusal::new(ErrorCode::InvalidCredentials, "wrong username or password");
        let id = if valid_username(&req.username) {
            self.store.user_id_by_name(&req.username)?
        } else {
            None
        };
        let found = match id {
            Some(id) => self.store.user(id)?.map(|r| (id, r)),
            None => None,
        };
        // A deleted account is a tombstone with no password.
        let found = found.filter(|(_, r)| !r.deleted);
        let Some((user, record)) = found else {
            // Spend the same time as a real check so that timing does not tell
            // which usernames exist.
            let _ = self.hasher()?.hash_password(req.password.as_bytes());
            return Err(refused());
        };
        if !verify(&record.password_hash, &req.password)? {
            return Err(refused());
        }
        // Told only to whoever knows the password.
        if record.disabled {
            return Err(Refusal::new(
                ErrorCode::AccountDisabled,
                "the operator disabled this account",
            ));
        }
        let mut batch = Batch::new();
        let (token, expires) = self.issue_token(user, device_id(req.device.as_ref()), &mut batch);
        self.writer.write_blocking(batch)?;
        // A password change that stored its hash after the check above may
        // have listed the user's tokens before this one was written: the token
        // is withdrawn, as the change would have revoked it.
        // Likewise a disabling or a deletion stored meanwhile.
        let current = self.store.user(user)?;
        let changed = current
            .as_ref()
            .is_none_or(|r| r.password_hash != record.password_hash || r.disabled || r.deleted);
        if changed {
            let mut batch = Batch::new();
            revoke(&mut batch, user, token_hash(&token).to_vec());
            self.writer.write_blocking(batch)?;
            return Err(match current {
                Some(r) if r.disabled && !r.deleted => Refusal::new(
                    ErrorCode::AccountDisabled,
                    "the operator disabled this account",
                ),
                _ => refused(),
            });
        }
        Ok(pb::AuthOk {
            user_id: user,
            session_token: token,
            token_expires_at_ms: expires,
            profile: Some(record.profile(user)),
        })
    }

    /// Validates a token for Resume.
    pub fn resume(&self, token: &str) -> Result<pb::AuthOk, Refusal> {
        let refused = || Refusal::new(ErrorCode::TokenInvalid, "unknown, expired or revoked token");
        let record = self.store.token(&token_hash(token))?.ok_or_else(refused)?;
        if record.expires_at_ms <= self.now_ms() {
            return Err(refused());
        }
        let user = self.store.user(record.user_id)?.ok_or_else(refused)?;
        if user.disabled || user.deleted {
            return Err(refused());
        }
        Ok(pb::AuthOk {
            user_id: record.user_id,
            session_token: token.to_owned(),
            token_expires_at_ms: record.expires_at_ms,
            profile: Some(user.profile(record.user_id)),
        })
    }

    /// Revokes the session's token, or every token of the user.
    pub fn logout(&self, user: u64, token: Option<&str>, all: bool) -> Result<(), Refusal> {
        let mut batch = Batch::new();
        let hashes = if all {
            self.store.tokens_of(user)?
        } else {
            token.map(|t| token_hash(t).to_vec()).into_iter().collect()
        };
        for hash in hashes {
            revoke(&mut batch, user, hash);
        }
        if !batch.is_empty() {
            self.writer.write_blocking(batch)?;
        }
        Ok(())
    }

    /// The username of `user`, which its password changes are counted
    /// against.
    pub fn username(&self, user: u64) -> Result<String, Refusal> {
        let record = self.store.user(user)?;
        Ok(record
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "no such user"))?
            .username)
    }

    /// Checks `user`'s current password and hashes the new one (milliseconds
    /// of argon2: run under the shard's hashing permit); returns the hash
    /// checked against and the new hash. A wrong current password is
    /// INVALID_CREDENTIALS, which the failed-login limits count.
    pub fn check_new_password(
        &self,
        user: u64,
        req: &pb::ChangePassword,
    ) -> Result<(String, String), Refusal> {
        let not_found = || Refusal::new(ErrorCode::NotFound, "no such user");
        let checked = self.store.user(user)?.ok_or_else(not_found)?;
        if !verify(&checked.password_hash, &req.current_password)? {
            return Err(Refusal::new(
                ErrorCode::InvalidCredentials,
                "wrong current password",
            ));
        }
        let new = self.new_hash(&req.new_password)?;
        Ok((checked.password_hash, new))
    }

    /// Replaces `user`'s password hash `checked` by `new`, then revokes every
    /// token of the user but `kept` (the token of the session asking). A
    /// read-modify-write of the user record: run only at the home of
    /// [`Key::User`](crate::home::Key), in its lane, as every change to a
    /// user record, so that a concurrent profile change cannot write the old
    /// hash back.
    pub fn replace_password(
        &self,
        user: u64,
        (checked, new): (String, String),
        kept: Option<&str>,
    ) -> Result<(), Refusal> {
        let not_found = || Refusal::new(ErrorCode::NotFound, "no such user");
        let mut record = self.store.user(user)?.ok_or_else(not_found)?;
        if record.password_hash != checked {
            return Err(Refusal::new(
                ErrorCode::InvalidCredentials,
                "the password was changed meanwhile",
            ));
        }
        record.password_hash = new;
        let mut batch = Batch::new();
        batch.put_user(user, &record);
        self.writer.write_blocking(batch)?;
        // The tokens are listed only once the new hash is stored: a login that
        // checked the old password either wrote its token before this listing
        // (revoked here) or reads the new hash after writing it (and withdraws
        // it, `login`).
        let kept = kept.map(|t| token_hash(t).to_vec());
        let mut batch = Batch::new();
        revoke_all(&self.store, user, kept.as_deref(), &mut batch)?;
        if !batch.is_empty() {
            self.writer.write_blocking(batch)?;
        }
        Ok(())
    }

    /// Checks `user`'s password for DeleteAccount (milliseconds of argon2:
    /// run under the shard's hashing permit); returns the hash checked. A
    /// wrong password is INVALID_CREDENTIALS, which the failed-login limits
    /// count.
    pub fn check_password(&self, user: u64, password: &str) -> Result<String, Refusal> {
        let wrong = || Refusal::new(ErrorCode::InvalidCredentials, "wrong password");
        let record = self
            .store
            .user(user)?
            .filter(|r| !r.deleted)
            .ok_or_else(wrong)?;
        if !verify(&record.password_hash, password)? {
            return Err(wrong());
        }
        Ok(record.password_hash)
    }

    /// Deletes `user`'s account, whose password hash was `checked`
    /// ([`erase`]); returns the media ids to remove. A read-modify-write of
    /// the user record: run only at the home of
    /// [`Key::User`](crate::home::Key), in its lane.
    pub fn delete_account(&self, user: u64, checked: &str) -> Result<Vec<String>, Refusal> {
        let record = self.store.user(user)?;
        if record.as_ref().map(|r| r.password_hash.as_str()) != Some(checked) {
            return Err(Refusal::new(
                ErrorCode::InvalidCredentials,
                "the password was changed meanwhile",
            ));
        }
        Ok(erase(&self.store, &self.writer, user)?)
    }

    /// The id of the account named `username`; NOT_FOUND for none or a
    /// deleted one.
    pub fn user_id(&self, username: &str) -> Result<u64, Refusal> {
        let no_user = || Refusal::new(ErrorCode::NotFound, "no such user");
        let id = if valid_username(username) {
            self.store.user_id_by_name(username)?
        } else {
            None
        };
        let id = id.ok_or_else(no_user)?;
        match self.store.user(id)? {
            Some(r) if !r.deleted => Ok(id),
            _ => Err(no_user()),
        }
    }

    /// Disables or enables `user` ([`set_disabled`]); a read-modify-write
    /// of the user record: run only at the home of
    /// [`Key::User`](crate::home::Key), in its lane.
    pub fn set_disabled(&self, user: u64, disabled: bool) -> Result<usize, Refusal> {
        Ok(set_disabled(&self.store, &self.writer, user, disabled)?)
    }

    /// A user's public profile, by id or username.
    pub fn profile(&self, req: &pb::GetProfile) -> Result<pb::Profile, Refusal> {
        let id = if req.user_id != 0 {
            Some(req.user_id)
        } else if valid_username(&req.username) {
            self.store.user_id_by_name(&req.username)?
        } else {
            None
        };
        let not_found = || Refusal::new(ErrorCode::NotFound, "no such user");
        let id = id.ok_or_else(not_found)?;
        let record = self.store.user(id)?.ok_or_else(not_found)?;
        // A deleted account's username names nobody any more; its id shows
        // that it was deleted.
        if record.deleted && req.user_id == 0 {
            return Err(not_found());
        }
        Ok(record.profile(id))
    }

    /// Answers `RegisterPushToken` (`spec/messages.md`): the device holding
    /// `session_token` is notified at `req.token` from now on, until it logs out
    /// or its session expires. The same device token registered by another of
    /// the user's sessions moves here.
    pub fn register_push_token(
        &self,
        user: u64,
        session_token: &str,
        req: &pb::RegisterPushToken,
    ) -> Result<(), Refusal> {
        if !matches!(req.provider.as_str(), "apns" | "fcm" | "webpush") {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "provider must be apns, fcm or webpush",
            ));
        }
        if req.token.is_empty() || req.token.len() > push::TOKEN_MAX {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                format!("token must be 1-{} bytes", push::TOKEN_MAX),
            ));
        }
        let mine = token_hash(session_token);
        let device_id = match self.store.token(&mine)? {
            Some(t) if t.user_id == user => t.device_id,
            _ => {
                return Err(Refusal::new(
                    ErrorCode::TokenInvalid,
                    "this session's token was revoked",
                ));
            }
        };
        let mut batch = Batch::new();
        for (hash, reg) in self.store.push_registrations(user)? {
            if reg.token == req.token && hash != mine {
                batch.set_push_registration(user, &hash, None);
            }
        }
        let reg = PushRegistration {
            provider: req.provider.clone(),
            token: req.token.clone(),
            device_id,
        };
        batch.set_push_registration(user, &mine, Some(&reg));
        self.writer.write_blocking(batch)?;
        Ok(())
    }

    /// Changes the user's display name and last-seen visibility. A
    /// read-modify-write of the user record: run only at the home of
    /// [`Key::User`](crate::home::Key), in its lane.
    pub fn update_profile(
        &self,
        user: u64,
        req: &pb::UpdateProfile,
    ) -> Result<pb::Profile, Refusal> {
        if req.display_name.chars().count() > 64 {
            return Err(invalid("display name longer than 64 characters"));
        }
        let mut record = self
            .store
            .user(user)?
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "no such user"))?;
        if !req.display_name.is_empty() {
            record.display_name = req.display_name.clone();
        }
        record.hide_last_seen = req.hide_last_seen;
        let mut batch = Batch::new();
        batch.put_user(user, &record);
        self.writer.write_blocking(batch)?;
        Ok(record.profile(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_lowercase_and_bounded() {
        assert!(valid_username("alice_01.x-y"));
        assert!(!valid_username("Al"));
        assert!(!valid_username("Alice"));
        assert!(!valid_username("al ice"));
        assert!(!valid_username(&"a".repeat(33)));
    }
}
