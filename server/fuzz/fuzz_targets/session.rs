//! Fuzz target: the session state machine (see `session_check.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "session_check.rs"]
mod session_check;

fuzz_target!(|data: &[u8]| session_check::run(data));
