//! The committed Kotlin, Swift and Python sources are what `generate.sh`
//! produces from this build of the library: regenerates them into a
//! temporary directory and fails on any difference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

/// Every file under `root`, by path relative to it.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("read file"));
            }
        }
    }
    out
}

#[test]
fn committed_bindings_match_the_library() {
    let bindgen = PathBuf::from(env!("CARGO_BIN_EXE_uniffi-bindgen"));
    let lib = support::library();
    let fresh = tempfile::tempdir().expect("temp dir");
    // The same calls as generate.sh.
    for language in ["kotlin", "swift", "python"] {
        let status = Command::new(&bindgen)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "generate",
                "--no-format",
                "--language",
                language,
                "--out-dir",
            ])
            .arg(fresh.path().join(language))
            .arg(&lib)
            .status()
            .expect("run uniffi-bindgen");
        assert!(status.success(), "uniffi-bindgen {language}: {status}");
    }
    let committed = files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("bindings"));
    let generated = files(fresh.path());
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&generated),
        "generated files differ from client-lib/ffi/bindings; run client-lib/ffi/generate.sh"
    );
    for (path, bytes) in &generated {
        assert!(
            committed.get(path) == Some(bytes),
            "{} is out of date; run client-lib/ffi/generate.sh",
            path.display()
        );
    }
}
