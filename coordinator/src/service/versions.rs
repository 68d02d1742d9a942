//! `VersionService`: published versions (list by purpose, get) and their
//! download. A version is a manifest of blob digests; its digest is
//! [`manifest_digest`]. A download streams `config.json` and the
//! `model.safetensors` assembled from the anchor's and experts' blobs
//! (`assemble.rs`), each after a header with its size and SHA-256.

use std::sync::Arc;

use serde::Serialize;
use tonic::{Code, Request, Response, Status};
use tributary_client::convert::digest_to_proto;
use tributary_ledger::event::VersionExpert;
use tributary_ledger::{Purpose, Sha256Digest, VersionNumber};
use tributary_protos::v1;
use tributary_protos::v1::version_service_server::VersionService;

use futures::StreamExt as _;

use super::{AppState, ServiceError, ServiceResult, page_size, page_token};
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
        let (files, assembled) = self.plan_download(request.get_ref().version).await?;
        let store = self.0.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let Download {
                config_header,
                config,
                model_header,
            } = files;
            let send = |m| {
                let tx = tx.clone();
                async move {
                    tx.send(Ok(v1::DownloadVersionResponse { message: Some(m) }))
                        .await
                        .is_ok()
                }
            };
            if !send(Message::File(config_header)).await
                || !send(Message::Chunk(v1::Chunk { data: config })).await
                || !send(Message::File(model_header)).await
            {
                return;
            }
            let mut body = assembled.stream(&store);
            while let Some(next) = body.next().await {
                match next {
                    Ok(bytes) => {
                        for piece in bytes.chunks(DOWNLOAD_CHUNK) {
                            if !send(Message::Chunk(v1::Chunk {
                                data: piece.to_vec(),
                            }))
                            .await
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let status: Status = ServiceError::internal(e).into();
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

/// Largest payload chunk of a download message.
const DOWNLOAD_CHUNK: usize = 1 << 20;

type Message = v1::download_version_response::Message;

/// The files of a download besides the streamed weights.
struct Download {
    config_header: v1::CheckpointFile,
    config: Vec<u8>,
    model_header: v1::CheckpointFile,
}

impl Versions {
    /// Plans the download of a version: `config.json` (in memory) and the
    /// assembled `model.safetensors` (streamed from the blobs), with their headers.
    async fn plan_download(&self, version: u64) -> ServiceResult<(Download, AssembledCheckpoint)> {
        let state = &self.0;
        let mut conn = state.pool.acquire().await?;
        let row = rows::version(&mut conn, VersionNumber(version))
            .await?
            .ok_or_else(|| {
                ServiceError::not_found("UNKNOWN_VERSION", format!("no version {version}"))
            })?;
        drop(conn);
        if row.revoked_index.is_some() {
            return Err(ServiceError::new(
                Code::FailedPrecondition,
                "VERSION_REVOKED",
                format!("version {version} was revoked; download its replacement"),
            ));
        }
        let anchor = state
            .current_anchor()
            .filter(|a| a.digest == row.anchor)
            .ok_or_else(|| {
                ServiceError::new(
                    Code::FailedPrecondition,
                    "ANCHOR_UNAVAILABLE",
                    format!(
                        "the anchor {} of version {version} is not loaded",
                        row.anchor
                    ),
                )
            })?;
        let manifest = BlobManifest {
            anchor: row.anchor,
            experts: row.experts.iter().map(|(e, _)| e.expert.0).collect(),
            top_k: row.top_k as usize,
        };
        let assembled = AssembledCheckpoint::from_manifest(&state.store, &anchor.config, &manifest)
            .await
            .map_err(ServiceError::internal)?;
        let model_sha = assembled
            .sha256(&state.store)
            .await
            .map_err(ServiceError::internal)?;
        let config = assembled.config_json().into_bytes();
        Ok((
            Download {
                config_header: v1::CheckpointFile {
                    name: "config.json".into(),
                    size: config.len() as u64,
                    sha256: Some(digest_to_proto(&Sha256Digest::of(&config))),
                },
                config,
                model_header: v1::CheckpointFile {
                    name: "model.safetensors".into(),
                    size: assembled.len(),
                    sha256: Some(digest_to_proto(&model_sha)),
                },
            },
            assembled,
        ))
    }
}
