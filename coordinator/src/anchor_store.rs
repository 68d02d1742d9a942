//! Anchors at rest: every file of an anchor checkpoint directory stored once
//! as a content-addressed blob, and the `anchors` row listing them (name,
//! size, SHA-256). An anchor's identity is the SHA-256 of its
//! `model.safetensors`, the digest expert manifests name.
//!
//! Used by `serve --anchor DIR` ([`store_dir`], [`upsert`]), by
//! `PublishAnchor` ([`check_listing`], [`load_reference`], [`insert`]) and by
//! the downloads ([`find`], [`read_config`]).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use tokio::io::AsyncReadExt as _;
use tributary_ledger::Sha256Digest;
use tributary_model::FlexOlmoConfig;
use tributary_model::checkpoint::Checkpoint;
use tributary_model::error::ModelError;
use tributary_model::weights::TensorMap;

use crate::blobs::{BlobError, BlobStore};
use crate::validate::AnchorReference;

/// The weights: their SHA-256 is the anchor's digest.
pub const MODEL_FILE: &str = "model.safetensors";
/// The configuration.
pub const CONFIG_FILE: &str = "config.json";
/// Files every anchor has: contributors need all three to train.
pub const REQUIRED_FILES: [&str; 3] = [CONFIG_FILE, MODEL_FILE, "tokenizer.json"];

/// One file of a stored anchor, as `anchors.files` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorFile {
    /// Plain file name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, also the blob's address.
    pub sha256: Sha256Digest,
}

/// A row of `anchors`.
#[derive(Clone, Debug)]
pub struct AnchorRow {
    /// SHA-256 of its `model.safetensors`.
    pub digest: Sha256Digest,
    /// Its files, in the order they were stored.
    pub files: Vec<AnchorFile>,
    /// When it was stored, in ms since the Unix epoch.
    pub published_unix_ms: i64,
    /// Whether uploads are validated against it.
    pub current: bool,
}

impl AnchorRow {
    /// The file called `name`, if the anchor has one.
    pub fn file(&self, name: &str) -> Option<&AnchorFile> {
        file(&self.files, name)
    }
}

/// Why an anchor's files are not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// A name that is not a plain file name (separators, `..`, empty).
    #[error("{0:?} is not a plain file name")]
    BadName(String),
    /// A name listed twice.
    #[error("{0:?} is listed twice")]
    Duplicate(String),
    /// A file every anchor needs is absent.
    #[error("the anchor has no {0}")]
    Missing(&'static str),
    /// The files are larger than the limit.
    #[error("the anchor's files total {total} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Their total size.
        total: u64,
        /// The limit.
        limit: u64,
    },
    /// `tokenizer.json` is not a tokenizer the model can use.
    #[error("tokenizer.json is not usable: {0}")]
    Tokenizer(String),
    /// The files do not form a one-expert `flex_olmo` checkpoint.
    #[error("not a one-expert flex_olmo checkpoint: {0}")]
    Model(#[from] ModelError),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Reading a local file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause (in the message, not a separate one, so it is named once).
        error: std::io::Error,
    },
}

/// The file called `name` in `files`.
pub fn file<'a>(files: &'a [AnchorFile], name: &str) -> Option<&'a AnchorFile> {
    files.iter().find(|f| f.name == name)
}

/// Checks a file list: plain, distinct names; `config.json`,
/// `model.safetensors` and `tokenizer.json` present; at most `max_total`
/// bytes in all. Returns the anchor's digest (that of `model.safetensors`).
pub fn check_listing(files: &[AnchorFile], max_total: u64) -> Result<Sha256Digest, AnchorError> {
    let mut seen = std::collections::BTreeSet::new();
    for f in files {
        if !tributary_client::safe_file_name(&f.name) {
            return Err(AnchorError::BadName(f.name.clone()));
        }
        if !seen.insert(f.name.as_str()) {
            return Err(AnchorError::Duplicate(f.name.clone()));
        }
    }
    if let Some(missing) = REQUIRED_FILES.iter().copied().find(|r| !seen.contains(r)) {
        return Err(AnchorError::Missing(missing));
    }
    let total = files.iter().fold(0u64, |sum, f| sum.saturating_add(f.size));
    if total > max_total {
        return Err(AnchorError::TooLarge {
            total,
            limit: max_total,
        });
    }
    file(files, MODEL_FILE)
        .map(|f| f.sha256)
        .ok_or(AnchorError::Missing(MODEL_FILE))
}

