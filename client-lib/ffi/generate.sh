#!/usr/bin/env bash
# Regenerates the Kotlin, Swift and Python sources of chat-client-ffi into
# bindings/ (or the directory given as the first argument) from the debug
# build of the library. The sources are committed; tests/bindings_drift.rs
# fails when they differ from what this script produces.
#
# Formatting is off (--no-format): ktlint and swiftformat may or may not be
# installed, and the output must not depend on it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/bindings}"
cd "$here"

cargo build --locked -p chat-client-ffi --lib --bin uniffi-bindgen
target="$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
case "$(uname -s)" in
    Darwin) lib="$target/debug/libchat_client_ffi.dylib" ;;
    *) lib="$target/debug/libchat_client_ffi.so" ;;
esac

for language in kotlin swift python; do
    rm -rf "${out:?}/$language"
    "$target/debug/uniffi-bindgen" generate --no-format \
        --language "$language" --out-dir "$out/$language" "$lib"
done
