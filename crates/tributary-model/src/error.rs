//! The error type of the model library.

use std::path::PathBuf;

/// Everything that can go wrong loading, checking, training or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `config.json` is malformed or describes a model this crate cannot run.
    #[error("unsupported or malformed configuration: {0}")]
    Config(String),
    /// A safetensors file is malformed.
    #[error("malformed safetensors: {0}")]
    SafeTensors(String),
    /// A tensor is missing, extra, or has the wrong shape or dtype.
    #[error("tensor mismatch: {0}")]
    Tensor(String),
    /// An expert package does not fit the anchor or its manifest.
    #[error("expert package: {0}")]
    Expert(String),
    /// Invalid arguments (expert subset, top-k, sequence length, …).
    #[error("invalid argument: {0}")]
    Argument(String),
    /// Training produced a non-finite loss.
    #[error("training diverged: {0}")]
    Diverged(String),
}

impl ModelError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
