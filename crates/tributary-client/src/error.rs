//! [`ClientError`], and reading the coordinator's reason codes from a status.

use crate::convert::ConvertError;
use crate::signing::AuthError;

/// The metadata key under which the coordinator repeats a status's reason code.
pub const REASON_METADATA_KEY: &str = "x-tributary-reason";

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be set up.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The coordinator answered with an error status.
    #[error("coordinator: {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The request could not be signed.
    #[error("signing: {0}")]
    Auth(#[from] AuthError),
    /// A message did not hold valid values.
    #[error("malformed message: {0}")]
    Convert(#[from] ConvertError),
    /// A ledger statement could not be built.
    #[error("ledger entry: {0}")]
    Entry(#[from] tributary_ledger::EntryError),
    /// A receipt did not verify.
    #[error("receipt: {0}")]
    Receipt(#[from] tributary_ledger::ReceiptError),
    /// A local file could not be read or written.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The call needs a signer and the client has none.
    #[error("this call must be signed: give the client a signer")]
    NoSigner,
    /// The server's answer is inconsistent.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The client's settings cannot work (e.g. https without a CA).
    #[error("configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// The coordinator's reason code, when the call failed with a status.
    pub fn reason_code(&self) -> Option<&str> {
        match self {
            ClientError::Status(status) => reason_code(status),
            _ => None,
        }
    }

    /// A one-line explanation for a person: for a refused call, the gRPC
    /// status, the coordinator's reason code and its message.
    pub fn explain(&self) -> String {
        match self {
            ClientError::Status(status) => format!(
                "the coordinator answered gRPC status {:?} ({}), reason code {}: {}",
                status.code(),
                status.code().description(),
                reason_code(status).unwrap_or("(none)"),
                status.message()
            ),
            other => other.to_string(),
        }
    }

    /// The gRPC code, when the call failed with a status.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// The reason code of a coordinator status: the `x-tributary-reason` metadata,
/// else the message's leading `CODE:`.
pub fn reason_code(status: &tonic::Status) -> Option<&str> {
    if let Some(value) = status.metadata().get(REASON_METADATA_KEY)
        && let Ok(text) = value.to_str()
    {
        return Some(text);
    }
    let (code, _) = status.message().split_once(':')?;
    code.bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'_')
        .then_some(code)
}
