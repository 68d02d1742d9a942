//! The Tributary coordinator as a library, so that tests drive it directly and
//! `main.rs` stays a thin command-line layer.
//!
//! Modules:
//! - [`anchor`]: `coordinator anchor pretrain`, the operator's anchor training.
//! - [`anchor_store`]: anchors at rest: their files as blobs, the `anchors` rows.
//! - [`blobs`]: the content-addressed blob store (streaming, staged uploads).
//! - [`validate`]: streaming validation of expert uploads and the quality gate.
//! - [`assemble`]: model versions assembled from blob ranges, never copied.
//! - [`store`]: Postgres through sqlx: connection, migrations, the ledger
//!   ([`store::PgLedger`]) and the coordinator's tables.
//! - [`service`]: the gRPC services (the only code that sees prost types).
//! - [`server`]: [`server::serve`], the running coordinator (gRPC + HTTP).
//! - [`http`]: the read-only HTTP side (tlog-tiles, metrics).
//! - [`metrics`]: Prometheus counters and histograms, and the gRPC timing layer.
//! - [`config`]: `coordinator serve` flags, environment and config file.
//! - [`devca`]: `coordinator dev-ca`, development certificates and operator key.
//! - [`invite`]: `coordinator invite`, an invite file for a contributor's key.

pub mod anchor;
pub mod anchor_store;
pub mod assemble;
pub mod blobs;
pub mod config;
pub mod devca;
pub mod http;
pub mod invite;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
pub mod tiles;
pub mod validate;
