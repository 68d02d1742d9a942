//! Expert packages: what a contributor uploads.
//!
//! A package directory holds `expert.safetensors` — for every layer the three
//! SwiGLU projections of the contributed FFN and the router row `r_i`, nothing
//! else — and `manifest.json`, which names the anchor it was trained against,
//! the sha256 of every tensor and of the whole payload, and training metadata.
//! The payload's sha256 is the expert's identity (its *digest*).

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::FlexOlmoConfig;
use crate::error::ModelError;
use crate::names;
use crate::weights::{TensorMap, write_atomic};

/// Format tag written into every manifest.
pub const MANIFEST_FORMAT: &str = "tributary-expert/1";
/// File name of the weights in a package.
pub const PAYLOAD_FILE: &str = "expert.safetensors";
/// File name of the manifest in a package.
pub const MANIFEST_FILE: &str = "manifest.json";

/// One tensor of the payload as the manifest describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Tensor name inside `expert.safetensors`.
    pub name: String,
    /// safetensors dtype (`F32`).
    pub dtype: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// SHA-256 of the tensor's raw bytes, lowercase hex.
    pub sha256: String,
}

/// How the expert was trained (reported by the contributor, shown to the operator).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingMetadata {
    /// Training tokens seen (steps × batch × sequence length).
    pub tokens: u64,
    /// Optimiser steps.
    pub steps: u64,
    /// Sequences per step.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Seed of the run.
    pub seed: u64,
    /// Mean training loss over the last steps (nats/token).
    pub final_train_loss: f64,
    /// Loss of the 2-expert model on the contributor's own held-out text, if any.
    pub heldout_loss: Option<f64>,
    /// Loss of the anchor on the same held-out text, if any.
    pub anchor_heldout_loss: Option<f64>,
    /// Tokens in the training data.
    pub data_tokens: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Router calibration: share of the contributor's sampled tokens on which the
    /// final router row beats `r_pub` (mean over layers), when calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_own_positive: Option<f64>,
    /// Router calibration: share of sampled public tokens on which it beats
    /// `r_pub` (should be small), when calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_public_positive: Option<f64>,
    /// The learned router bias `b_i` of each layer at the end of training.
    /// Training adds `min(b_i, 0)` to the expert's router logit; merging drops
    /// it (DESIGN.md), so a value ≥ 0 means the bias had no effect on the
    /// final 2-expert model either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_bias: Option<Vec<f64>>,
    /// The objective and router settings of the run, so that an expert trained
    /// with FlexOlmo's recipe can be told from one trained with this project's
    /// defaults (absent in packages written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<TrainingRecipe>,
}

/// The settings of an expert's training objective, as they took effect (a term
/// that could not apply, such as the public loss without public text, is 0).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecipe {
    /// Linear warm-up steps of the learning rate.
    pub warmup: u64,
    /// Decoupled weight decay on matrices.
    pub weight_decay: f64,
    /// Weight of the router z-loss.
    pub z_loss_weight: f64,
    /// How the router row `r_i` started: `mean-router-input` (FlexOlmo: the
    /// mean router input over the contributor's text), `logistic` (fitted
    /// against public text) or `gaussian` (Gaussian log-density ratio against
    /// public text).
    pub router_init: String,
    /// Learning-rate multiplier of `r_i` (0: kept at its initial value).
    pub router_lr_scale: f64,
    /// Weight of the router calibration term during training.
    pub router_calibration_weight: f64,
    /// L2 regulariser of the calibrated router offset.
    pub router_l2: f64,
    /// Margin by which public text must prefer the public expert.
    pub router_margin: f64,
    /// Scale of the Gaussian initial row (`router_init = gaussian`).
    pub router_gaussian_scale: f64,
    /// Weight of the language-modelling loss on public calibration text.
    pub public_loss_weight: f64,
    /// Weight of the term keeping the expert's FFN close to the public FFN on
    /// public calibration text (absent in manifests written before it existed: 0).
    #[serde(default)]
    pub public_match_weight: f64,
    /// Tokens of the public calibration text, if one was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_tokens: Option<u64>,
    /// SHA-256 of the public calibration text's token ids (little-endian
    /// `u32`), if one was used: whether two experts saw the same sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_sha256: Option<String>,
}

/// `manifest.json` of an expert package.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpertManifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// SHA-256 of the anchor's `model.safetensors` the expert was trained against.
    pub anchor_digest: String,
    /// Residual width the expert expects.
    pub hidden_size: usize,
    /// Width of the expert's FFN.
    pub intermediate_size: usize,
    /// Number of layers.
    pub num_layers: usize,
    /// Every tensor of the payload, in name order.
    pub tensors: Vec<TensorEntry>,
    /// SHA-256 of `expert.safetensors`: the expert's digest.
    pub payload_sha256: String,
    /// Payload size in bytes.
    pub payload_bytes: u64,
    /// How it was trained.
    pub training: TrainingMetadata,
}

