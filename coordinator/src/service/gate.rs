//! DESIGN step 7 on the upload path: the quality gate run by the service.
//!
//! The operator's public validation text is kept as documents and read with
//! the current anchor's own tokenizer: once at start (so that a text too
//! short for the gate stops the coordinator there), again whenever an anchor
//! with another `tokenizer.json` is published as current (refused if the
//! text is too short under it); the token ids of the last tokenizer used are
//! kept, by its digest. For an upload that passed steps 1–6, [`Gate::check`]
//! loads the current anchor (cached per digest), the experts of every head
//! version the upload's consent would extend, and the candidate from the blob
//! store, then runs [`quality_gate`] once per distinct expert set on a
//! blocking thread, stopping at the first failure. It holds the experts in
//! memory, model-sized: an operator with very large experts can turn it off
//! (serve without `--public-validation`).

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::TryStreamExt as _;
use tonic::Code;
use tributary_corpus::{Document, TextTokenizer};
use tributary_ledger::{Purpose, Sha256Digest};
use tributary_model::checkpoint::Checkpoint;
use tributary_model::weights::TensorMap;

use super::publish::head;
use super::{ServiceError, ServiceResult};
use crate::blobs::BlobStore;
use crate::validate::{
    AnchorReference, QualityGateConfig, QualityReport, load_expert, quality_gate,
};

/// Why the gate cannot read its public validation text for an anchor.
#[derive(Debug, thiserror::Error)]
pub enum GateTextError {
    /// The anchor was loaded without its `tokenizer.json`.
    #[error("anchor {0} has no tokenizer.json")]
    NoTokenizer(Sha256Digest),
    /// The tokenizer's blob could not be read.
    #[error("reading the anchor's tokenizer.json: {0}")]
    Blob(String),
    /// The tokenizer failed on the text.
    #[error("reading the public validation text with the tokenizer of anchor {anchor}: {source}")]
    Tokenizer {
        /// The anchor.
        anchor: Sha256Digest,
        /// What the tokenizer reported.
        source: tributary_corpus::TokenizerError,
    },
    /// Too few tokens for one scoring window.
    #[error(
        "the quality gate's public validation text is {tokens} tokens with the tokenizer of \
         anchor {anchor} (at most --gate-tokens {max_tokens} are read); one scoring window \
         needs {needed}, so the gate cannot score uploads against this anchor"
    )]
    TooShort {
        /// The anchor.
        anchor: Sha256Digest,
        /// Tokens the text gave.
        tokens: usize,
        /// The gate's token budget.
        max_tokens: usize,
        /// Tokens one window needs.
        needed: usize,
    },
}

impl From<GateTextError> for ServiceError {
    fn from(error: GateTextError) -> Self {
        match error {
            GateTextError::TooShort { .. } => ServiceError::new(
                Code::FailedPrecondition,
                "GATE_TEXT_TOO_SHORT",
                error.to_string(),
            ),
            other => ServiceError::internal(other),
        }
    }
}

