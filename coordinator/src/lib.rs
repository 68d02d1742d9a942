//! The Tributary coordinator as a library, so that tests drive it directly and
//! `main.rs` stays a thin command-line layer.
//!
//! Modules:
//! - [`anchor`]: `coordinator anchor pretrain`, the operator's anchor training.
//! - [`store`]: Postgres through sqlx: connection, migrations, the ledger
//!   ([`store::PgLedger`]) and the coordinator's tables.

pub mod anchor;
pub mod store;
pub mod tiles;
