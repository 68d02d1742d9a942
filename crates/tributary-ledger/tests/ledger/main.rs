//! The integration tests of `tributary-ledger`, as one test binary.
//!
//! - `merkle_vectors`: published RFC 6962 / transparency-dev reference values.
//! - `merkle_properties`: property tests of proof generation and verification.
//! - `note_vectors`: C2SP signed notes and checkpoints, Go reference vectors.
//! - `support`: a generator of realistic consent ledgers.
//! - `tamper`: the tamper suite over a generated log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod merkle_properties;
mod merkle_vectors;
mod note_vectors;
mod support;
mod tamper;
