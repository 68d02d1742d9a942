//! Streaming checkpoint files to a caller (`DownloadVersion`, `FetchAnchor`):
//! for each file its header message, then its bytes in chunks of at most
//! [`CHUNK`], read from the blob store as the caller consumes them.

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt as _, TryStreamExt as _};
use tonic::Status;
use tributary_ledger::Sha256Digest;
use tributary_protos::v1;

use super::ServiceError;
use crate::blobs::{BlobError, BlobStore};

/// Largest payload of one chunk message.
pub const CHUNK: usize = 1 << 20;

/// The bytes of one file, produced lazily.
pub type Body = BoxStream<'static, Result<Bytes, BlobError>>;

/// A stored blob's bytes, opened when first polled.
pub fn blob(store: &BlobStore, digest: Sha256Digest) -> Body {
    let store = store.clone();
    stream::once(async move { store.get(&digest).await })
        .try_flatten()
        .boxed()
}

/// Bytes held in memory.
pub fn bytes(bytes: Bytes) -> Body {
    stream::once(async move { Ok(bytes) }).boxed()
}

/// The response stream of a download: every `(header, body)` in order, the
/// body cut into chunk messages made by `chunk`. A failed read ends the
/// stream with `INTERNAL`; a caller that goes away stops the reading.
pub fn send<M: Send + 'static>(
    files: Vec<(M, Body)>,
    chunk: fn(v1::Chunk) -> M,
) -> tokio_stream::wrappers::ReceiverStream<Result<M, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for (header, mut body) in files {
            if tx.send(Ok(header)).await.is_err() {
                return;
            }
            while let Some(next) = body.next().await {
                let bytes = match next {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        let _ = tx.send(Err(ServiceError::internal(e).into())).await;
                        return;
                    }
                };
                for piece in bytes.chunks(CHUNK) {
                    let data = piece.to_vec();
                    if tx.send(Ok(chunk(v1::Chunk { data }))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
