//! Authentication of mutating calls: the `SignedRequest` is verified with the
//! client library's own [`verify_request`] (one definition on both sides),
//! against the operator's key or the registered key of the contributor it
//! names; its nonce is recorded in the caller's transaction, so a replay is
//! refused and a refused request leaves no nonce behind.

use ed25519_dalek::VerifyingKey;
use sqlx::PgConnection;
use tonic::Code;
use tributary_client::signing::{OPERATOR_KEY_ID, SignedMessage, claimed_key_id, now_unix_ms};
use tributary_client::verify_request;
use tributary_ledger::ContributorId;

use super::AppState;
use super::error::{ServiceError, ServiceResult};
use crate::store::records::{self, ContributorRecord};

/// Who made a verified call.
#[derive(Clone, Debug)]
pub enum Caller {
    /// The operator's key.
    Operator,
    /// A registered, unrevoked contributor.
    Contributor(ContributorRecord),
}

impl Caller {
    /// The contributor, or `NOT_OWNER` for the operator acting on a contributor's behalf.
    pub fn contributor(&self) -> ServiceResult<&ContributorRecord> {
        match self {
            Caller::Contributor(record) => Ok(record),
            Caller::Operator => Err(ServiceError::not_owner(
                "only a contributor can make this call, with its own key",
            )),
        }
    }

    /// Requires the operator.
    pub fn operator(&self) -> ServiceResult<()> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Contributor(_) => Err(ServiceError::new(
                Code::PermissionDenied,
                "OPERATOR_ONLY",
                "this call needs the operator's key",
            )),
        }
    }
}

/// Verifies `message`'s signature under `key`, its time, and records its nonce.
pub async fn verify_with_key<M: SignedMessage>(
    state: &AppState,
    conn: &mut PgConnection,
    message: &M,
    key: &VerifyingKey,
) -> ServiceResult<()> {
    let verified = verify_request(message, key, now_unix_ms(), state.limits.request_window_ms)?;
    if !records::record_nonce(&mut *conn, &verified.key_id, &verified.nonce).await? {
        return Err(ServiceError::new(
            Code::Unauthenticated,
            "REPLAYED_NONCE",
            "this request's nonce was already used: a replayed request",
        ));
    }
    Ok(())
}

/// Authenticates `message` as the operator or a registered contributor.
pub async fn authenticate<M: SignedMessage>(
    state: &AppState,
    conn: &mut PgConnection,
    message: &M,
) -> ServiceResult<Caller> {
    let key_id = claimed_key_id(message)?.to_string();
    if key_id == OPERATOR_KEY_ID {
        verify_with_key(state, conn, message, &state.operator.verifying_key()).await?;
        return Ok(Caller::Operator);
    }
    let unknown = || {
        ServiceError::new(
            Code::Unauthenticated,
            "UNKNOWN_CONTRIBUTOR",
            format!("no contributor {key_id:?} is registered"),
        )
    };
    let id = ContributorId::new(key_id.as_str()).map_err(|_| unknown())?;
    let record = records::contributor(&mut *conn, &id)
        .await?
        .ok_or_else(unknown)?;
    if record.revoked {
        return Err(ServiceError::new(
            Code::PermissionDenied,
            "CONTRIBUTOR_REVOKED",
            format!("contributor {id} was revoked"),
        ));
    }
    let key = VerifyingKey::from_bytes(&record.public_key.0)
        .map_err(|_| ServiceError::internal(format!("stored key of {id} is invalid")))?;
    verify_with_key(state, conn, message, &key).await?;
    Ok(Caller::Contributor(record))
}
