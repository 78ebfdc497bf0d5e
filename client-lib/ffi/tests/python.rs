//! The generated Python module drives two users through a real chatd on
//! 127.0.0.1 (`tests/python/scenario.py`): register, a direct chat,
//! history, a reconnect with resume and sync, receipts, and a non-member's
//! send refused with the typed error.

mod support;

#[test]
fn python_scenario_against_a_real_server() {
    let server = support::Server::start();
    let module = support::module_dir("python/chat_client_ffi.py");
    let scenario =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/scenario.py");
    let output = std::process::Command::new("python3")
        .arg(&scenario)
        .env("PYTHONPATH", module.path())
        .env("CHATD_URL", server.url())
        .output()
        .expect("run python3");
    support::check_printing(&output, "python scenario passed");
}
