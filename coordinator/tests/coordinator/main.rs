//! Integration tests of the coordinator against a real Postgres.
//!
//! Each test creates its own database `tributary_test_<random>` on the server
//! named by `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`;
//! `scripts/ensure-postgres` starts a throwaway server when none answers),
//! applies the migrations, and drops the database at the end. The blob store,
//! validation and assembly tests (`blobs`, `validate`, `assemble`) need no
//! database: they use temporary directories and the shipped anchor.

// Test code: a failed setup step should stop the test with its message.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod servers;
mod support;
mod tlog_support;

mod agent;
mod anchor;
mod assemble;
mod blobs;
mod ledger;
mod pretrain;
mod records;
mod replicas;
mod service;
mod tiles;
mod validate;
