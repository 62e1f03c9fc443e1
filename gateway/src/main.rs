//! The gateway. TODO.
fn main() {}
