//! The FlexOlmo mixture-of-experts language model on burn.
//!
//! Everything a data owner or an operator does with weights lives here:
//! reading and writing Hugging Face `flex_olmo` checkpoints ([`checkpoint`]),
//! the forward pass ([`model`]), pretraining a dense anchor ([`pretrain`]),
//! training an expert against it ([`expert_train`]), packaging the expert
//! ([`expert`]), merging experts or removing them ([`merge`]) and measuring
//! perplexity and routing ([`eval`]).
//!
//! Modules:
//! - [`config`]: the `config.json` file.
//! - [`names`]: tensor names on disk.
//! - [`weights`]: host tensors and safetensors encoding.
//! - [`checkpoint`]: checkpoint directories.
//! - [`model`]: the forward pass.
//! - [`objective`]: batches and the training loss.
//! - [`optim`]: AdamW and the learning-rate schedule.
//! - [`pretrain`]: anchor pretraining with checkpoint/resume.
//! - [`expert_train`]: expert training.
//! - [`router`]: router calibration against public text.
//! - [`calibrate`]: joint router calibration of a merged model from statistics.
//! - [`expert`]: expert packages and manifests.
//! - [`merge`]: merge, expert subsets, model soup.
//! - [`eval`]: perplexity and routing shares.
//! - [`device`]: backend selection.

pub mod attention;
pub mod calibrate;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod error;
pub mod eval;
pub mod expert;
pub mod expert_train;
pub mod fused;
pub mod kernel;
pub mod matmul;
mod matrix;
pub mod merge;
pub mod model;
pub mod names;
pub mod objective;
pub mod optim;
pub mod pretrain;
pub mod router;
mod vmath;
pub mod weights;

pub use checkpoint::Checkpoint;
pub use config::FlexOlmoConfig;
pub use error::ModelError;
pub use expert::ExpertPackage;
pub use model::FlexOlmo;
