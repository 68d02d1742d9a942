//! `LedgerService`: the read side of the consent ledger — the latest signed
//! checkpoint, entries by range, inclusion and consistency proofs, and
//! lookups. No account needed: everything here verifies without trust.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tributary_client::convert;
use tributary_ledger::{ExpertDigest, VersionNumber};
use tributary_protos::v1;
use tributary_protos::v1::ledger_service_server::LedgerService;

use super::{AppState, ServiceError, ServiceResult};
use crate::store::PgLedger;
use crate::store::state::{self as rows, LookupKey, StoredCheckpoint};

/// The service.
#[derive(Debug, Clone)]
pub struct Ledger(pub Arc<AppState>);

impl Ledger {
    async fn latest(&self) -> ServiceResult<StoredCheckpoint> {
        rows::latest_checkpoint(&self.0.pool)
            .await?
            .ok_or_else(|| ServiceError::internal("no checkpoint is stored"))
    }

    /// A size argument: 0 means the latest checkpoint's; larger than it is refused.
    async fn size_or_latest(&self, size: u64, field: &str) -> ServiceResult<u64> {
        let latest = self.latest().await?.size;
        match size {
            0 => Ok(latest),
            n if n > latest => Err(ServiceError::invalid(
                "BEYOND_CHECKPOINT",
                format!("{field} {n} is larger than the latest checkpoint's {latest}"),
            )),
            n => Ok(n),
        }
    }
}

fn proof_error(error: crate::store::StoreError) -> ServiceError {
    match error {
        crate::store::StoreError::Proof(e) => {
            ServiceError::invalid("BAD_PROOF_REQUEST", e.to_string())
        }
        other => other.into(),
    }
}

#[tonic::async_trait]
impl LedgerService for Ledger {
    async fn get_checkpoint(
        &self,
        _request: Request<v1::GetCheckpointRequest>,
    ) -> Result<Response<v1::SignedCheckpoint>, Status> {
        let latest = self.latest().await?;
        Ok(Response::new(v1::SignedCheckpoint {
            note: latest.note,
            size: latest.size,
            root_hash: latest.root.0.to_vec(),
        }))
    }

    async fn get_entries(
        &self,
        request: Request<v1::GetEntriesRequest>,
    ) -> Result<Response<v1::GetEntriesResponse>, Status> {
        let request = request.into_inner();
        let entries = PgLedger::entries(&self.0.pool, request.start, request.end)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(v1::GetEntriesResponse {
            entries: entries
                .into_iter()
                .map(|(index, data)| v1::LedgerEntry { index, data })
                .collect(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<v1::GetInclusionProofRequest>,
    ) -> Result<Response<v1::InclusionProof>, Status> {
        let request = request.into_inner();
        let size = self.size_or_latest(request.tree_size, "tree_size").await?;
        let hashes = PgLedger::inclusion_proof(&self.0.pool, request.index, size)
            .await
            .map_err(proof_error)?;
        Ok(Response::new(v1::InclusionProof {
            index: request.index,
            tree_size: size,
            hashes: hashes.iter().map(|h| h.0.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<v1::GetConsistencyProofRequest>,
    ) -> Result<Response<v1::ConsistencyProof>, Status> {
        let request = request.into_inner();
        let new = self.size_or_latest(request.new_size, "new_size").await?;
        let hashes = PgLedger::consistency_proof(&self.0.pool, request.old_size, new)
            .await
            .map_err(proof_error)?;
        Ok(Response::new(v1::ConsistencyProof {
            old_size: request.old_size,
            new_size: new,
            hashes: hashes.iter().map(|h| h.0.to_vec()).collect(),
        }))
    }

    async fn lookup(
        &self,
        request: Request<v1::LookupRequest>,
    ) -> Result<Response<v1::LookupResponse>, Status> {
        let key = match request.into_inner().key {
            Some(v1::lookup_request::Key::ContributorId(id)) => LookupKey::Contributor(
                convert::contributor_id("contributor_id", &id).map_err(ServiceError::from)?,
            ),
            Some(v1::lookup_request::Key::Expert(d)) => LookupKey::Expert(ExpertDigest(
                convert::digest("expert", Some(&d)).map_err(ServiceError::from)?,
            )),
            Some(v1::lookup_request::Key::Version(v)) => LookupKey::Version(VersionNumber(v)),
            None => return Err(ServiceError::invalid("MALFORMED_REQUEST", "no lookup key").into()),
        };
        let indices = rows::lookup(&self.0.pool, &key, self.0.limits.max_page.max(1000))
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(v1::LookupResponse { indices }))
    }
}
