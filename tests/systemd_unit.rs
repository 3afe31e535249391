//! The systemd unit of docs/deployment.md: `systemd-analyze verify` accepts it (pointed at the
//! chat binary built here), and the chat runs with its command line (on a free port, with a
//! redis-server of the test's own).

mod support;

use std::path::Path;
use std::process::Command;

use support::{Example, example_binary, next_json};

/// The `ini` block of docs/deployment.md.
fn documented_unit() -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deployment.md")).expect("doc");
    let fence = "```ini\n";
    let start = doc.find(fence).expect("a systemd unit (ini block) in docs/deployment.md") + fence.len();
    doc[start..][..doc[start..].find("```").expect("the block's end")].to_owned()
}

const INSTALLED: &str = "/usr/local/bin/chat";

fn exec_start(unit: &str) -> Vec<String> {
    let line = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart= line");
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn systemd_analyze_verifies_the_documented_unit() {
    let unit = documented_unit();
    assert!(unit.contains(&format!("ExecStart={INSTALLED} ")), "{unit}");
    let dir = std::env::temp_dir().join(format!("channels-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("chat.service");
    let chat = example_binary("chat");
    std::fs::write(&path, unit.replace(INSTALLED, &chat.display().to_string())).expect("write the unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is missing (Debian's systemd package)");
    let _ = std::fs::remove_dir_all(&dir);
    let complaints = String::from_utf8_lossy(&output.stderr);
    // It exits 0 on settings it ignores (a misspelt signal or time), but says so.
    assert!(output.status.success() && complaints.trim().is_empty(), "{}\n{complaints}", output.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_runs_with_the_units_command_line() {
    let redis = channels::redis::testing::RedisServer::start();
    let args = exec_start(&documented_unit());
    assert_eq!(args[0], INSTALLED);
    let args: Vec<String> = args[1..]
        .iter()
        .map(|arg| match arg.as_str() {
            "127.0.0.1:8000" => "127.0.0.1:0".to_owned(),
            url if url.starts_with("redis://") => format!("{}/0", redis.url()),
            other => other.to_owned(),
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let chat = Example::start("chat", &args);
    let mut client = support::connect(&chat.url("/ws/chat/unit/?user=u")).await;
    assert_eq!(next_json(&mut client).await["type"], "chat.presence");
}
