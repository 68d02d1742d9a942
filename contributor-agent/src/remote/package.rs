//! Expert packages as the coordinator sees them: the ledger's
//! [`ExpertManifest`] of a package directory written by `train`, and the
//! expert digest a consent names.

use std::path::Path;

use anyhow::{Context, Result};
use tributary_ledger::event::{ExpertManifest, Figure, TensorDigest, TrainingMetadata};
use tributary_ledger::{ExpertDigest, Sha256Digest};
use tributary_model::ExpertPackage;
use tributary_model::expert::{self, PAYLOAD_FILE};

fn sha256(what: &str, hex: &str) -> Result<Sha256Digest> {
    Sha256Digest::from_hex(hex).with_context(|| format!("{what}: {hex:?} is no sha256"))
}

/// The manifest a contributor signs for an upload, from a package's `manifest.json`.
///
/// The held-out loss is the package's own held-out loss (`train` always
/// holds some text out); a package without one cannot be submitted.
pub fn ledger_manifest(m: &expert::ExpertManifest) -> Result<ExpertManifest> {
    let tensors = m
        .tensors
        .iter()
        .map(|t| {
            Ok(TensorDigest {
                name: t.name.clone(),
                sha256: sha256(&t.name, &t.sha256)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let loss = m
        .training
        .heldout_loss
        .context("the manifest records no held-out loss; train with held-out text")?;
    Ok(ExpertManifest {
        anchor: sha256("anchor_digest", &m.anchor_digest)?,
        tensors,
        total: ExpertDigest(sha256("payload_sha256", &m.payload_sha256)?),
        training: TrainingMetadata {
            tokens: m.training.tokens,
            steps: m.training.steps,
            held_out_loss: Figure::from_f64(loss)
                .with_context(|| format!("held-out loss {loss} is not finite"))?,
        },
    })
}

/// A package directory, checked against its manifest: the ledger manifest to
/// sign, and the payload file to stream.
pub fn load_for_upload(dir: &Path) -> Result<(ExpertManifest, std::path::PathBuf)> {
    let package = ExpertPackage::load(dir)
        .with_context(|| format!("reading the expert package {}", dir.display()))?;
    Ok((ledger_manifest(&package.manifest)?, dir.join(PAYLOAD_FILE)))
}

/// The expert a consent covers: a package directory (its payload's sha256)
/// or a digest written as 64 hex digits.
pub fn expert_digest(dir_or_digest: &str) -> Result<ExpertDigest> {
    let path = Path::new(dir_or_digest);
    if path.join(expert::MANIFEST_FILE).is_file() {
        let package = ExpertPackage::load(path)
            .with_context(|| format!("reading the expert package {}", path.display()))?;
        return Ok(ExpertDigest(sha256("payload_sha256", package.digest())?));
    }
    Ok(ExpertDigest(sha256(
        "--expert (neither a package directory nor a digest)",
        dir_or_digest,
    )?))
}
