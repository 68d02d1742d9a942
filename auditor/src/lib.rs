//! The Tributary auditor: reads the consent ledger from its C2SP `tlog-tiles`
//! HTTP side and checks, without trusting the operator, that the signed
//! checkpoint covers exactly the entries served, that the log only ever grew,
//! and that every entry obeys the consent rules of DESIGN.md.
//!
//! No database, no training stack: an HTTP client, the ledger library, a report.
//!
//! Modules:
//! - [`cli`]: the command line (`auditor verify`, `auditor lookup`) and exit codes.
//! - [`client`]: the HTTP(S) client over a log prefix.
//! - [`download`]: checkpoint, tiles and bundles, cross-checked.
//! - [`state`]: the `--state` file of the last checkpoint accepted.
//! - [`verify`]: the whole audit, producing a [`report::Report`].
//! - [`report`]: the report as text or JSON.
//! - [`lookup`]: answers about a contributor, an expert or a version.

pub mod cli;
pub mod client;
pub mod download;
pub mod lookup;
pub mod report;
pub mod state;
pub mod verify;
