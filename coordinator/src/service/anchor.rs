//! `AnchorService`: the published anchor. `PublishAnchor` (operator only)
//! receives the files of a checkpoint directory, stores each as a blob while
//! checking its size and SHA-256, checks that they form a one-expert
//! `flex_olmo` checkpoint, and records the `anchors` row (and, if asked, makes
//! it current) — or, on any failure, deletes the blobs the call created.
//! `GetAnchor` describes an anchor; `FetchAnchor` streams its files.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Code, Request, Response, Status, Streaming};
use tributary_client::convert;
use tributary_ledger::Sha256Digest;
use tributary_protos::v1;
use tributary_protos::v1::anchor_service_server::AnchorService;

use super::{AppState, ServiceError, ServiceResult, auth, files};
use crate::anchor_store::{self, AnchorError, AnchorFile, AnchorRow};
use crate::blobs::BlobStore;
use crate::validate::AnchorReference;

/// The service.
#[derive(Debug, Clone)]
pub struct Anchors(pub Arc<AppState>);

fn file_to_proto(file: &AnchorFile) -> v1::AnchorFile {
    v1::AnchorFile {
        name: file.name.clone(),
        size: file.size,
        sha256: Some(convert::digest_to_proto(&file.sha256)),
    }
}

fn info(row: &AnchorRow) -> v1::AnchorInfo {
    v1::AnchorInfo {
        digest: Some(convert::digest_to_proto(&row.digest)),
        files: row.files.iter().map(file_to_proto).collect(),
        published_unix_ms: row.published_unix_ms,
        current: row.current,
    }
}

impl From<AnchorError> for ServiceError {
    fn from(error: AnchorError) -> Self {
        let reason = match &error {
            AnchorError::BadName(_) | AnchorError::Duplicate(_) => "BAD_FILE_NAME",
            AnchorError::Missing(_) => "ANCHOR_MISSING_FILE",
            AnchorError::TooLarge { .. } => "ANCHOR_TOO_LARGE",
            AnchorError::Model(_) | AnchorError::Tokenizer(_) => "BAD_ANCHOR",
            AnchorError::Blob(_) | AnchorError::Io { .. } => return Self::internal(error),
        };
        Self::invalid(reason, error.to_string())
    }
}

/// The bytes after the header of a `PublishAnchor` call, taken file by file.
struct Incoming<'a> {
    stream: &'a mut Streaming<v1::PublishAnchorRequest>,
    pending: Bytes,
}

impl Incoming<'_> {
    /// Up to `max` of the next bytes; `None` at the end of the stream.
    async fn take(&mut self, max: u64) -> ServiceResult<Option<Bytes>> {
        while self.pending.is_empty() {
            let message =
                self.stream.message().await.map_err(|s| {
                    ServiceError::invalid("MALFORMED_REQUEST", s.message().to_string())
                })?;
            match message.and_then(|m| m.message) {
                None => return Ok(None),
                Some(v1::publish_anchor_request::Message::Chunk(chunk)) => {
                    self.pending = Bytes::from(chunk.data);
                }
                Some(v1::publish_anchor_request::Message::Header(_)) => {
                    return Err(ServiceError::invalid(
                        "MALFORMED_REQUEST",
                        "every message after the header must be a chunk",
                    ));
                }
            }
        }
        let n = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(self.pending.len());
        Ok(Some(self.pending.split_to(n)))
    }
}

/// Streams the next `file.size` bytes into a blob and commits it if they
/// hash to `file.sha256`; returns whether the blob is new.
async fn receive_file(
    store: &BlobStore,
    incoming: &mut Incoming<'_>,
    file: &AnchorFile,
) -> ServiceResult<bool> {
    let mut writer = store.writer().await.map_err(ServiceError::internal)?;
    while writer.len() < file.size {
        let Some(bytes) = incoming.take(file.size - writer.len()).await? else {
            let received = writer.len();
            let _ = writer.abort().await;
            return Err(ServiceError::invalid(
                "ANCHOR_INCOMPLETE",
                format!(
                    "the stream ended after {received} of the {} bytes of {}",
                    file.size, file.name
                ),
            ));
        };
        writer.write(&bytes).await.map_err(ServiceError::internal)?;
    }
    if writer.digest_so_far() != file.sha256 {
        let _ = writer.abort().await;
        return Err(ServiceError::invalid(
            "ANCHOR_FILE_MISMATCH",
            format!(
                "the bytes of {} do not hash to its header's SHA-256",
                file.name
            ),
        ));
    }
    let existed = store
        .exists(&file.sha256)
        .await
        .map_err(ServiceError::internal)?;
    writer
        .commit(&file.sha256)
        .await
        .map_err(ServiceError::internal)?;
    Ok(!existed)
}

/// Parses a header's file list.
fn listing(files: &[v1::AnchorFile]) -> ServiceResult<Vec<AnchorFile>> {
    files
        .iter()
        .map(|f| {
            Ok(AnchorFile {
                name: f.name.clone(),
                size: f.size,
                sha256: convert::digest("files.sha256", f.sha256.as_ref())?,
            })
        })
        .collect()
}

/// Succeeds when the stored anchor `digest` has exactly `files` (in any
/// order): publishing it again is a no-op; otherwise `ANCHOR_EXISTS`.
async fn same_files(
    conn: &mut sqlx::PgConnection,
    digest: &Sha256Digest,
    files: &[AnchorFile],
) -> ServiceResult<()> {
    let sorted = |mut list: Vec<AnchorFile>| {
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    };
    let existing = anchor_store::find(conn, Some(digest))
        .await?
        .ok_or_else(|| ServiceError::internal("an anchor row vanished"))?;
    if sorted(existing.files) == sorted(files.to_vec()) {
        return Ok(());
    }
    Err(ServiceError::new(
        Code::AlreadyExists,
        "ANCHOR_EXISTS",
        format!("anchor {digest} is published with other files"),
    ))
}

