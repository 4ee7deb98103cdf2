//! Fuzz the guarded DHCPv4 decode and the client-facts extraction: no input
//! may panic (dhcproto debug-asserts on some option lengths; boot_dhcp::decode
//! must reject those first).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = boot_dhcp::decode(data) {
        let facts = boot_dhcp::client_facts(&msg);
        let _ = facts.uuid.as_deref().map(str::len);
    }
});
