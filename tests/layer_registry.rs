//! A layer backend written outside the channels crates (tests/external-backend) is chosen by
//! URL, like the built-in ones, once its scheme is registered.

use std::process::Command;

use channels::layers;

/// Set in the environment of the child process the second test starts.
const CHILD: &str = "LAYER_REGISTRY_TEST_CHILD";

#[tokio::test]
async fn a_registered_scheme_is_chosen_by_channels_layer() {
    if std::env::var_os(CHILD).is_some() {
        return; // the child runs only the test below
    }
    layers::register("echo-test", external_backend::from_url).expect("echo-test:// is free");
    let vars = [("CHANNELS_LAYER".to_owned(), "echo-test://?capacity=7".to_owned())];

    let configured = layers::configure_from(vars, "memory://").expect("configure");

    let layer = configured.default_layer().expect("a default layer");
    let channel = layer.new_channel("specific").await.expect("new_channel");
    assert!(channel.contains(external_backend::CHANNEL_MARK), "{channel} is not the external backend's");
    assert_eq!(layer.config().capacity, 7, "the URL's settings reach the factory");
}

/// The same through a real process environment: this test binary runs itself again with
/// `CHANNELS_LAYER` set, and the child's `from_env` builds the registered backend.
#[tokio::test]
async fn the_channels_layer_variable_of_a_process_chooses_a_registered_scheme() {
    const NAME: &str = "the_channels_layer_variable_of_a_process_chooses_a_registered_scheme";
    if std::env::var_os(CHILD).is_some() {
        layers::register("plain-env", external_backend::from_url).expect("plain-env:// is free");
        let layer = layers::from_env("memory://").expect("from_env");
        let channel = layer.new_channel("specific").await.expect("new_channel");
        println!("child chose {channel} with capacity {}", layer.config().capacity);
        return;
    }
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let child = Command::new(test_binary)
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("CHANNELS_LAYER", "plain-env://?capacity=9")
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "the child failed: {stdout}\n{}", String::from_utf8_lossy(&child.stderr));
    // The test harness may print its own words before the child's on that line.
    let chose =
        stdout.lines().find_map(|line| line.split_once("child chose ")).map(|(_, chose)| chose).unwrap_or_default();
    assert!(chose.contains(external_backend::CHANNEL_MARK), "the child did not build the external backend: {stdout}");
    assert!(chose.ends_with("with capacity 9"), "the URL's settings did not reach the factory: {stdout}");
}