/// The quality gate of a running coordinator.
pub struct Gate {
    config: QualityGateConfig,
    documents: Arc<Vec<Document>>,
    max_tokens: usize,
    /// The public text as the last tokenizer used read it, by that
    /// `tokenizer.json`'s digest.
    tokens: tokio::sync::Mutex<Option<(Sha256Digest, Arc<Vec<u32>>)>>,
    anchor: tokio::sync::Mutex<Option<(Sha256Digest, Arc<Checkpoint>)>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("config", &self.config)
            .field("documents", &self.documents.len())
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

async fn read_blob(store: &BlobStore, digest: &Sha256Digest) -> ServiceResult<Vec<u8>> {
    let mut stream = store.get(digest).await.map_err(ServiceError::internal)?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.try_next().await.map_err(ServiceError::internal)? {
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Where [`Gate::tokens_with`] finds the anchor's `tokenizer.json`.
enum TokenizerSource<'a> {
    /// In the blob store, by the digest the anchor reference notes.
    Store(&'a BlobStore),
    /// Read already (from the directory an anchor is installed from).
    Bytes(Vec<u8>),
}

impl Gate {
    /// A gate scoring the first `max_tokens` tokens of `documents` (the
    /// public validation text) with `config`.
    pub fn new(config: QualityGateConfig, documents: Vec<Document>, max_tokens: usize) -> Self {
        Self {
            config,
            documents: Arc::new(documents),
            max_tokens,
            tokens: tokio::sync::Mutex::new(None),
            anchor: tokio::sync::Mutex::new(None),
        }
    }

    /// The public validation text as `anchor`'s tokenizer reads it: the
    /// tokens the gate scores for uploads against `anchor`. Tokenizes when
    /// the anchor's `tokenizer.json` differs from the last one used; fails
    /// ([`GateTextError::TooShort`]) when the text has fewer than
    /// `seq_len + 1` tokens, not one full scoring window.
    pub async fn public_tokens(
        &self,
        store: &BlobStore,
        anchor: &AnchorReference,
    ) -> Result<Arc<Vec<u32>>, GateTextError> {
        self.tokens_with(anchor, TokenizerSource::Store(store))
            .await
    }

    /// As [`Gate::public_tokens`], with `anchor`'s `tokenizer.json` given as
    /// bytes (`anchor.tokenizer` must be their digest): checks an anchor
    /// before any of its files is stored.
    pub async fn public_tokens_of(
        &self,
        anchor: &AnchorReference,
        tokenizer_json: Vec<u8>,
    ) -> Result<Arc<Vec<u32>>, GateTextError> {
        self.tokens_with(anchor, TokenizerSource::Bytes(tokenizer_json))
            .await
    }

    async fn tokens_with(
        &self,
        anchor: &AnchorReference,
        source: TokenizerSource<'_>,
    ) -> Result<Arc<Vec<u32>>, GateTextError> {
        let tokenizer = anchor
            .tokenizer
            .ok_or(GateTextError::NoTokenizer(anchor.digest))?;
        let mut cached = self.tokens.lock().await;
        if let Some((digest, tokens)) = cached.as_ref()
            && *digest == tokenizer
        {
            return Ok(tokens.clone());
        }
        let bytes = match source {
            TokenizerSource::Store(store) => read_blob(store, &tokenizer)
                .await
                .map_err(|e| GateTextError::Blob(e.detail))?,
            TokenizerSource::Bytes(bytes) => bytes,
        };
        let documents = self.documents.clone();
        let max_tokens = self.max_tokens;
        let tokens = tokio::task::spawn_blocking(move || {
            let tokenizer = TextTokenizer::from_bytes(&bytes, format!("blob {tokenizer}"))?;
            let mut tokens = tributary_corpus::token_stream(&documents, &tokenizer)?;
            tokens.truncate(max_tokens);
            Ok::<_, tributary_corpus::TokenizerError>(tokens)
        })
        .await
        .map_err(|e| GateTextError::Blob(format!("the tokenizer panicked: {e}")))?
        .map_err(|source| GateTextError::Tokenizer {
            anchor: anchor.digest,
            source,
        })?;
        if tokens.len() <= self.config.seq_len {
            return Err(GateTextError::TooShort {
                anchor: anchor.digest,
                tokens: tokens.len(),
                max_tokens,
                needed: self.config.seq_len + 1,
            });
        }
        tracing::info!(anchor = %anchor.digest, tokens = tokens.len(), "quality gate text tokenized");
        let tokens = Arc::new(tokens);
        *cached = Some((tokenizer, tokens.clone()));
        Ok(tokens)
    }

    async fn checkpoint(
        &self,
        store: &BlobStore,
        anchor: &AnchorReference,
    ) -> ServiceResult<Arc<Checkpoint>> {
        let mut cached = self.anchor.lock().await;
        if let Some((digest, checkpoint)) = cached.as_ref()
            && *digest == anchor.digest
        {
            return Ok(checkpoint.clone());
        }
        let bytes = read_blob(store, &anchor.digest).await?;
        let tensors = TensorMap::from_safetensors(&bytes).map_err(ServiceError::internal)?;
        let checkpoint = Arc::new(Checkpoint {
            config: anchor.config.clone(),
            tensors,
            source_dir: None,
        });
        *cached = Some((anchor.digest, checkpoint.clone()));
        Ok(checkpoint)
    }

    /// Runs the gate for `candidate` (already in the blob store) against the
    /// head version of each of `purposes` on `anchor`; returns the first
    /// failing report, or the last passing one.
    pub async fn check(
        &self,
        conn: &mut sqlx::PgConnection,
        store: &BlobStore,
        anchor: &Arc<AnchorReference>,
        purposes: &[Purpose],
        candidate: &Sha256Digest,
    ) -> ServiceResult<QualityReport> {
        let mut sets = BTreeSet::new();
        for purpose in purposes {
            let experts: Vec<Sha256Digest> = head(conn, purpose)
                .await?
                .filter(|v| v.anchor == anchor.digest)
                .map(|v| {
                    v.experts
                        .iter()
                        .map(|(e, _)| e.expert.0)
                        .filter(|d| d != candidate)
                        .collect()
                })
                .unwrap_or_default();
            sets.insert(experts);
        }
        let checkpoint = self.checkpoint(store, anchor).await?;
        let tokens = self.public_tokens(store, anchor).await?;
        let load = |bytes: Vec<u8>| load_expert(&bytes, anchor).map_err(ServiceError::internal);
        let candidate = load(read_blob(store, candidate).await?)?;
        let mut last = None;
        for set in sets {
            let mut current = Vec::with_capacity(set.len());
            for digest in &set {
                current.push(load(read_blob(store, digest).await?)?);
            }
            let (checkpoint, candidate, tokens, config) = (
                checkpoint.clone(),
                candidate.clone(),
                tokens.clone(),
                self.config.clone(),
            );
            let report = tokio::task::spawn_blocking(move || {
                quality_gate(&checkpoint, &current, &candidate, &tokens, &config)
            })
            .await
            .map_err(ServiceError::internal)?
            .map_err(ServiceError::internal)?;
            if report.rejection.is_some() {
                return Ok(report);
            }
            last = Some(report);
        }
        last.ok_or_else(|| ServiceError::internal("the consent allows no purpose"))
    }
}
