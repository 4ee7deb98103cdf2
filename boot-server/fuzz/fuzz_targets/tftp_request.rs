#![no_main]
use libfuzzer_sys::fuzz_target;

// Placeholder: the owning crate fills this in with its parser entry point.
fuzz_target!(|_data: &[u8]| {});
