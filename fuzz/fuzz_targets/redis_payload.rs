#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| channels_fuzz::redis_payload(data));
