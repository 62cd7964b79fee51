//! loom model checks live in `tests/`; run them with `RUSTFLAGS="--cfg qos_loom"`.
