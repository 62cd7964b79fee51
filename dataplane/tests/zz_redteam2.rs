#![allow(clippy::unwrap_used, dead_code, unused_imports)]
mod sim;
#[test]
fn smoke() {}
