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
