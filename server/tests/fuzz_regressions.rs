//! Replays the inputs saved under `server/fuzz/regressions/session/`
//! (crashes the fuzzer found, and hand-made sequences) through the session
//! fuzz target's own check, so that each stays fixed. `.ci/fuzz` explains
//! how a new crash gets here.

#[allow(dead_code, clippy::all)]
#[path = "../fuzz/fuzz_targets/session_check.rs"]
mod session_check;

#[test]
fn saved_session_inputs_pass_the_fuzz_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/session");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("regressions directory") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("input");
        eprintln!("{}", path.display());
        session_check::run(&data);
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}
