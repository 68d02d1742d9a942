//! `VersionService`: published versions (list by purpose, get) and their
//! download. A version is a manifest of blob digests; its digest is
//! [`manifest_digest`]. A download is a complete Hugging Face checkpoint
//! directory: `config.json`, the `model.safetensors` assembled from the
//! anchor's and experts' blobs (`assemble.rs`) and the anchor's tokenizer
//! files, each after a header with its size and SHA-256.

use std::sync::Arc;

use serde::Serialize;
use tonic::{Code, Request, Response, Status};
use tributary_client::convert::digest_to_proto;
use tributary_ledger::event::VersionExpert;
use tributary_ledger::{Purpose, Sha256Digest, VersionNumber};
use tributary_protos::v1;
use tributary_protos::v1::version_service_server::VersionService;

use bytes::Bytes;
use tributary_model::FlexOlmoConfig;
use tributary_model::checkpoint::TOKENIZER_FILES;

use super::files::{self, Body};
use super::{AppState, ServiceError, ServiceResult, page_size, page_token};
use crate::anchor_store::{self, AnchorRow};
use crate::assemble::{AssembledCheckpoint, VersionManifest as BlobManifest};
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
        let files = self.plan_download(request.get_ref().version).await?;
        Ok(Response::new(files::send(files, |c| {
            v1::DownloadVersionResponse {
                message: Some(Message::Chunk(c)),
            }
        })))
    }
}

type Message = v1::download_version_response::Message;

fn header(name: &str, size: u64, sha256: &Sha256Digest) -> v1::DownloadVersionResponse {
    v1::DownloadVersionResponse {
        message: Some(Message::File(v1::CheckpointFile {
            name: name.to_owned(),
            size,
            sha256: Some(digest_to_proto(sha256)),
        })),
    }
}

impl Versions {
    /// Plans the download of a version: `config.json` (in memory), the
    /// assembled `model.safetensors` (streamed from the blobs) and the
    /// anchor's tokenizer files (blobs), each after its header. The anchor
    /// need not be the current one, only stored.
    async fn plan_download(
        &self,
        version: u64,
    ) -> ServiceResult<Vec<(v1::DownloadVersionResponse, Body)>> {
        let state = &self.0;
        let mut conn = state.pool.acquire().await?;
        let row = rows::version(&mut conn, VersionNumber(version))
            .await?
            .ok_or_else(|| {
                ServiceError::not_found("UNKNOWN_VERSION", format!("no version {version}"))
            })?;
        if row.revoked_index.is_some() {
            return Err(ServiceError::new(
                Code::FailedPrecondition,
                "VERSION_REVOKED",
                format!("version {version} was revoked; download its replacement"),
            ));
        }
        let (anchor, config) = self.stored_anchor(&mut conn, version, &row.anchor).await?;
        drop(conn);
        let manifest = BlobManifest {
            anchor: row.anchor,
            experts: row.experts.iter().map(|(e, _)| e.expert.0).collect(),
            top_k: row.top_k as usize,
        };
        let assembled = AssembledCheckpoint::from_manifest(&state.store, &config, &manifest)
            .await
            .map_err(ServiceError::internal)?;
        // The assembled bytes are a function of the version's manifest
        // digest: hash them once per process, not on every download.
        let cached = state.assembled_sha(&row.checkpoint);
        let model_sha = match cached {
            Some(sha) => sha,
            None => {
                let sha = assembled
                    .sha256(&state.store)
                    .await
                    .map_err(ServiceError::internal)?;
                state.remember_assembled_sha(row.checkpoint, sha);
                sha
            }
        };
        let config = Bytes::from(assembled.config_json().into_bytes());
        let mut out = vec![
            (
                header(
                    "config.json",
                    config.len() as u64,
                    &Sha256Digest::of(&config),
                ),
                files::bytes(config),
            ),
            (
                header("model.safetensors", assembled.len(), &model_sha),
                assembled.stream(&state.store),
            ),
        ];
        for name in TOKENIZER_FILES {
            if let Some(f) = anchor.file(name) {
                out.push((
                    header(name, f.size, &f.sha256),
                    files::blob(&state.store, f.sha256),
                ));
            }
        }
        Ok(out)
    }

    /// The row and configuration of a version's anchor, current or not;
    /// `ANCHOR_UNAVAILABLE` when it is not stored.
    async fn stored_anchor(
        &self,
        conn: &mut sqlx::PgConnection,
        version: u64,
        digest: &Sha256Digest,
    ) -> ServiceResult<(AnchorRow, FlexOlmoConfig)> {
        let unavailable = |detail: String| {
            tracing::warn!(anchor = %digest, %detail, "anchor unavailable");
            ServiceError::new(
                Code::FailedPrecondition,
                "ANCHOR_UNAVAILABLE",
                format!("the anchor {digest} of version {version} is not stored"),
            )
        };
        let anchor = anchor_store::find(conn, Some(digest))
            .await?
            .ok_or_else(|| unavailable("no anchors row".into()))?;
        let config = anchor_store::read_config(&self.0.store, &anchor.files)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok((anchor, config))
    }
}
