//! Generates the Rust types for `spec/chat.proto` with prost. The schema is
//! compiled by protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec");
    let proto = spec.join("chat.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [&spec])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
