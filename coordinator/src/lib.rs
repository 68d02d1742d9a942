//! The Tributary coordinator as a library, so that tests drive it directly and
//! `main.rs` stays a thin command-line layer.
//!
//! Modules:
//! - [`anchor`]: `coordinator anchor pretrain`, the operator's anchor training.
//! - [`blobs`]: the content-addressed blob store (streaming, staged uploads).
//! - [`validate`]: streaming validation of expert uploads and the quality gate.
//! - [`assemble`]: model versions assembled from blob ranges, never copied.
//! - [`store`]: Postgres through sqlx: connection, migrations, the ledger
//!   ([`store::PgLedger`]) and the coordinator's tables.

pub mod anchor;
pub mod assemble;
pub mod blobs;
pub mod store;
pub mod tiles;
pub mod validate;
