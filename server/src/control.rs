//! The control socket: commands an operator sends a running server
//! (`chatd backup`), over the Unix socket `data_dir/control.sock`.
//!
//! Only the server's own user can connect: the socket is created with mode
//! 0600 inside the data directory. A command is one line of UTF-8 (at most
//! [`MAX_COMMAND_BYTES`]); the answer is one line, `ok …` or `error …`.
//! Commands run one at a time on the control thread, never on a shard.
//!
//! | command | answer |
//! |---|---|
//! | `backup DEST` | `ok acknowledged=N items=N segments=N log_bytes=N media_files=N`: the server copied its data into the new directory `DEST` (absolute), holding every commit through `acknowledged` ([`backup`]) |
//! | `disable-user NAME` | `ok user=ID tokens_revoked=N`: the account's logins are refused with ACCOUNT_DISABLED, its tokens revoked and its sessions closed, on every node |
//! | `enable-user NAME` | `ok user=ID tokens_revoked=0`: the account logs in again |
//!
//! Account commands run on a shard, like a session's request
//! ([`ShardMsg::Operator`]); the control thread waits for the answer.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::mesh::{Mesh, link_source};
use crate::shard_msg::{OperatorJob, OperatorOp, ShardMsg};
use crate::storage::Store;
use crate::storage::backup::copy_file;

/// The control socket's file name in the data directory.
pub const SOCKET: &str = "control.sock";

/// Longest command line read (4 KiB).
pub const MAX_COMMAND_BYTES: u64 = 4096;

