//! loom model checks of the workspace's concurrent protocols (DESIGN T5).
//!
//! The models live in `tests/` and are compiled to nothing unless built with
//! `RUSTFLAGS="--cfg qos_loom"`:
//!
//! ```text
//! RUSTFLAGS="--cfg qos_loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p qos-loom-tests --release --target-dir target/loom
//! ```
//!
//! * `tests/shm_ring.rs`: the `qos-shm-ring` SPSC protocol (push/pop, wrap-around,
//!   full/empty, batch commit and release, abandonment of either side).
