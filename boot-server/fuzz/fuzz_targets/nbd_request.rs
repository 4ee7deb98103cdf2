#![no_main]
//! Fuzzes the NBD parsers: request headers, and option payloads (GO/INFO,
//! LIST/SET_META_CONTEXT, every option number) as sent during option haggling.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = boot_nbd::parse_request(data) {
        let _ = r.fua();
    }
    if let Some((&sel, rest)) = data.split_first() {
        let _ = boot_nbd::parse_option(u32::from(sel % 12), rest);
        let _ = boot_nbd::parse_go(rest);
        let _ = boot_nbd::parse_meta_context(rest);
    }
});
