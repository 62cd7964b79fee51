//! Fuzz target `hlog`: see `fuzz/checks.rs` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::hlog(data));
