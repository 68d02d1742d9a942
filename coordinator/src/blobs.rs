//! The content-addressed blob store: anchors and experts, stored once each
//! under `sha256/<hex>` through `object_store` (a local directory by default,
//! S3 with the `aws` feature).
//!
//! Uploads stream through a [`BlobWriter`]: chunks are hashed as they arrive
//! and written as a multipart upload to a staging key `staging/<random>`;
//! [`BlobWriter::commit`] checks the digest and only then moves the object
//! under its content address. A failed, aborted or dropped upload removes its
//! staging object, so nothing half-written is ever visible under `sha256/`.
//! [`BlobStore::sweep_staging`] removes what a crashed process left behind.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _, TryStreamExt as _};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResultPayload, ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart,
};
use sha2::{Digest as _, Sha256};
use tributary_ledger::Sha256Digest;

/// Size of the parts a [`BlobWriter`] sends (object_store buffers one part).
pub const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once; bounds a writer's memory to about
/// `(MAX_PARTS_IN_FLIGHT + 1) × PART_SIZE`.
pub const MAX_PARTS_IN_FLIGHT: usize = 2;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The uploaded bytes do not hash to the digest the caller expected; the
    /// staging object was removed.
    #[error("uploaded bytes hash to {actual}, expected {expected}")]
    DigestMismatch {
        /// What the caller expected.
        expected: Sha256Digest,
        /// What the bytes hash to.
        actual: Sha256Digest,
    },
    /// No blob has this digest.
    #[error("no blob {0}")]
    NotFound(Sha256Digest),
    /// The store URL could not be understood.
    #[error("blob store URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The underlying store failed.
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
    /// A local directory could not be created, or a local file read.
    #[error("blob store path {path}: {error}")]
    Io {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause (in the message, not a separate one, so it is named once).
        error: std::io::Error,
    },
}

fn not_found(e: object_store::Error, digest: &Sha256Digest) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound(*digest),
        other => BlobError::Store(other),
    }
}

/// Bytes per read when streaming a range of a local file.
const FILE_PIECE: u64 = 1 << 20;

/// Streams `range` of a local `file` in [`FILE_PIECE`] reads, each on a
/// blocking thread.
fn read_pieces(
    file: std::fs::File,
    path: std::path::PathBuf,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, BlobError>> {
    let state = (file, path, range.start, range.end);
    futures::stream::try_unfold(state, |(file, path, at, end)| async move {
        if at >= end {
            return Ok(None);
        }
        let len = (end - at).min(FILE_PIECE);
        let read = tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Seek as _};
            let mut file = file;
            let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
            let read = file
                .seek(std::io::SeekFrom::Start(at))
                .and_then(|_| file.read_exact(&mut buf));
            read.map(|()| (file, Bytes::from(buf)))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match read {
            Ok((file, bytes)) => Ok(Some((bytes, (file, path, at + len, end)))),
            Err(error) => Err(BlobError::Io { path, error }),
        }
    })
    .boxed()
}

