//! The error type of the model library.

use std::path::PathBuf;

/// Everything that can go wrong loading, checking, training or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written. (The I/O error is part of the
    /// message rather than a separate cause, so an error chain names it once.)
    #[error("{path}: {error}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
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
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ModelError;

    #[test]
    fn an_io_error_names_its_path_and_reason_once() {
        let error = ModelError::io(
            "/x/config.json",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        let message = error.to_string();
        assert!(
            message.starts_with("/x/config.json: ") && message.contains("not found"),
            "{message}"
        );
        // No separate cause: an error chain would print the reason a second time.
        assert!(std::error::Error::source(&error).is_none());
    }
}
