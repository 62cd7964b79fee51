//! Real two-process tests (STYLE 11); see `two_process/peer.rs`. The binary has its own
//! `main` (`harness = false`) because it re-executes itself as the peer process.

#[cfg(not(qos_loom))]
#[path = "two_process/peer.rs"]
mod peer;

#[cfg(not(qos_loom))]
fn main() {
    peer::main();
}

/// Loom builds have no shared memory to test.
#[cfg(qos_loom)]
fn main() {}
