//! The contributor agent's commands, as a library so that tests drive them directly.
//!
//! - [`commands`]: `train`, `merge`, `soup`, `evaluate`.
//! - [`calibration`]: `router-stats` and `recalibrate`, joint router calibration.
//! - [`experiment`]: the FlexOlmo comparison across domains.
//! - [`assemble`]: building the model a command runs (merge in memory, expert subsets).
//! - [`text`]: reading the owner's files into token streams.
//! - [`progress`]: progress bars.
//! - [`remote`]: the coordinator: keys, register, consent, upload, status,
//!   versions, download, receipts.

pub mod assemble;
pub mod calibration;
pub mod commands;
pub mod experiment;
pub mod progress;
pub mod remote;
pub mod text;
