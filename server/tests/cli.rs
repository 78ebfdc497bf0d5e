//! The `chatd` binary's configuration handling: `--print-config` prints the
//! effective configuration (file, environment and flags applied), and a
//! file with a key chatd does not know is refused with the key named.

use std::process::{Command, Output};

fn chatd(args: &[&str], config: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chatd.toml");
    std::fs::write(&path, config).expect("write config");
    Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_remove("CHATD_SHARDS")
        .env("CHATD_LOG", "error")
        .output()
        .expect("run chatd")
}

#[test]
fn print_config_shows_file_and_flags_applied() {
    let out = chatd(
        &["--print-config", "--shards", "3"],
        "max_group_members = 250\npush_gateway_token = \"hunter2\"\n",
    );
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    assert!(printed.contains("\nmax_group_members = 250\n"), "{printed}");
    assert!(printed.contains("\nshards = 3\n"), "{printed}");
    assert!(
        printed.contains("\n# group size limit (default: 500)\n"),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"), "{printed}");
    // What it prints is a configuration file chatd accepts.
    let again = chatd(&["--print-config"], &printed);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        printed.replace(
            "# push_gateway_token is set (not shown)",
            "# push_gateway_token ="
        )
    );
}

#[test]
fn an_unknown_key_is_refused_with_its_name() {
    let out = chatd(&["--print-config"], "max_group_membres = 250\n");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_group_membres"), "{err}");
    assert!(out.stdout.is_empty());
}
