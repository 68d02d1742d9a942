//! DESIGN step 7 on the upload path: the quality gate run by the service.
//!
//! The operator's public validation text is tokenized once, at start, with the
//! anchor's tokenizer. For an upload that passed steps 1–6, [`Gate::check`]
//! loads the current anchor (cached per digest), the experts of every head
//! version the upload's consent would extend, and the candidate from the blob
//! store, then runs [`quality_gate`] once per distinct expert set on a
//! blocking thread, stopping at the first failure. It holds the experts in
//! memory, model-sized: an operator with very large experts can turn it off
//! (serve without `--public-validation`).

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::TryStreamExt as _;
use tributary_ledger::{Purpose, Sha256Digest};
use tributary_model::checkpoint::Checkpoint;
use tributary_model::weights::TensorMap;

use super::publish::head;
use super::{ServiceError, ServiceResult};
use crate::blobs::BlobStore;
use crate::validate::{
    AnchorReference, QualityGateConfig, QualityReport, load_expert, quality_gate,
};

/// The quality gate of a running coordinator.
pub struct Gate {
    config: QualityGateConfig,
    tokens: Arc<Vec<u32>>,
    anchor: tokio::sync::Mutex<Option<(Sha256Digest, Arc<Checkpoint>)>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("config", &self.config)
            .field("tokens", &self.tokens.len())
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

impl Gate {
    /// A gate scoring `tokens` (the public validation text) with `config`.
    pub fn new(config: QualityGateConfig, tokens: Vec<u32>) -> Self {
        Self {
            config,
            tokens: Arc::new(tokens),
            anchor: tokio::sync::Mutex::new(None),
        }
    }

    /// Tokens of public validation text it scores.
    pub fn tokens(&self) -> usize {
        self.tokens.len()
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
                self.tokens.clone(),
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
