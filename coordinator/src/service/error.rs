//! [`ServiceError`]: every refusal of the gRPC layer, with its gRPC code and a
//! stable reason code, mapped to a `tonic::Status` in one place. Internal
//! causes are logged here and never sent to the caller.

use tonic::Code;
use tributary_client::convert::ConvertError;
use tributary_client::{AuthError, REASON_METADATA_KEY};

use crate::store::StoreError;

/// A refused or failed call.
#[derive(Debug)]
pub struct ServiceError {
    /// The gRPC code.
    pub code: Code,
    /// The stable reason code, e.g. `REPLAYED_NONCE`.
    pub reason: &'static str,
    /// A human-readable explanation for the caller.
    pub detail: String,
}

impl ServiceError {
    /// A refusal.
    pub fn new(code: Code, reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            detail: detail.into(),
        }
    }

    /// A malformed request.
    pub fn invalid(reason: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, reason, detail)
    }

    /// A caller acting on records it does not own.
    pub fn not_owner(detail: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, "NOT_OWNER", detail)
    }

    /// Something missing.
    pub fn not_found(reason: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Code::NotFound, reason, detail)
    }

    /// A failure of ours: logged in full, reported as `INTERNAL`.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            Code::Internal,
            "INTERNAL",
            "internal error; see the coordinator's log",
        )
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(error: ServiceError) -> Self {
        if error.code != Code::Internal {
            tracing::info!(reason = error.reason, detail = %error.detail, "request refused");
        }
        let mut status =
            tonic::Status::new(error.code, format!("{}: {}", error.reason, error.detail));
        if let Ok(value) = error.reason.parse() {
            status.metadata_mut().insert(REASON_METADATA_KEY, value);
        }
        status
    }
}

impl From<AuthError> for ServiceError {
    fn from(error: AuthError) -> Self {
        let code = match error {
            AuthError::BadNonce(_) | AuthError::Missing => Code::InvalidArgument,
            AuthError::BadSignature | AuthError::Stale { .. } => Code::Unauthenticated,
        };
        Self::new(code, error.reason_code(), error.to_string())
    }
}

impl From<ConvertError> for ServiceError {
    fn from(error: ConvertError) -> Self {
        Self::invalid("MALFORMED_REQUEST", error.to_string())
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::Constraint { constraint } => {
                let reason = match constraint.as_str() {
                    "contributors_pkey" => "CONTRIBUTOR_EXISTS",
                    "contributors_public_key_unique" => "PUBLIC_KEY_IN_USE",
                    "consents_pkey" => "CONSENT_EXISTS",
                    "submissions_pkey" => "SUBMISSION_EXISTS",
                    _ => return Self::internal(error),
                };
                Self::new(Code::AlreadyExists, reason, error.to_string())
            }
            StoreError::Entry(tributary_ledger::EntryError::TooLong(n)) => Self::invalid(
                "ENTRY_TOO_LARGE",
                format!("the ledger entry would be {n} bytes, more than 65535"),
            ),
            _ => Self::internal(error),
        }
    }
}

impl From<sqlx::Error> for ServiceError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::from_sqlx(error).into()
    }
}

/// The result of a handler step.
pub type ServiceResult<T> = Result<T, ServiceError>;
