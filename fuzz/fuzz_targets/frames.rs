//! Any bytes as what a pod sends on a connection, read in pieces of any size for its `GOAWAY`:
//! never a panic, and the same answer as a walk of the whole buffer, frame by frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    k8s_headless_svc::fuzz_frames(input);
});
