//! Transfer bench (being written).
fn main() {}
