//! Placeholder: replaced by the real benchmark in the same session.
fn main() {}
