//! `contributor-agent`: the data owner's command-line tool (work in progress).
fn main() {}
