//! The shared layer semantics suite, against a real redis-server.

mod support;

channels_core::layer_conformance_tests!(|config| async move { support::fresh_layer(config) });
