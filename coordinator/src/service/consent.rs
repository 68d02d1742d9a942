//! `ConsentService`: granting (`ConsentGranted`), listing, and withdrawing a
//! consent. A withdrawal is one transaction: `ConsentWithdrawn`, a
//! replacement `ModelVersionPublished` for every current version that lists
//! the consent, those versions marked revoked, the expert's weights deleted
//! and `ExpertErased` — or nothing at all.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};
use tributary_client::convert;
use tributary_ledger::event::ConsentWithdrawn;
use tributary_ledger::{
    Event, ExpertDigest, SignatureRole, SignedEvent, Timestamp, entry::statement_message,
};
use tributary_protos::v1;
use tributary_protos::v1::consent_service_server::ConsentService;

use super::auth::{self, Caller};
use super::writer::{LedgerTx, now};
use super::{AppState, ServiceError, ServiceResult, page_size, page_token, publish};
use crate::store::state::{self as rows, ConsentRow, ConsentState};

/// The service.
#[derive(Debug, Clone)]
pub struct Consents(pub Arc<AppState>);

fn consent_to_proto(row: &ConsentRow) -> v1::Consent {
    v1::Consent {
        terms: Some(convert::consent_to_proto(&row.terms)),
        state: match row.state {
            ConsentState::Active => v1::ConsentState::Active,
            ConsentState::Withdrawn => v1::ConsentState::Withdrawn,
            ConsentState::Expired => v1::ConsentState::Expired,
        } as i32,
        granted_index: row.granted_index,
        ended_index: row.ended_index,
    }
}

/// Checks a contributor's statement signature over `event`.
fn check_statement(
    event: &Event,
    signature: &tributary_ledger::Signature,
    key: &tributary_ledger::PublicKey,
) -> ServiceResult<()> {
    let message =
        statement_message(event, SignatureRole::Contributor).map_err(ServiceError::internal)?;
    key.verify(&message, signature).map_err(|_| {
        ServiceError::new(
            Code::PermissionDenied,
            "BAD_STATEMENT_SIGNATURE",
            format!(
                "the {} statement does not verify against the caller's key",
                event.kind()
            ),
        )
    })
}

impl Consents {
    async fn grant(&self, request: v1::GrantConsentRequest) -> ServiceResult<v1::ConsentResponse> {
        let state = &self.0;
        let terms = convert::consent_from_proto(request.terms.as_ref())?;
        let signature = convert::signature("signature", request.signature.as_ref())?;
        let mut tx = state.pool.begin().await?;
        let caller = auth::authenticate(state, &mut tx, &request).await?;
        let record = caller.contributor()?;
        if record.contributor != terms.contributor {
            return Err(ServiceError::not_owner(format!(
                "{} cannot grant a consent in the name of {}",
                record.contributor, terms.contributor
            )));
        }
        let event = Event::ConsentGranted(terms.clone());
        check_statement(&event, &signature, &record.public_key)?;
        if rows::consent_for_update(&mut *tx, &terms.consent)
            .await?
            .is_some()
        {
            return Err(ServiceError::new(
                Code::AlreadyExists,
                "CONSENT_EXISTS",
                format!("consent {} already exists", terms.consent),
            ));
        }
        let mut ledger = LedgerTx::begin(state, tx).await?;
        let appended = ledger
            .append(SignedEvent {
                event,
                contributor_signature: Some(signature),
                invite_signature: None,
            })
            .await?;
        rows::insert_consent(ledger.conn(), &terms, appended.index()).await?;
        let receipts = ledger.commit().await?;
        tracing::info!(consent = %terms.consent, contributor = %terms.contributor, "consent granted");
        let row = ConsentRow {
            terms,
            state: ConsentState::Active,
            granted_index: appended.index(),
            ended_index: None,
        };
        Ok(v1::ConsentResponse {
            consent: Some(consent_to_proto(&row)),
            receipt: receipts.first().map(convert::receipt_to_proto),
        })
    }

