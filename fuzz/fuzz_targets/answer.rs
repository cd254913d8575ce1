//! Any bytes as a DNS message: its answers screened as the resolver screens them, never a
//! panic, and never an unusable address or one of the wrong family kept.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|message: &[u8]| {
    k8s_headless_svc::fuzz_screen(message);
});
