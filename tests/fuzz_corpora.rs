//! Replays every committed fuzz corpus (`fuzz/corpus/TARGET/*`) through the same checks the
//! fuzz targets run (`fuzz/src/lib.rs`), on the stable toolchain: the inputs that once found a
//! bug, and the ones that reach deep into each parser, are re-checked on every test run.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails on {}", target, path.display());
        inputs += 1;
    }
    assert!(inputs > 0, "the {target} corpus is empty");
}

#[test]
fn envelope_corpus() {
    replay("envelope", checks::envelope);
}

#[test]
fn redis_payload_corpus() {
    replay("redis_payload", checks::redis_payload);
}

#[test]
fn router_corpus() {
    replay("router", checks::router);
}

#[test]
fn config_url_corpus() {
    replay("config_url", checks::config_url);
}

#[test]
fn http_request_corpus() {
    replay("http_request", checks::http_request);
}
