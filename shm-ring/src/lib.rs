//! Single-producer single-consumer ring over shared memory (work in progress).
#![deny(unsafe_code)]