/// Time a connected client has to send its command.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a shard to take and answer an account command.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The destination is not a new directory.
    #[error("{0}")]
    Destination(String),
    /// Copying failed; what was written to the destination is incomplete.
    #[error("copying failed (the destination is incomplete): {0}")]
    Copy(#[from] crate::storage::StorageError),
    /// Copying media or keys failed.
    #[error("copying failed (the destination is incomplete): {0}")]
    Io(#[from] io::Error),
}

/// What [`backup`] copied.
#[derive(Debug, Clone, Copy, Default)]
pub struct BackedUp {
    /// The store and log (see [`crate::storage::backup`]).
    pub store: crate::storage::backup::Copied,
    /// Media files and their content types.
    pub media_files: usize,
}

/// Copies the data of a running server from `data_dir` into `dest`, a new
/// (absent or empty) directory that then works as a `data_dir` of its own:
/// the store and log (consistent: every commit acknowledged before the
/// call, see [`crate::storage::backup`]), then media files, the media URL
/// signing key and the TLS files. Media are copied after the store, so
/// every file a copied message refers to is there (a file is in place
/// before its upload is answered). Blocking.
pub fn backup(
    store: &Store,
    data_dir: &Path,
    dest: &Path,
    stop: &AtomicBool,
) -> Result<BackedUp, BackupError> {
    if !dest.is_absolute() {
        return Err(BackupError::Destination(format!(
            "{} is not an absolute path",
            dest.display()
        )));
    }
    if dest.exists() {
        let empty = std::fs::read_dir(dest)
            .map_err(|e| BackupError::Destination(format!("{}: {e}", dest.display())))?
            .next()
            .is_none();
        if !empty {
            return Err(BackupError::Destination(format!(
                "{} exists and is not empty",
                dest.display()
            )));
        }
    }
    let inside = match (data_dir.canonicalize(), resolved(dest)) {
        (Ok(data_dir), Some(dest)) => dest.starts_with(data_dir),
        _ => false,
    };
    if inside {
        return Err(BackupError::Destination(format!(
            "{} is inside the data directory",
            dest.display()
        )));
    }
    std::fs::create_dir_all(dest)?;
    let store = store.backup(&dest.join("store"), &dest.join("log"), stop)?;
    let mut media_files = 0;
    let media = data_dir.join("media");
    if media.is_dir() {
        let to = dest.join("media");
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(&media)? {
            let entry = entry?;
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            // Uploads in progress and half-written type files.
            if name_str.contains(".part-") || name_str.ends_with(".tmp") {
                continue;
            }
            if !entry.file_type()?.is_file() {
                continue;
            }
            match copy_file(&entry.path(), &to.join(&name)) {
                Ok(_) => media_files += 1,
                // Removed since the listing (a failed upload's leftovers).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        crate::storage::log::sync_dir(&to)?;
    }
    for file in ["media.key", "tls/cert.pem", "tls/key.pem"] {
        let from = data_dir.join(file);
        if from.is_file() {
            let to = dest.join(file);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            copy_file(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::metadata(&from)?.permissions())?;
        }
    }
    crate::storage::log::sync_dir(dest)?;
    Ok(BackedUp { store, media_files })
}

/// `path` with symbolic links resolved, for a path that may not exist yet:
/// its nearest existing ancestor resolved, the rest appended.
fn resolved(path: &Path) -> Option<PathBuf> {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        if let Ok(real) = at.canonicalize() {
            return Some(rest.iter().rev().fold(real, |p, part| p.join(part)));
        }
        rest.push(at.file_name()?);
        at = at.parent()?;
    }
}

/// The running control thread.
#[derive(Debug)]
pub struct Control {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Control {
    /// Listens on `data_dir/control.sock`. The store's lock is held, so no
    /// other server uses this data directory: a socket file left by one
    /// that crashed is replaced.
    pub fn start(store: Store, mesh: Arc<Mesh<ShardMsg>>, data_dir: &Path) -> io::Result<Self> {
        let path = data_dir.join(SOCKET);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let data_dir = data_dir.to_path_buf();
            thread::Builder::new()
                .name("chatd-control".into())
                .spawn(move || serve(&listener, &store, &mesh, &data_dir, &stop))?
        };
        Ok(Self {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (a backup in progress gives up) and removes the
    /// socket. Dropping it does the same.
    pub fn stop(self) {}
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(
    listener: &UnixListener,
    store: &Store,
    mesh: &Mesh<ShardMsg>,
    data_dir: &Path,
    stop: &AtomicBool,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        let answer = match read_command(&conn) {
            Ok(line) => run(&line, store, mesh, data_dir, stop),
            Err(e) => format!("error {e}"),
        };
        let _ = conn.write_all(format!("{answer}\n").as_bytes());
    }
}

fn read_command(conn: &UnixStream) -> io::Result<String> {
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(conn.take(MAX_COMMAND_BYTES)).read_line(&mut line)?;
    match line.strip_suffix('\n') {
        Some(line) => Ok(line.to_owned()),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a command is one line of at most {MAX_COMMAND_BYTES} bytes"),
        )),
    }
}

fn run(
    line: &str,
    store: &Store,
    mesh: &Mesh<ShardMsg>,
    data_dir: &Path,
    stop: &AtomicBool,
) -> String {
    let (command, argument) = line.split_once(' ').unwrap_or((line, ""));
    match command {
        "backup" if !argument.is_empty() => {
            let dest = Path::new(argument);
            tracing::info!(dest = %dest.display(), "backup started");
            match backup(store, data_dir, dest, stop) {
                Ok(done) => {
                    tracing::info!(
                        dest = %dest.display(),
                        acknowledged = done.store.acknowledged,
                        segments = done.store.segments,
                        "backup done"
                    );
                    format!(
                        "ok acknowledged={} items={} segments={} log_bytes={} media_files={}",
                        done.store.acknowledged,
                        done.store.items,
                        done.store.segments,
                        done.store.log_bytes,
                        done.media_files
                    )
                }
                Err(e) => {
                    tracing::error!(dest = %dest.display(), cause = %e, "backup failed");
                    format!("error {e}")
                }
            }
        }
        "backup" => "error usage: backup DEST".into(),
        "disable-user" | "enable-user" if !argument.is_empty() => {
            let disabled = command == "disable-user";
            let op = OperatorOp::SetDisabled {
                username: argument.to_owned(),
                disabled,
            };
            let answer = operate(mesh, op, stop);
            tracing::info!(user = argument, disabled, %answer, "operator command");
            answer
        }
        "disable-user" | "enable-user" => format!("error usage: {command} USERNAME"),
        other => {
            format!("error unknown command {other:?}; known: backup, disable-user, enable-user")
        }
    }
}

/// Hands `op` to shard 0 over the cluster link's rings (any thread may
/// push to a ring) and waits for its answer: at most [`OPERATOR_TIMEOUT`],
/// or until the server stops.
fn operate(mesh: &Mesh<ShardMsg>, op: OperatorOp, stop: &AtomicBool) -> String {
    let deadline = Instant::now() + OPERATOR_TIMEOUT;
    let (answer, answered) = std::sync::mpsc::sync_channel(1);
    let mut msg = ShardMsg::Operator(OperatorJob { op, answer });
    let src = link_source(mesh.nr_shards());
    while let Err(back) = mesh.try_send(src, 0, msg) {
        if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
            return "error the server is too busy to take the command; try again".into();
        }
        msg = back;
        thread::sleep(Duration::from_millis(1));
    }
    loop {
        match answered.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(done)) => return format!("ok {done}"),
            Ok(Err(e)) => return format!("error {e}"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return "error the server stopped before answering".into();
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::Relaxed) {
                    return "error the server is stopping".into();
                }
                if Instant::now() >= deadline {
                    return format!(
                        "error no answer within {} s; the command may still take effect",
                        OPERATOR_TIMEOUT.as_secs()
                    );
                }
            }
        }
    }
}

/// Sends `command` to the server running on `data_dir` and returns its
/// answer without the `ok ` prefix, or the error it gave.
pub fn request(data_dir: &Path, command: &str) -> io::Result<String> {
    let path = data_dir.join(SOCKET);
    let mut conn = UnixStream::connect(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "connecting to {} (is the server running with this data_dir?): {e}",
                path.display()
            ),
        )
    })?;
    conn.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(conn).read_line(&mut answer)?;
    let answer = answer.trim_end();
    if let Some(ok) = answer.strip_prefix("ok") {
        Ok(ok.trim_start().to_owned())
    } else {
        Err(io::Error::other(
            answer
                .strip_prefix("error ")
                .unwrap_or(if answer.is_empty() {
                    "the server closed the connection without an answer"
                } else {
                    answer
                })
                .to_owned(),
        ))
    }
}
