//! Baselines the benchmarks compare against (competitor crates are dependencies of this crate only).