/// Blobs addressed by the SHA-256 of their bytes.
#[derive(Clone, Debug)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl BlobStore {
    /// A store in a local directory (created if missing).
    pub fn open_local(dir: &std::path::Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir).map_err(|error| BlobError::Io {
            path: dir.to_path_buf(),
            error,
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true);
        Ok(Self::new(Arc::new(fs), Path::default()))
    }

    /// Any `object_store` backend, with every key under `prefix`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        Self { store, prefix }
    }

    /// A store from a URL: `file:///var/lib/tributary/blobs`, `s3://bucket/prefix`
    /// (with the `aws` feature), `memory:///`. `options` are passed to the
    /// backend as object_store configuration keys (e.g. `aws_region`,
    /// `aws_endpoint`, `aws_access_key_id`, `aws_secret_access_key`).
    pub fn from_url<I, K, V>(url: &str, options: I) -> Result<Self, BlobError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let bad = |reason: String| BlobError::Url {
            url: url.to_owned(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|()| bad("not a local path".into()))?;
            return Self::open_local(&dir);
        }
        let (store, prefix) =
            object_store::parse_url_opts(&parsed, options).map_err(|e| bad(e.to_string()))?;
        Ok(Self::new(Arc::from(store), prefix))
    }

    /// The key of a committed blob.
    pub fn key(&self, digest: &Sha256Digest) -> Path {
        self.prefix.clone().join("sha256").join(digest.to_string())
    }

    fn staging_dir(&self) -> Path {
        self.prefix.clone().join("staging")
    }

    /// Starts a streaming upload.
    pub async fn writer(&self) -> Result<BlobWriter, BlobError> {
        let staging = self
            .staging_dir()
            .join(format!("{:032x}", rand::random::<u128>()));
        let upload = self.store.put_multipart(&staging).await?;
        Ok(BlobWriter {
            store: self.clone(),
            staging,
            upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)),
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Stores small bytes in one request (an anchor's config, a tokenizer, a test
    /// fixture) and returns their digest.
    pub async fn put_bytes(&self, bytes: Bytes) -> Result<Sha256Digest, BlobError> {
        let digest = Sha256Digest(Sha256::digest(&bytes).into());
        if !self.exists(&digest).await? {
            self.store
                .put(&self.key(&digest), PutPayload::from(bytes))
                .await?;
        }
        Ok(digest)
    }

    /// Whether a blob is stored.
    pub async fn exists(&self, digest: &Sha256Digest) -> Result<bool, BlobError> {
        Ok(self.size(digest).await?.is_some())
    }

    /// A blob's size, `None` when it is not stored.
    pub async fn size(&self, digest: &Sha256Digest) -> Result<Option<u64>, BlobError> {
        match self.store.head(&self.key(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The whole blob as a stream of chunks.
    pub async fn get(
        &self,
        digest: &Sha256Digest,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let result = self
            .store
            .get_opts(&self.key(digest), GetOptions::default())
            .await
            .map_err(|e| not_found(e, digest))?;
        Ok(result.into_stream().map_err(BlobError::from).boxed())
    }

    /// Bytes `range` of a blob as a stream of chunks (for large ranges).
    pub async fn get_range_stream(
        &self,
        digest: &Sha256Digest,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        if range.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        let options = GetOptions::default().with_range(Some(range));
        let result = self
            .store
            .get_opts(&self.key(digest), options)
            .await
            .map_err(|e| not_found(e, digest))?;
        Ok(match result.payload {
            // object_store streams a local file in 8 KiB reads, one blocking
            // task each: read larger pieces.
            GetResultPayload::File(file, path) => read_pieces(file, path, result.range),
            GetResultPayload::Stream(stream) => stream.map_err(BlobError::from).boxed(),
        })
    }

    /// Bytes `range` of a blob in memory (for headers and other small ranges).
    pub async fn get_range(
        &self,
        digest: &Sha256Digest,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        self.store
            .get_range(&self.key(digest), range)
            .await
            .map_err(|e| not_found(e, digest))
    }

    /// Deletes a blob; `false` when it was not stored.
    pub async fn delete(&self, digest: &Sha256Digest) -> Result<bool, BlobError> {
        if !self.exists(digest).await? {
            return Ok(false);
        }
        match self.store.delete(&self.key(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Every committed blob's digest (for audits and tests).
    pub async fn list(&self) -> Result<Vec<Sha256Digest>, BlobError> {
        let dir = self.prefix.clone().join("sha256");
        let metas: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        Ok(metas
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|name| Sha256Digest::from_hex(name).ok())
            .collect())
    }

    /// Staging objects present now: uploads in progress or left by a crash.
    pub async fn staging_objects(&self) -> Result<Vec<Path>, BlobError> {
        let dir = self.staging_dir();
        let metas: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        Ok(metas.into_iter().map(|m| m.location).collect())
    }

    /// Removes staging objects last modified more than `older_than` ago (call
    /// at start-up, when no upload of this process can be in flight, with
    /// `Duration::ZERO`). Returns how many were removed.
    pub async fn sweep_staging(&self, older_than: std::time::Duration) -> Result<usize, BlobError> {
        let dir = self.staging_dir();
        let metas: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for meta in metas {
            let modified: std::time::SystemTime = meta.last_modified.into();
            let age = now.duration_since(modified).unwrap_or_default();
            if age >= older_than {
                match self.store.delete(&meta.location).await {
                    Ok(()) => removed += 1,
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(removed)
    }
}

/// A streaming upload into a [`BlobStore`]: [`write`](Self::write) chunks, then
/// [`commit`](Self::commit) with the digest they must have, or
/// [`abort`](Self::abort). Dropping it uncommitted aborts it (the clean-up runs
/// on the current tokio runtime).
pub struct BlobWriter {
    store: BlobStore,
    staging: Path,
    upload: Option<WriteMultipart>,
    hasher: Sha256,
    len: u64,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("staging", &self.staging)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl BlobWriter {
    /// Appends a chunk (waiting while too many parts are in flight).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(object_store::Error::Generic {
                store: "blobs",
                source: "write after the upload ended".into(),
            }
            .into());
        };
        if let Err(e) = upload.wait_for_capacity(MAX_PARTS_IN_FLIGHT).await {
            self.abort_inner().await;
            return Err(e.into());
        }
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        if let Some(upload) = self.upload.as_mut() {
            upload.write(chunk);
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of the bytes written so far.
    pub fn digest_so_far(&self) -> Sha256Digest {
        Sha256Digest(self.hasher.clone().finalize().into())
    }

    /// Finishes the upload and moves it under `sha256/<expected>` if the bytes
    /// hash to `expected`; otherwise removes it and fails with
    /// [`BlobError::DigestMismatch`]. Committing a blob that is already stored
    /// keeps the existing one. Returns the blob's size.
    pub async fn commit(mut self, expected: &Sha256Digest) -> Result<u64, BlobError> {
        let actual = Sha256Digest(self.hasher.clone().finalize().into());
        if actual != *expected {
            self.abort_inner().await;
            return Err(BlobError::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        let Some(upload) = self.upload.take() else {
            return Err(BlobError::NotFound(*expected));
        };
        // `finish` aborts the multipart upload itself when it fails.
        upload.finish().await?;
        let result = Self::publish(&self.store, &self.staging, expected).await;
        if result.is_err() {
            let _ = self.store.store.delete(&self.staging).await;
        }
        result.map(|()| self.len)
    }

    // Takes the parts, not `&self`: a `BlobWriter` is `Send` but not `Sync`,
    // and the commit future must stay `Send` for the gRPC handlers.
    async fn publish(
        store: &BlobStore,
        staging: &Path,
        digest: &Sha256Digest,
    ) -> Result<(), BlobError> {
        if store.exists(digest).await? {
            store.store.delete(staging).await?;
        } else {
            store.store.rename(staging, &store.key(digest)).await?;
        }
        Ok(())
    }

    /// Abandons the upload, leaving nothing behind.
    pub async fn abort(mut self) -> Result<(), BlobError> {
        match self.upload.take() {
            Some(upload) => upload.abort().await.map_err(BlobError::from),
            None => Ok(()),
        }
    }

    async fn abort_inner(&mut self) {
        if let Some(upload) = self.upload.take() {
            let _ = upload.abort().await;
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}