/// Stores every regular file of `dir` as a blob (streamed; a blob already
/// stored is kept) and returns their list, sorted by name.
pub async fn store_dir(store: &BlobStore, dir: &Path) -> Result<Vec<AnchorFile>, AnchorError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| AnchorError::Io { path, error }
    };
    let mut entries = tokio::fs::read_dir(dir).await.map_err(io(dir))?;
    let mut paths = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(io(dir))? {
        if entry
            .file_type()
            .await
            .map_err(io(&entry.path()))?
            .is_file()
        {
            paths.push(entry.path());
        }
    }
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| AnchorError::BadName(path.display().to_string()))?
            .to_owned();
        let mut source = tokio::fs::File::open(&path).await.map_err(io(&path))?;
        let mut writer = store.writer().await?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = source.read(&mut buffer).await.map_err(io(&path))?;
            if n == 0 {
                break;
            }
            writer.write(&buffer[..n]).await?;
        }
        let sha256 = writer.digest_so_far();
        let size = writer.commit(&sha256).await?;
        files.push(AnchorFile { name, size, sha256 });
    }
    Ok(files)
}

async fn read_blob(store: &BlobStore, digest: &Sha256Digest) -> Result<Vec<u8>, BlobError> {
    use futures::TryStreamExt as _;
    let mut body = store.get(digest).await?;
    let mut out = Vec::new();
    while let Some(chunk) = body.try_next().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The anchor's `config.json`, read from its blob.
pub async fn read_config(
    store: &BlobStore,
    files: &[AnchorFile],
) -> Result<FlexOlmoConfig, AnchorError> {
    let config = file(files, CONFIG_FILE).ok_or(AnchorError::Missing(CONFIG_FILE))?;
    let text = read_blob(store, &config.sha256).await?;
    let text = String::from_utf8(text)
        .map_err(|_| ModelError::Config("config.json is not UTF-8".into()))?;
    Ok(FlexOlmoConfig::from_json(&text)?)
}

/// Loads the stored anchor as the reference uploads are validated against:
/// fails unless `config.json` and `model.safetensors` form a one-expert
/// `flex_olmo` checkpoint and `tokenizer.json` is a tokenizer with the
/// end-of-text token whose vocabulary fits the model's.
pub async fn load_reference(
    store: &BlobStore,
    files: &[AnchorFile],
) -> Result<Arc<AnchorReference>, AnchorError> {
    let config = read_config(store, files).await?;
    let tokenizer_file =
        file(files, "tokenizer.json").ok_or(AnchorError::Missing("tokenizer.json"))?;
    let tokenizer_sha = tokenizer_file.sha256;
    let bytes = read_blob(store, &tokenizer_sha).await?;
    let vocab_size = config.vocab_size;
    tokio::task::spawn_blocking(move || check_tokenizer(&bytes, vocab_size))
        .await
        .map_err(|e| AnchorError::Tokenizer(format!("the tokenizer loader panicked: {e}")))??;
    let model = file(files, MODEL_FILE).ok_or(AnchorError::Missing(MODEL_FILE))?;
    let digest = model.sha256;
    let weights = read_blob(store, &digest).await?;
    let reference = tokio::task::spawn_blocking(move || {
        let checkpoint = Checkpoint {
            config,
            tensors: TensorMap::from_safetensors(&weights)?,
            source_dir: None,
        };
        checkpoint.check_tensors()?;
        AnchorReference::from_checkpoint(&checkpoint, digest)
    })
    .await
    .map_err(|e| ModelError::Argument(format!("the anchor loader panicked: {e}")))??;
    Ok(Arc::new(AnchorReference {
        tokenizer: Some(tokenizer_sha),
        ..reference
    }))
}

/// Fails unless `bytes` load as a tokenizer (with `<|endoftext|>`) whose
/// every id is a row of a model with `vocab_size` embeddings.
pub fn check_tokenizer(bytes: &[u8], vocab_size: usize) -> Result<(), AnchorError> {
    let tokenizer = tributary_corpus::TextTokenizer::from_bytes(bytes, "tokenizer.json")
        .map_err(|e| AnchorError::Tokenizer(e.to_string()))?;
    let largest = tokenizer.largest_id();
    if largest as usize >= vocab_size {
        return Err(AnchorError::Tokenizer(format!(
            "it has token id {largest}, but the model has {vocab_size} embeddings"
        )));
    }
    Ok(())
}

/// The current anchor (`digest` `None`) or the one with `digest`.
pub async fn find(
    conn: &mut sqlx::PgConnection,
    digest: Option<&Sha256Digest>,
) -> Result<Option<AnchorRow>, sqlx::Error> {
    let row = sqlx::query(
        r"SELECT digest, files, (extract(epoch FROM published_at) * 1000)::bigint AS ms, is_current
          FROM anchors WHERE ($1::bytea IS NULL AND is_current) OR digest = $1",
    )
    .bind(digest.map(|d| d.0.to_vec()))
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let bytes: Vec<u8> = row.try_get("digest")?;
    let digest: [u8; 32] = bytes
        .try_into()
        .map_err(|_| sqlx::Error::Decode("an anchor digest has 32 bytes".into()))?;
    let files: sqlx::types::Json<Vec<AnchorFile>> = row.try_get("files")?;
    Ok(Some(AnchorRow {
        digest: Sha256Digest(digest),
        files: files.0,
        published_unix_ms: row.try_get("ms")?,
        current: row.try_get("is_current")?,
    }))
}

/// Whether an anchor with `digest` is stored, and the current anchor's
/// digest (reads no file list, so rows of any form do).
pub async fn known_and_current(
    conn: &mut sqlx::PgConnection,
    digest: &Sha256Digest,
) -> Result<(bool, Option<Sha256Digest>), sqlx::Error> {
    let row = sqlx::query(
        r"SELECT EXISTS (SELECT 1 FROM anchors WHERE digest = $1) AS known,
                 (SELECT digest FROM anchors WHERE is_current) AS current",
    )
    .bind(digest.0.as_slice())
    .fetch_one(conn)
    .await?;
    let current = row
        .try_get::<Option<Vec<u8>>, _>("current")?
        .map(|bytes| {
            <[u8; 32]>::try_from(bytes)
                .map(Sha256Digest)
                .map_err(|_| sqlx::Error::Decode("an anchor digest has 32 bytes".into()))
        })
        .transpose()?;
    Ok((row.try_get("known")?, current))
}

/// Inserts a new anchor row (not current); `false` when one with this digest
/// exists already (its files are left as they are).
pub async fn insert(
    tx: &mut sqlx::PgConnection,
    digest: &Sha256Digest,
    files: &[AnchorFile],
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        r"INSERT INTO anchors (digest, files) VALUES ($1, $2)
          ON CONFLICT ON CONSTRAINT anchors_pkey DO NOTHING",
    )
    .bind(digest.0.as_slice())
    .bind(sqlx::types::Json(files))
    .execute(tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Records the anchor installed from a directory at start-up: inserted, or
/// its file list replaced by the directory's.
pub async fn upsert(
    tx: &mut sqlx::PgConnection,
    digest: &Sha256Digest,
    files: &[AnchorFile],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r"INSERT INTO anchors (digest, files) VALUES ($1, $2)
          ON CONFLICT ON CONSTRAINT anchors_pkey DO UPDATE SET files = EXCLUDED.files",
    )
    .bind(digest.0.as_slice())
    .bind(sqlx::types::Json(files))
    .execute(tx)
    .await?;
    Ok(())
}

/// The key of the advisory lock that serialises anchor publishing (ASCII
/// "tribanch").
pub const PUBLISH_LOCK_KEY: i64 = 0x7472_6962_616e_6368;

/// Takes the publishing lock until the transaction ends: one anchor publish
/// at a time across coordinators, so none deletes a blob another relies on.
pub async fn lock_publishing(tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(r"SELECT pg_advisory_xact_lock($1)")
        .bind(PUBLISH_LOCK_KEY)
        .execute(tx)
        .await?;
    Ok(())
}

/// Makes the anchor `digest` the only current one (call inside a transaction).
pub async fn set_current(
    tx: &mut sqlx::PgConnection,
    digest: &Sha256Digest,
) -> Result<(), sqlx::Error> {
    // Two statements: the unique index on `is_current` is checked row by row.
    sqlx::query(r"UPDATE anchors SET is_current = false WHERE is_current AND digest <> $1")
        .bind(digest.0.as_slice())
        .execute(&mut *tx)
        .await?;
    sqlx::query(r"UPDATE anchors SET is_current = true WHERE digest = $1")
        .bind(digest.0.as_slice())
        .execute(&mut *tx)
        .await?;
    Ok(())
}
