//! Ledger benchmark (filled in later).
fn main() {}
