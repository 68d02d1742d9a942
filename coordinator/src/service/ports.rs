//! The small interfaces the service needs from the blob store and the
//! upload validator (`blobs.rs`, `validate.rs`, `assemble.rs`, written
//! separately): the gRPC layer depends on these traits only.

use tributary_ledger::Sha256Digest;

/// Deletes blobs (an expert's weights on erasure).
#[tonic::async_trait]
pub trait BlobEraser: Send + Sync + std::fmt::Debug {
    /// Deletes the blob with this digest; deleting an absent blob succeeds.
    async fn delete(&self, sha256: &Sha256Digest) -> Result<(), String>;
}

#[tonic::async_trait]
impl BlobEraser for crate::blobs::BlobStore {
    async fn delete(&self, sha256: &Sha256Digest) -> Result<(), String> {
        crate::blobs::BlobStore::delete(self, sha256)
            .await
            .map(|_| ())
            .map_err(|e| format!("deleting blob {sha256}: {e}"))
    }
}

/// A blob directory laid out as `<dir>/<hex sha256>`: enough for erasure
/// until the content-addressed store over `object_store` is wired in.
#[derive(Debug, Clone)]
pub struct LocalBlobDir(pub std::path::PathBuf);

#[tonic::async_trait]
impl BlobEraser for LocalBlobDir {
    async fn delete(&self, sha256: &Sha256Digest) -> Result<(), String> {
        match tokio::fs::remove_file(self.0.join(sha256.to_string())).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("deleting blob {sha256}: {e}")),
        }
    }
}
