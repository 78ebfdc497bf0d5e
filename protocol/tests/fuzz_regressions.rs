//! Replays the inputs saved under `protocol/fuzz/regressions/frame_decoder/`
//! (crashes the fuzzer found, and hand-made edge cases) through the fuzz
//! target's own check, so that each stays fixed. `.ci/fuzz` explains how a
//! new crash gets here.

#[allow(dead_code, clippy::all)]
#[path = "../fuzz/fuzz_targets/frame_decoder_check.rs"]
mod frame_decoder_check;

#[test]
fn saved_frame_decoder_inputs_pass_the_fuzz_check() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/frame_decoder");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("regressions directory") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("input");
        eprintln!("{}", path.display());
        frame_decoder_check::run(&data);
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}
