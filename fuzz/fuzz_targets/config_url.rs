#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| channels_fuzz::config_url(data));
