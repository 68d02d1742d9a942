//! `ContributorService`: the operator's invites, registration (the
//! `ContributorRegistered` entry, signed by the operator's invite and the
//! contributor), and public contributor records.

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use tonic::{Code, Request, Response, Status};
use tributary_client::convert;
use tributary_ledger::event::ContributorRegistered;
use tributary_ledger::{Event, Signature, SignatureRole, SignedEvent, entry::statement_message};
use tributary_protos::v1;
use tributary_protos::v1::contributor_service_server::ContributorService;

use super::auth;
use super::writer::{LedgerTx, receipt_for};
use super::{AppState, ServiceError, ServiceResult};
use crate::store::records::{self, ContributorRecord};

/// The service.
#[derive(Debug, Clone)]
pub struct Contributors(pub Arc<AppState>);

fn to_proto(record: &ContributorRecord) -> v1::Contributor {
    v1::Contributor {
        contributor_id: record.contributor.as_str().to_string(),
        organisation: record.organisation.clone(),
        public_key: record.public_key.0.to_vec(),
        ledger_index: record.ledger_index,
        revoked: record.revoked,
    }
}

fn registration(
    id: &str,
    organisation: &str,
    public_key: &[u8],
) -> ServiceResult<ContributorRegistered> {
    if organisation.trim().is_empty() {
        return Err(ServiceError::invalid(
            "MALFORMED_REQUEST",
            "field `organisation`: empty",
        ));
    }
    Ok(ContributorRegistered {
        contributor: convert::contributor_id("contributor_id", id)?,
        organisation: organisation.to_string(),
        public_key: convert::public_key("public_key", public_key)?,
    })
}

impl Contributors {
    async fn create_invite(
        &self,
        request: v1::CreateInviteRequest,
    ) -> ServiceResult<v1::CreateInviteResponse> {
        let state = &self.0;
        let event = registration(
            &request.contributor_id,
            &request.organisation,
            &request.public_key,
        )?;
        let mut tx = state.pool.begin().await?;
        auth::authenticate(state, &mut tx, &request)
            .await?
            .operator()?;
        let message =
            statement_message(&Event::ContributorRegistered(event), SignatureRole::Invite)
                .map_err(ServiceError::internal)?;
        let invite = Signature::sign(&state.operator, &message);
        tx.commit().await?;
        Ok(v1::CreateInviteResponse {
            invite: Some(convert::signature_to_proto(&invite)),
        })
    }

    async fn register(&self, request: v1::RegisterRequest) -> ServiceResult<v1::RegisterResponse> {
        let state = &self.0;
        let event = registration(
            &request.contributor_id,
            &request.organisation,
            &request.public_key,
        )?;
        let invite = convert::signature("invite", request.invite.as_ref())?;
        let statement = convert::signature(
            "contributor_signature",
            request.contributor_signature.as_ref(),
        )?;
        if request.auth.as_ref().map(|a| a.key_id.as_str()) != Some(request.contributor_id.as_str())
        {
            return Err(ServiceError::invalid(
                "KEY_ID_MISMATCH",
                "a registration is signed with key_id = contributor_id",
            ));
        }
        let key = VerifyingKey::from_bytes(&event.public_key.0)
            .map_err(|_| ServiceError::invalid("MALFORMED_REQUEST", "bad public key"))?;
        let mut tx = state.pool.begin().await?;
        auth::verify_with_key(state, &mut tx, &request, &key).await?;

        let signed = SignedEvent {
            event: Event::ContributorRegistered(event.clone()),
            contributor_signature: Some(statement),
            invite_signature: Some(invite),
        };
        let check = |role, key: &tributary_ledger::PublicKey, reason: &'static str| {
            let message = statement_message(&signed.event, role).map_err(ServiceError::internal)?;
            let signature = if role == SignatureRole::Invite {
                &invite
            } else {
                &statement
            };
            key.verify(&message, signature).map_err(|_| {
                ServiceError::new(
                    Code::PermissionDenied,
                    reason,
                    "the signature does not verify",
                )
            })
        };
        check(
            SignatureRole::Invite,
            &tributary_ledger::PublicKey::of(&state.operator),
            "BAD_INVITE",
        )?;
        check(
            SignatureRole::Contributor,
            &event.public_key,
            "BAD_STATEMENT_SIGNATURE",
        )?;

        if let Some(existing) = records::contributor(&mut *tx, &event.contributor).await? {
            if existing.public_key == event.public_key
                && existing.organisation == event.organisation
            {
                // Idempotent: the same registration again returns the record.
                let receipt = receipt_for(&mut tx, existing.ledger_index).await?;
                tx.commit().await?;
                return Ok(v1::RegisterResponse {
                    contributor: Some(to_proto(&existing)),
                    receipt: Some(convert::receipt_to_proto(&receipt)),
                });
            }
            return Err(ServiceError::new(
                Code::AlreadyExists,
                "CONTRIBUTOR_EXISTS",
                format!(
                    "{} is registered with another key or organisation",
                    event.contributor
                ),
            ));
        }
        let mut ledger = LedgerTx::begin(state, tx).await?;
        let appended = ledger.append(signed).await?;
        let record = ContributorRecord {
            contributor: event.contributor.clone(),
            organisation: event.organisation.clone(),
            public_key: event.public_key,
            ledger_index: appended.index(),
            revoked: false,
        };
        records::insert_contributor(ledger.conn(), &record).await?;
        let receipts = ledger.commit().await?;
        tracing::info!(contributor = %record.contributor, index = record.ledger_index, "contributor registered");
        Ok(v1::RegisterResponse {
            contributor: Some(to_proto(&record)),
            receipt: receipts.first().map(convert::receipt_to_proto),
        })
    }

    async fn get_contributor(
        &self,
        request: v1::GetContributorRequest,
    ) -> ServiceResult<v1::Contributor> {
        let id = convert::contributor_id("contributor_id", &request.contributor_id)?;
        let record = records::contributor(&self.0.pool, &id)
            .await?
            .ok_or_else(|| {
                ServiceError::not_found("UNKNOWN_CONTRIBUTOR", format!("no contributor {id}"))
            })?;
        Ok(to_proto(&record))
    }
}

#[tonic::async_trait]
impl ContributorService for Contributors {
    async fn create_invite(
        &self,
        request: Request<v1::CreateInviteRequest>,
    ) -> Result<Response<v1::CreateInviteResponse>, Status> {
        Ok(Response::new(
            Contributors::create_invite(self, request.into_inner()).await?,
        ))
    }

    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        Ok(Response::new(
            Contributors::register(self, request.into_inner()).await?,
        ))
    }

    async fn get_contributor(
        &self,
        request: Request<v1::GetContributorRequest>,
    ) -> Result<Response<v1::Contributor>, Status> {
        Ok(Response::new(
            Contributors::get_contributor(self, request.into_inner()).await?,
        ))
    }
}
