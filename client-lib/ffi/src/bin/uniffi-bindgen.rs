//! `uniffi-bindgen`: generates the Kotlin, Swift and Python sources of the
//! library (`generate.sh` runs it in library mode).

fn main() {
    uniffi::uniffi_bindgen_main()
}
