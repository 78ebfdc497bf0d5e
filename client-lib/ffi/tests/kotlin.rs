//! The generated Kotlin bindings, compiled with a current Kotlin compiler
//! and run on the JVM with JNA, drive the scenario of the Python test
//! (`tests/kotlin/Scenario.kt`) against a real chatd on 127.0.0.1.
//!
//! Needs a Kotlin distribution (`KOTLIN_HOME`, or `kotlinc` in PATH; `.ci/test`
//! installs npm's `kotlin-compiler`), `java` (Debian's openjdk-17-jdk-headless)
//! and JNA (`JNA_JAR`, default Debian libjna-java's `/usr/share/java/jna.jar`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kotlin distribution: `KOTLIN_HOME`, or the one whose `bin/kotlinc` is
/// in PATH.
fn kotlin_home() -> PathBuf {
    if let Some(home) = std::env::var_os("KOTLIN_HOME") {
        return PathBuf::from(home);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("kotlinc"))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| {
            panic!(
                "no Kotlin compiler: set KOTLIN_HOME or put kotlinc in PATH \
                 (.ci/test installs npm's kotlin-compiler)"
            )
        })
}

#[test]
fn kotlin_scenario_against_a_real_server() {
    let home = kotlin_home();
    let lib = home.join("lib");
    let coroutines = lib.join("kotlinx-coroutines-core-jvm.jar");
    let stdlib = lib.join("kotlin-stdlib.jar");
    let jna = std::env::var_os("JNA_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/java/jna.jar"));
    for jar in [&coroutines, &stdlib, &jna] {
        assert!(jar.is_file(), "{} is missing", jar.display());
    }

    let module = support::module_dir("kotlin/chatd/client/chat_client_ffi.kt");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kotlin/Scenario.kt");
    let jar = module.path().join("scenario.jar");
    let compile_path = std::env::join_paths([&jna, &coroutines]).expect("class path");
    let output = Command::new(home.join("bin/kotlinc"))
        .arg(module.path().join("chat_client_ffi.kt"))
        .arg(&scenario)
        .arg("-nowarn")
        .arg("-cp")
        .arg(&compile_path)
        .arg("-d")
        .arg(&jar)
        .output()
        .expect("run kotlinc");
    support::check(&output);

    let server = support::Server::start();
    let run_path = std::env::join_paths([&jar, &jna, &coroutines, &stdlib]).expect("class path");
    let output = Command::new("java")
        .arg(format!("-Djna.library.path={}", module.path().display()))
        .arg("-cp")
        .arg(&run_path)
        .arg("ScenarioKt")
        .env("CHATD_URL", server.url())
        .output()
        .expect("run java");
    support::check_printing(&output, "kotlin scenario passed");
}
