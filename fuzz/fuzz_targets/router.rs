#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| channels_fuzz::router(data));