/// An expert package in memory.
#[derive(Clone, Debug)]
pub struct ExpertPackage {
    /// The manifest.
    pub manifest: ExpertManifest,
    /// The payload tensors (package names).
    pub tensors: TensorMap,
}

/// The names and shapes an expert for `config` must have, in name order.
pub fn expected_expert_shapes(config: &FlexOlmoConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (config.hidden_size, config.intermediate_size);
    let mut v = Vec::new();
    for l in 0..config.num_hidden_layers {
        v.push((names::package_ffn(l, "gate_proj"), vec![i, h]));
        v.push((names::package_ffn(l, "up_proj"), vec![i, h]));
        v.push((names::package_ffn(l, "down_proj"), vec![h, i]));
        v.push((names::package_router(l), vec![h]));
    }
    v.sort();
    v
}

impl ExpertPackage {
    /// Builds a package from its tensors, computing every digest.
    pub fn new(
        config: &FlexOlmoConfig,
        anchor_digest: String,
        tensors: TensorMap,
        training: TrainingMetadata,
    ) -> Result<Self, ModelError> {
        check_shapes(config, &tensors)?;
        let payload = tensors.to_safetensors()?;
        let entries = tensors
            .0
            .iter()
            .map(|(name, t)| TensorEntry {
                name: name.clone(),
                dtype: "F32".into(),
                shape: t.shape.clone(),
                sha256: t.sha256(),
            })
            .collect();
        let manifest = ExpertManifest {
            format: MANIFEST_FORMAT.into(),
            anchor_digest,
            hidden_size: config.hidden_size,
            intermediate_size: config.intermediate_size,
            num_layers: config.num_hidden_layers,
            tensors: entries,
            payload_sha256: hex::encode(Sha256::digest(&payload)),
            payload_bytes: payload.len() as u64,
            training,
        };
        Ok(Self { manifest, tensors })
    }

    /// The expert's digest (sha256 of its payload).
    pub fn digest(&self) -> &str {
        &self.manifest.payload_sha256
    }

    /// Writes `expert.safetensors` and `manifest.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        write_atomic(&dir.join(PAYLOAD_FILE), &self.tensors.to_safetensors()?)?;
        let json = serde_json::to_string_pretty(&self.manifest)
            .map_err(|e| ModelError::Expert(format!("manifest: {e}")))?;
        write_atomic(&dir.join(MANIFEST_FILE), json.as_bytes())
    }

    /// Reads a package and checks the payload against every digest in its manifest.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let mpath = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&mpath).map_err(|e| ModelError::io(&mpath, e))?;
        let manifest: ExpertManifest = serde_json::from_str(&text)
            .map_err(|e| ModelError::Expert(format!("{}: {e}", mpath.display())))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(ModelError::Expert(format!(
                "{}: format {:?}, expected {MANIFEST_FORMAT:?}",
                mpath.display(),
                manifest.format
            )));
        }
        let ppath = dir.join(PAYLOAD_FILE);
        let payload = std::fs::read(&ppath).map_err(|e| ModelError::io(&ppath, e))?;
        let digest = hex::encode(Sha256::digest(&payload));
        if digest != manifest.payload_sha256 {
            return Err(ModelError::Expert(format!(
                "{}: sha256 {digest} differs from the manifest's {}",
                ppath.display(),
                manifest.payload_sha256
            )));
        }
        let tensors = TensorMap::from_safetensors(&payload)?;
        if tensors.0.len() != manifest.tensors.len() {
            return Err(ModelError::Expert(
                "payload and manifest list different tensors".into(),
            ));
        }
        for entry in &manifest.tensors {
            let t = tensors.get_shaped(&entry.name, &entry.shape)?;
            if t.sha256() != entry.sha256 {
                return Err(ModelError::Expert(format!(
                    "tensor {} does not match its sha256",
                    entry.name
                )));
            }
        }
        Ok(Self { manifest, tensors })
    }

    /// Fails unless this expert fits `anchor` (same digest and shapes).
    pub fn check_fits(
        &self,
        config: &FlexOlmoConfig,
        anchor_digest: &str,
    ) -> Result<(), ModelError> {
        if self.manifest.anchor_digest != anchor_digest {
            return Err(ModelError::Expert(format!(
                "expert {} was trained against anchor {}, not {anchor_digest}",
                self.digest(),
                self.manifest.anchor_digest
            )));
        }
        check_shapes(config, &self.tensors)
    }
}

fn check_shapes(config: &FlexOlmoConfig, tensors: &TensorMap) -> Result<(), ModelError> {
    let expected = expected_expert_shapes(config);
    for (name, shape) in &expected {
        tensors.get_shaped(name, shape)?;
    }
    if tensors.0.len() != expected.len() {
        return Err(ModelError::Expert(format!(
            "expert has {} tensors, expected {}",
            tensors.0.len(),
            expected.len()
        )));
    }
    Ok(())
}
