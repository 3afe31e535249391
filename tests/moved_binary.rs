//! The example binaries carry their pages and scripts: copied to an empty directory and run
//! from another working directory, far from the source tree, they still serve them.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use support::{example_binary, http};

/// A copied binary running in a directory of its own; killed and removed when dropped.
struct Moved {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Moved {
    fn start(name: &str) -> Moved {
        let dir = std::env::temp_dir().join(format!("channels-moved-{name}-{}", std::process::id()));
        let (bin, cwd) = (dir.join("bin"), dir.join("elsewhere"));
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::create_dir_all(&cwd).expect("working dir");
        let copy = bin.join(name);
        std::fs::copy(example_binary(name), &copy).expect("copy the binary");
        let mut child = Command::new(&copy)
            .args(["--bind", "127.0.0.1:0"])
            .current_dir(&cwd)
            .env("RUST_LOG", "warn")
            .env_remove("CHANNELS_LAYER")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the copy");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("first line");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name} printed no address: {line:?}"));
        Moved { child, addr, dir }
    }
}

impl Drop for Moved {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn source(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect("source file")
}

#[tokio::test]
async fn the_chat_and_the_axum_example_serve_their_page_from_anywhere() {
    for name in ["chat", "axum"] {
        let moved = Moved::start(name);
        let (status, page) = http(moved.addr, "GET", "/", "").await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(page, source("examples/chat/index.html"), "{name} serves the chat page");
    }
}

#[tokio::test]
async fn the_approval_example_serves_its_pages_and_vendored_scripts_from_anywhere() {
    let moved = Moved::start("approval");
    for (path, file) in [
        ("/login/", "login.html"),
        ("/static/app.js", "app.js"),
        ("/static/app.css", "app.css"),
        ("/static/vendor/chartjs/chart.umd.min.js", "vendor/chartjs/chart.umd.min.js"),
        ("/static/vendor/cytoscape/cytoscape.min.js", "vendor/cytoscape/cytoscape.min.js"),
        ("/static/vendor/cytoscape/LICENSE", "vendor/cytoscape/LICENSE"),
    ] {
        let (status, body) = http(moved.addr, "GET", path, "").await;
        assert_eq!(status, 200, "{path}");
        assert!(body == source(&format!("examples/approval/static/{file}")), "{path} is the file as it is in the tree");
    }
    let (status, _) = http(moved.addr, "GET", "/static/../main.rs", "").await;
    assert_eq!(status, 404);
    // Its database went where it runs, not next to the sources.
    assert!(moved.dir.join("elsewhere/approval.sqlite3").exists());
}
