#![no_main]
use boot_fs::range::{answer, RangeAnswer};
use libfuzzer_sys::fuzz_target;

// Any Range header against any length: never panics, and a partial answer
// always lies inside the resource.
fuzz_target!(|input: (&[u8], u64)| {
    let (header, len) = input;
    if let RangeAnswer::Partial { start, end } = answer(Some(header), len) {
        assert!(start <= end && end < len);
    }
});
