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

use crate::config::Config;
use crate::context::Context;
use crate::records::{TokenRecord, UserRecord};
use crate::reply::Refusal;
use crate::storage::writer::Batch;
use crate::storage::{StorageError, Store};

/// Usernames: 3 to 32 of `a-z 0-9 _ . -` (`spec/messages.md`, "Register").
pub fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

fn hasher(config: &Config) -> Result<Argon2<'static>, Refusal> {
    let params = Params::new(config.argon2_memory_kib, config.argon2_iterations, 1, None)
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

/// Creates a token for `user`, adding its record to `batch`.
fn issue_token(ctx: &Context, user: u64, device_id: &str, batch: &mut Batch) -> (String, u64) {
    let token = hex::encode(rand::random::<[u8; 32]>());
    let expires_at_ms = ctx.now_ms() + ctx.config.token_ttl_secs * 1000;
    let record = TokenRecord {
        user_id: user,
        expires_at_ms,
        device_id: device_id.to_owned(),
    };
    let hash = token_hash(&token);
    batch.put_token(&hash, &record);
    (token, expires_at_ms)
}

fn device_id(device: Option<&pb::DeviceInfo>) -> &str {
    device.map_or("", |d| d.device_id.as_str())
}

/// Registers a user and logs it in.
pub fn register(ctx: &Context, req: &pb::Register) -> Result<pb::AuthOk, Refusal> {
    if !valid_username(&req.username) {
        return Err(invalid("username must be 3-32 characters of a-z 0-9 _ . -"));
    }
    if req.display_name.chars().count() > 64 {
        return Err(invalid("display name longer than 64 characters"));
    }
    let password_hash = new_hash(&ctx.config, &req.password)?;
    let display_name = if req.display_name.is_empty() {
        req.username.clone()
    } else {
        req.display_name.clone()
    };
    let record = UserRecord {
        username: req.username.clone(),
        display_name,
        password_hash,
        created_at_ms: ctx.now_ms(),
        hide_last_seen: false,
    };
    // Check-then-write of the unique name under the catalog lock.
    let _guard = ctx.catalog.lock();
    if ctx.store.user_id_by_name(&req.username)?.is_some() {
        return Err(Refusal::new(ErrorCode::UsernameTaken, "username taken"));
    }
    let user = ctx.next_user_id();
    let mut batch = Batch::new();
    batch.put_user(user, &record);
    batch.put_username(&req.username, user);
    let (token, expires) = issue_token(ctx, user, device_id(req.device.as_ref()), &mut batch);
    ctx.writer.write_blocking(batch)?;
    Ok(pb::AuthOk {
        user_id: user,
        session_token: token,
        token_expires_at_ms: expires,
        profile: Some(record.profile(user)),
    })
}

/// Checks a password and issues a token. Failed attempts are counted per
/// username and per `peer` address; past the limits, attempts are refused
/// without checking the password.
pub fn login(ctx: &Context, req: &pb::Login, peer: Option<IpAddr>) -> Result<pb::AuthOk, Refusal> {
    let now = ctx.config.clock.now();
    // A name that cannot exist is not kept per username (it could be up to a
    // frame long); it still counts against the address.
    let name = if valid_username(&req.username) {
        req.username.as_str()
    } else {
        ""
    };
    ctx.logins.lock().check(name, peer, now).map_err(too_many)?;
    let result = check_password(ctx, req);
    if matches!(&result, Err(r) if r.code == ErrorCode::InvalidCredentials) {
        ctx.logins.lock().failed(name, peer, now);
    }
    result
}

/// The refusal of a login (or password change) while the failed-login
/// limits hold, for `wait` more.
fn too_many(wait: std::time::Duration) -> Refusal {
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
    if !(8..=256).contains(&password.len()) {
        return Err(invalid("password must be 8-256 bytes"));
    }
    Ok(hasher(config)?
        .hash_password(password.as_bytes())
        .map_err(|e| Refusal::new(ErrorCode::Internal, format!("hashing: {e}")))?
        .to_string())
}

fn check_password(ctx: &Context, req: &pb::Login) -> Result<pb::AuthOk, Refusal> {
    let refused = || Refusal::new(ErrorCode::InvalidCredentials, "wrong username or password");
    let id = if valid_username(&req.username) {
        ctx.store.user_id_by_name(&req.username)?
    } else {
        None
    };
    let found = match id {
        Some(id) => ctx.store.user(id)?.map(|r| (id, r)),
        None => None,
    };
    let Some((user, record)) = found else {
        // Spend the same time as a real check so that timing does not tell
        // which usernames exist.
        let _ = hasher(&ctx.config)?.hash_password(req.password.as_bytes());
        return Err(refused());
    };
    if !verify(&record.password_hash, &req.password)? {
        return Err(refused());
    }
    let mut batch = Batch::new();
    let (token, expires) = issue_token(ctx, user, device_id(req.device.as_ref()), &mut batch);
    ctx.writer.write_blocking(batch)?;
    // A password change that stored its hash after the check above may
    // have listed the user's tokens before this one was written: the token
    // is withdrawn, as the change would have revoked it.
    let current = ctx.store.user(user)?.map(|r| r.password_hash);
    if current.as_deref() != Some(record.password_hash.as_str()) {
        let mut batch = Batch::new();
        revoke(&mut batch, user, token_hash(&token).to_vec());
        ctx.writer.write_blocking(batch)?;
        return Err(refused());
    }
    Ok(pb::AuthOk {
        user_id: user,
        session_token: token,
        token_expires_at_ms: expires,
        profile: Some(record.profile(user)),
    })
}

