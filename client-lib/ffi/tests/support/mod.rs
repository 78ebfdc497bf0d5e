//! A real chatd for the foreign-language scenarios, and the generated
//! module next to the built library.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use chatd::config::Config;
use chatd::server::ServerHandle;

/// A chatd on 127.0.0.1 with free ports and a temporary data directory.
pub struct Server {
    handle: Option<ServerHandle>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let handle = ServerHandle::start(Config::for_tests(dir.path())).expect("start chatd");
        Self {
            handle: Some(handle),
            _dir: dir,
        }
    }

    /// The `tcp://` URL of the server.
    pub fn url(&self) -> String {
        let handle = self.handle.as_ref().expect("running");
        format!("tcp://{}", handle.tcp_addr())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown();
        }
    }
}

/// The built cdylib of this crate. `cargo test` builds the crate's rlib
/// for its tests but not always the cdylib, so a missing one is built
/// here, once per test binary, with the profile of the running tests.
pub fn library() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let bindgen = PathBuf::from(env!("CARGO_BIN_EXE_uniffi-bindgen"));
            let lib = bindgen
                .with_file_name(format!("{}chat_client_ffi", std::env::consts::DLL_PREFIX))
                .with_extension(std::env::consts::DLL_EXTENSION);
            if !lib.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut cmd = std::process::Command::new(cargo);
                cmd.args(["build", "--locked", "-p", "chat-client-ffi", "--lib"]);
                if bindgen.parent().is_some_and(|d| d.ends_with("release")) {
                    cmd.arg("--release");
                }
                let status = cmd
                    .status()
                    .expect("running cargo build -p chat-client-ffi");
                assert!(status.success(), "building chat-client-ffi failed");
            }
            assert!(lib.exists(), "{} was not built", lib.display());
            lib
        })
        .clone()
}

/// A temporary directory holding the committed binding source `source`
/// (relative to `bindings/`) and the library it loads from its own
/// directory.
pub fn module_dir(source: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bindings")
        .join(source);
    let name = src.file_name().expect("file name");
    std::fs::copy(&src, dir.path().join(name)).expect("copy binding source");
    let lib = library();
    std::fs::copy(&lib, dir.path().join(lib.file_name().expect("file name")))
        .expect("copy library");
    dir
}

/// Fails with the program's output unless it exited successfully.
pub fn check(output: &std::process::Output) {
    check_printing(output, "");
}

/// Fails with the program's output unless it exited successfully and
/// printed `line` (the scenario's last step).
pub fn check_printing(output: &std::process::Output, line: &str) {
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains(line),
        "scenario failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
