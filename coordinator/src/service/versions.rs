//! `VersionService`: published versions (list by purpose, get) and their
//! download. A version is a manifest of blob digests; its digest is
//! [`manifest_digest`].

use std::sync::Arc;

use serde::Serialize;
use tonic::{Code, Request, Response, Status};
use tributary_client::convert::digest_to_proto;
use tributary_ledger::event::VersionExpert;
use tributary_ledger::{Purpose, Sha256Digest, VersionNumber};
use tributary_protos::v1;
use tributary_protos::v1::version_service_server::VersionService;

use super::{AppState, ServiceError, ServiceResult, page_size, page_token};
use crate::store::state::{self as rows, VersionRow};

/// The service.
#[derive(Debug, Clone)]
pub struct Versions(pub Arc<AppState>);

#[derive(Serialize)]
struct VersionManifest<'a> {
    anchor: &'a Sha256Digest,
    experts: &'a [VersionExpert],
    top_k: u32,
}

/// The digest of a version's manifest: SHA-256 of the canonical JSON of its
/// anchor, ordered experts and top-k — what `ModelVersionPublished` records.
pub fn manifest_digest(
    anchor: &Sha256Digest,
    experts: &[VersionExpert],
    top_k: u32,
) -> Sha256Digest {
    let bytes = tributary_ledger::canonical::to_canonical_bytes(&VersionManifest {
        anchor,
        experts,
        top_k,
    })
    .unwrap_or_default();
    Sha256Digest::of(&bytes)
}

/// The wire form of a version.
pub fn version_to_proto(row: &VersionRow) -> v1::ModelVersion {
    v1::ModelVersion {
        version: row.version.0,
        parent: row.parent.map(|p| p.0),
        purpose: row.purpose.as_str().to_string(),
        top_k: row.top_k,
        anchor: Some(digest_to_proto(&row.anchor)),
        experts: row
            .experts
            .iter()
            .enumerate()
            .map(|(i, (e, owner))| v1::VersionExpert {
                position: u32::try_from(i + 1).unwrap_or(u32::MAX),
                submission_id: e.submission.as_str().to_string(),
                expert: Some(digest_to_proto(&e.expert.0)),
                consent_id: e.consent.as_str().to_string(),
                contributor_id: owner.as_str().to_string(),
            })
            .collect(),
        checkpoint: Some(digest_to_proto(&row.checkpoint)),
        ledger_index: row.ledger_index,
        published_unix_ms: row.published_unix_ms,
        revoked: row.revoked_index.is_some(),
    }
}

impl Versions {
    async fn list(
        &self,
        request: v1::ListVersionsRequest,
    ) -> ServiceResult<v1::ListVersionsResponse> {
        let state = &self.0;
        let purpose = if request.purpose.is_empty() {
            None
        } else {
            Some(
                Purpose::new(request.purpose.as_str())
                    .map_err(|e| ServiceError::invalid("MALFORMED_REQUEST", e.to_string()))?,
            )
        };
        let before = page_token(request.page.as_ref().map_or("", |p| p.page_token.as_str()))?;
        let limit = page_size(state, request.page.as_ref());
        let mut conn = state.pool.acquire().await?;
        let found = rows::list_versions(
            &mut conn,
            purpose.as_ref(),
            request.include_revoked,
            before,
            limit + 1,
        )
        .await?;
        let more = found.len() > limit as usize;
        let page: Vec<_> = found.into_iter().take(limit as usize).collect();
        Ok(v1::ListVersionsResponse {
            next_page_token: match (more, page.last()) {
                (true, Some(last)) => last.version.0.to_string(),
                _ => String::new(),
            },
            versions: page.iter().map(version_to_proto).collect(),
        })
    }

    async fn get(&self, request: v1::GetVersionRequest) -> ServiceResult<v1::ModelVersion> {
        let mut conn = self.0.pool.acquire().await?;
        let row = rows::version(&mut conn, VersionNumber(request.version))
            .await?
            .ok_or_else(|| {
                ServiceError::not_found(
                    "UNKNOWN_VERSION",
                    format!("no version {}", request.version),
                )
            })?;
        Ok(version_to_proto(&row))
    }
}

type DownloadStream =
    tokio_stream::wrappers::ReceiverStream<Result<v1::DownloadVersionResponse, Status>>;

#[tonic::async_trait]
impl VersionService for Versions {
    async fn list_versions(
        &self,
        request: Request<v1::ListVersionsRequest>,
    ) -> Result<Response<v1::ListVersionsResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn get_version(
        &self,
        request: Request<v1::GetVersionRequest>,
    ) -> Result<Response<v1::ModelVersion>, Status> {
        Ok(Response::new(self.get(request.into_inner()).await?))
    }

    type DownloadVersionStream = DownloadStream;

    async fn download_version(
        &self,
        request: Request<v1::DownloadVersionRequest>,
    ) -> Result<Response<Self::DownloadVersionStream>, Status> {
        // Check the version exists first, so an unknown one gets NOT_FOUND.
        self.get(v1::GetVersionRequest {
            version: request.get_ref().version,
        })
        .await?;
        Err(ServiceError::new(
            Code::Unimplemented,
            "NOT_IMPLEMENTED",
            "version download streams from the blob store, which is not wired into this build yet",
        )
        .into())
    }
}
