//! Fuzz target: the streaming frame decoder (see `frame_decoder_check.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "frame_decoder_check.rs"]
mod frame_decoder_check;

fuzz_target!(|data: &[u8]| frame_decoder_check::run(data));