/// Validates a token for Resume.
pub fn resume(ctx: &Context, token: &str) -> Result<pb::AuthOk, Refusal> {
    let refused = || Refusal::new(ErrorCode::TokenInvalid, "unknown, expired or revoked token");
    let record = ctx.store.token(&token_hash(token))?.ok_or_else(refused)?;
    if record.expires_at_ms <= ctx.now_ms() {
        return Err(refused());
    }
    let user = ctx.store.user(record.user_id)?.ok_or_else(refused)?;
    Ok(pb::AuthOk {
        user_id: record.user_id,
        session_token: token.to_owned(),
        token_expires_at_ms: record.expires_at_ms,
        profile: Some(user.profile(record.user_id)),
    })
}

/// Revokes the session's token, or every token of the user.
pub fn logout(ctx: &Context, user: u64, token: Option<&str>, all: bool) -> Result<(), Refusal> {
    let mut batch = Batch::new();
    let hashes = if all {
        ctx.store.tokens_of(user)?
    } else {
        token.map(|t| token_hash(t).to_vec()).into_iter().collect()
    };
    for hash in hashes {
        revoke(&mut batch, user, hash);
    }
    if !batch.is_empty() {
        ctx.writer.write_blocking(batch)?;
    }
    Ok(())
}

/// Adds the deletion of a token (by its hash) and its index entry, which
/// holds the device's push registration.
fn revoke(batch: &mut Batch, user: u64, hash: Vec<u8>) {
    batch.revoke_token(user, &hash);
}

/// Replaces the password of `user`, whose session holds `token`, and
/// revokes every other token of the user. A wrong `current_password`
/// counts as a failed login for the username and `peer`.
pub fn change_password(
    ctx: &Context,
    user: u64,
    token: Option<&str>,
    req: &pb::ChangePassword,
    peer: Option<IpAddr>,
) -> Result<(), Refusal> {
    let not_found = || Refusal::new(ErrorCode::NotFound, "no such user");
    let checked = ctx.store.user(user)?.ok_or_else(not_found)?;
    let now = ctx.config.clock.now();
    let name = checked.username.as_str();
    ctx.logins.lock().check(name, peer, now).map_err(too_many)?;
    if !verify(&checked.password_hash, &req.current_password)? {
        ctx.logins.lock().failed(name, peer, now);
        return Err(Refusal::new(
            ErrorCode::InvalidCredentials,
            "wrong current password",
        ));
    }
    let password_hash = new_hash(&ctx.config, &req.new_password)?;
    let kept = token.map(|t| token_hash(t).to_vec());
    // The record is read again and written under the catalog lock, which
    // every change to a user record takes, so that a concurrent profile
    // change cannot write the old hash back.
    let _guard = ctx.catalog.lock();
    let mut record = ctx.store.user(user)?.ok_or_else(not_found)?;
    if record.password_hash != checked.password_hash {
        return Err(Refusal::new(
            ErrorCode::InvalidCredentials,
            "the password was changed meanwhile",
        ));
    }
    record.password_hash = password_hash;
    let mut batch = Batch::new();
    batch.put_user(user, &record);
    ctx.writer.write_blocking(batch)?;
    drop(_guard);
    // The tokens are listed only once the new hash is stored: a login that
    // checked the old password either wrote its token before this listing
    // (revoked here) or reads the new hash after writing it (and withdraws
    // it, `check_password`).
    let mut batch = Batch::new();
    revoke_all(&ctx.store, user, kept.as_deref(), &mut batch)?;
    if !batch.is_empty() {
        ctx.writer.write_blocking(batch)?;
    }
    Ok(())
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

/// A user's public profile, by id or username.
pub fn profile(ctx: &Context, req: &pb::GetProfile) -> Result<pb::Profile, Refusal> {
    let id = if req.user_id != 0 {
        Some(req.user_id)
    } else if valid_username(&req.username) {
        ctx.store.user_id_by_name(&req.username)?
    } else {
        None
    };
    let not_found = || Refusal::new(ErrorCode::NotFound, "no such user");
    let id = id.ok_or_else(not_found)?;
    let record = ctx.store.user(id)?.ok_or_else(not_found)?;
    Ok(record.profile(id))
}

/// Changes the user's display name and last-seen visibility.
pub fn update_profile(
    ctx: &Context,
    user: u64,
    req: &pb::UpdateProfile,
) -> Result<pb::Profile, Refusal> {
    if req.display_name.chars().count() > 64 {
        return Err(invalid("display name longer than 64 characters"));
    }
    // Read-modify-write of the record: under the catalog lock, as every
    // change to a user record.
    let _guard = ctx.catalog.lock();
    let mut record = ctx
        .store
        .user(user)?
        .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "no such user"))?;
    if !req.display_name.is_empty() {
        record.display_name = req.display_name.clone();
    }
    record.hide_last_seen = req.hide_last_seen;
    let mut batch = Batch::new();
    batch.put_user(user, &record);
    ctx.writer.write_blocking(batch)?;
    Ok(record.profile(user))
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