impl Anchors {
    async fn get(&self, request: &v1::GetAnchorRequest) -> ServiceResult<AnchorRow> {
        let digest = request
            .digest
            .as_ref()
            .map(|d| convert::digest("digest", Some(d)))
            .transpose()?;
        let mut conn = self.0.pool.acquire().await?;
        anchor_store::find(&mut conn, digest.as_ref())
            .await?
            .ok_or_else(|| ServiceError::not_found("NO_ANCHOR", "no such anchor is published"))
    }

    async fn publish(
        &self,
        mut stream: Streaming<v1::PublishAnchorRequest>,
    ) -> ServiceResult<v1::AnchorInfo> {
        let first = stream
            .message()
            .await
            .map_err(|s| ServiceError::invalid("MALFORMED_REQUEST", s.message().to_string()))?;
        let Some(v1::PublishAnchorRequest {
            message: Some(v1::publish_anchor_request::Message::Header(header)),
        }) = first
        else {
            return Err(ServiceError::invalid(
                "MALFORMED_REQUEST",
                "the first message must be the header",
            ));
        };
        let state = &self.0;
        let mut tx = state.pool.begin().await?;
        auth::authenticate(state, &mut tx, &header)
            .await?
            .operator()?;
        let files = listing(&header.files)?;
        let digest = anchor_store::check_listing(&files, state.limits.max_upload_bytes)?;
        // Held until the transaction ends, so that no other publish sees a
        // blob this one may still delete.
        anchor_store::lock_publishing(&mut tx).await?;
        let mut created = Vec::new();
        let stored = self
            .store_and_record(&mut stream, &files, &mut created, &mut tx)
            .await;
        let reference = match stored {
            Ok(reference) => reference,
            Err(e) => {
                self.delete_blobs(&created).await;
                return Err(e);
            }
        };
        if header.make_current {
            // The quality gate reads its text with the current anchor's
            // tokenizer: refuse an anchor under which that text is too short.
            if let Some(gate) = &state.gate
                && let Err(e) = gate.public_tokens(&state.store, &reference).await
            {
                self.delete_blobs(&created).await;
                return Err(e.into());
            }
            anchor_store::set_current(&mut tx, &digest).await?;
        }
        if let Err(e) = tx.commit().await {
            self.delete_blobs(&created).await;
            return Err(e.into());
        }
        if header.make_current {
            state.set_current_anchor(reference);
            tracing::info!(anchor = %digest, "anchor published and made current");
        }
        let mut conn = state.pool.acquire().await?;
        let row = anchor_store::find(&mut conn, Some(&digest))
            .await?
            .ok_or_else(|| ServiceError::internal("a published anchor has no row"))?;
        Ok(info(&row))
    }

    /// Deletes the blobs a refused publish created.
    async fn delete_blobs(&self, created: &[Sha256Digest]) {
        for blob in created {
            if let Err(e) = self.0.store.delete(blob).await {
                tracing::error!(%blob, error = %e, "deleting a blob of a refused anchor");
            }
        }
    }

    /// Receives the files (noting in `created` the blobs this call adds),
    /// loads them as an anchor and records its row in `tx`.
    async fn store_and_record(
        &self,
        stream: &mut Streaming<v1::PublishAnchorRequest>,
        files: &[AnchorFile],
        created: &mut Vec<Sha256Digest>,
        tx: &mut sqlx::PgConnection,
    ) -> ServiceResult<Arc<AnchorReference>> {
        let state = &self.0;
        let mut incoming = Incoming {
            stream,
            pending: Bytes::new(),
        };
        for file in files {
            if receive_file(&state.store, &mut incoming, file).await? {
                created.push(file.sha256);
            }
        }
        if incoming.take(u64::MAX).await?.is_some() {
            return Err(ServiceError::invalid(
                "ANCHOR_EXTRA_BYTES",
                "bytes follow the last file of the header",
            ));
        }
        let reference = anchor_store::load_reference(&state.store, files).await?;
        let digest = reference.digest;
        if !anchor_store::insert(&mut *tx, &digest, files).await? {
            same_files(tx, &digest, files).await?;
        }
        Ok(reference)
    }
}

type FetchStream = tokio_stream::wrappers::ReceiverStream<Result<v1::FetchAnchorResponse, Status>>;

#[tonic::async_trait]
impl AnchorService for Anchors {
    async fn publish_anchor(
        &self,
        request: Request<Streaming<v1::PublishAnchorRequest>>,
    ) -> Result<Response<v1::AnchorInfo>, Status> {
        Ok(Response::new(self.publish(request.into_inner()).await?))
    }

    async fn get_anchor(
        &self,
        request: Request<v1::GetAnchorRequest>,
    ) -> Result<Response<v1::AnchorInfo>, Status> {
        Ok(Response::new(info(&self.get(request.get_ref()).await?)))
    }

    type FetchAnchorStream = FetchStream;

    async fn fetch_anchor(
        &self,
        request: Request<v1::GetAnchorRequest>,
    ) -> Result<Response<Self::FetchAnchorStream>, Status> {
        use v1::fetch_anchor_response::Message;
        let row = self.get(request.get_ref()).await?;
        let store = &self.0.store;
        let files = row
            .files
            .iter()
            .map(|f| {
                let header = v1::FetchAnchorResponse {
                    message: Some(Message::File(file_to_proto(f))),
                };
                (header, files::blob(store, f.sha256))
            })
            .collect();
        Ok(Response::new(files::send(files, |c| {
            v1::FetchAnchorResponse {
                message: Some(Message::Chunk(c)),
            }
        })))
    }
}
