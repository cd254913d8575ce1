//! `SERVICE.NAMESPACE:PORT` from any text: a typed error or a spec that prints back as it
//! parses, never a panic.
#![no_main]

use std::str::FromStr;

use k8s_headless_svc::HeadlessService;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(spec) = HeadlessService::from_str(text) {
        let again = HeadlessService::from_str(&spec.to_string()).expect("a spec parses back");
        assert_eq!(again, spec);
    }
});