    async fn list(
        &self,
        request: v1::ListConsentsRequest,
    ) -> ServiceResult<v1::ListConsentsResponse> {
        let state = &self.0;
        let expert = request
            .expert
            .as_ref()
            .map(|d| convert::digest("expert", Some(d)).map(ExpertDigest))
            .transpose()?;
        let after = page_token(request.page.as_ref().map_or("", |p| p.page_token.as_str()))?;
        let limit = page_size(state, request.page.as_ref());
        let mut tx = state.pool.begin().await?;
        let caller = auth::authenticate(state, &mut tx, &request).await?;
        let owner = match &caller {
            Caller::Operator => None,
            Caller::Contributor(record) => Some(record.contributor.clone()),
        };
        let found =
            rows::list_consents(&mut *tx, owner.as_ref(), expert.as_ref(), after, limit + 1)
                .await?;
        tx.commit().await?;
        let more = found.len() > limit as usize;
        let page: Vec<_> = found.into_iter().take(limit as usize).collect();
        Ok(v1::ListConsentsResponse {
            next_page_token: match (more, page.last()) {
                (true, Some(last)) => last.granted_index.to_string(),
                _ => String::new(),
            },
            consents: page.iter().map(consent_to_proto).collect(),
        })
    }

    async fn withdraw(
        &self,
        request: v1::WithdrawConsentRequest,
    ) -> ServiceResult<v1::WithdrawConsentResponse> {
        let state = &self.0;
        let consent_id = convert::consent_id("consent_id", &request.consent_id)?;
        let signature = convert::signature("signature", request.signature.as_ref())?;
        let withdrawn_at = u64::try_from(request.withdrawn_at_unix).map_err(|_| {
            ServiceError::invalid("MALFORMED_REQUEST", "withdrawn_at_unix is negative")
        })?;
        let skew =
            i64::try_from(withdrawn_at).unwrap_or(i64::MAX) - i64::try_from(now().0).unwrap_or(0);
        if skew.saturating_abs().saturating_mul(1000) > state.limits.request_window_ms {
            return Err(ServiceError::new(
                Code::InvalidArgument,
                "STALE_TIMESTAMP",
                "withdrawn_at_unix is outside the accepted window",
            ));
        }
        let mut tx = state.pool.begin().await?;
        let caller = auth::authenticate(state, &mut tx, &request).await?;
        let record = caller.contributor()?.clone();
        let consent = rows::consent_for_update(&mut *tx, &consent_id)
            .await?
            .ok_or_else(|| {
                ServiceError::not_found("UNKNOWN_CONSENT", format!("no consent {consent_id}"))
            })?;
        if consent.terms.contributor != record.contributor {
            return Err(ServiceError::not_owner(format!(
                "consent {consent_id} belongs to another contributor"
            )));
        }
        if consent.state != ConsentState::Active {
            return Err(ServiceError::new(
                Code::FailedPrecondition,
                "CONSENT_ENDED",
                format!("consent {consent_id} has already ended"),
            ));
        }
        let event = Event::ConsentWithdrawn(ConsentWithdrawn {
            consent: consent_id.clone(),
            contributor: record.contributor.clone(),
            withdrawn_at: Timestamp(withdrawn_at),
        });
        check_statement(&event, &signature, &record.public_key)?;

        let mut ledger = LedgerTx::begin(state, tx).await?;
        let signed = SignedEvent {
            event,
            contributor_signature: Some(signature),
            invite_signature: None,
        };
        let ended = publish::end_consent(
            state,
            &mut ledger,
            &consent,
            signed,
            ConsentState::Withdrawn,
        )
        .await?;
        let receipts = ledger.commit().await?;
        tracing::info!(consent = %consent_id, revoked = ?ended.revoked, published = ?ended.published, ended.erased, "consent withdrawn");
        Ok(v1::WithdrawConsentResponse {
            withdrawal: receipts.first().map(convert::receipt_to_proto),
            published_versions: ended.published.iter().map(|v| v.0).collect(),
            revoked_versions: ended.revoked.iter().map(|v| v.0).collect(),
            erasure: if ended.erased {
                receipts.last().map(convert::receipt_to_proto)
            } else {
                None
            },
        })
    }
}

#[tonic::async_trait]
impl ConsentService for Consents {
    async fn grant_consent(
        &self,
        request: Request<v1::GrantConsentRequest>,
    ) -> Result<Response<v1::ConsentResponse>, Status> {
        Ok(Response::new(self.grant(request.into_inner()).await?))
    }

    async fn list_consents(
        &self,
        request: Request<v1::ListConsentsRequest>,
    ) -> Result<Response<v1::ListConsentsResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn withdraw_consent(
        &self,
        request: Request<v1::WithdrawConsentRequest>,
    ) -> Result<Response<v1::WithdrawConsentResponse>, Status> {
        Ok(Response::new(self.withdraw(request.into_inner()).await?))
    }
}
