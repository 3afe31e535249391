//! A layer backend written outside the channels crates (tests/external-backend) is chosen by
//! URL, like the built-in ones, once its scheme is registered.

use channels::layers;

#[tokio::test]
async fn a_registered_scheme_is_chosen_by_channels_layer() {
    layers::register("echo-test", external_backend::from_url).expect("echo-test:// is free");
    let vars = [("CHANNELS_LAYER".to_owned(), "echo-test://?capacity=7".to_owned())];

    let configured = layers::configure_from(vars, "memory://").expect("configure");

    let layer = configured.default_layer().expect("a default layer");
    let channel = layer.new_channel("specific").await.expect("new_channel");
    assert!(channel.contains(external_backend::CHANNEL_MARK), "{channel} is not the external backend's");
    assert_eq!(layer.config().capacity, 7, "the URL's settings reach the factory");
}
