//! WebSocket protocol conformance: the Autobahn|Testsuite fuzzing client, sections 1 to 10,
//! against the echo example, through `scripts/autobahn` (which fails unless every case passed,
//! with a complete closing handshake and the expected close code every time).
//!
//! Needs the Python 2.7 virtualenv that `scripts/install-test-deps` prepares; the script makes
//! it itself when it is missing, which takes a few minutes.

mod support;

use std::path::Path;
use std::process::Command;

#[test]
fn autobahn_fuzzing_client_sections_1_to_10_pass_strictly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let echo = support::example_binary("echo");
    let report = std::env::temp_dir().join(format!("channels-autobahn-{}", std::process::id()));
    let output = Command::new(root.join("scripts/autobahn"))
        .arg("--echo")
        .arg(&echo)
        .env("AUTOBAHN_REPORT_DIR", &report)
        // The whole run takes under a minute; a hung case must not hold CI for long.
        .env("AUTOBAHN_TIMEOUT", "900")
        .current_dir(root)
        .output()
        .expect("run scripts/autobahn");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    assert!(output.status.success(), "scripts/autobahn failed ({})\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains("cases passed strictly"), "{stdout}");
    let _ = std::fs::remove_dir_all(&report);
}
