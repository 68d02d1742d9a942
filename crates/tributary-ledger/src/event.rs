//! The typed events of the consent ledger (DESIGN.md, "Contributions, consent
//! and versions") and who must sign each of them.
//!
//! Events serialise to JSON with a `kind` tag; their canonical bytes are made
//! by [`crate::canonical`]. Adding a field to an event is a new format
//! version ([`crate::entry::FORMAT_VERSION`]), never a silent change.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{
    ConsentId, ContributorId, ExpertDigest, Purpose, ReasonCode, Sha256Digest, SubmissionId,
    Timestamp, VersionNumber,
};
use crate::keys::PublicKey;

/// A decimal figure (a loss, a ratio, a perplexity) carried as a string so that
/// its canonical bytes never depend on floating-point formatting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Figure(String);

impl Figure {
    /// The shortest decimal that round-trips `value`; `None` unless finite.
    pub fn from_f64(value: f64) -> Option<Self> {
        value.is_finite().then(|| Self(format!("{value}")))
    }

    /// The figure as a number.
    pub fn to_f64(&self) -> f64 {
        self.0.parse().unwrap_or(f64::NAN)
    }

    /// The figure as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Figure {
    type Error = crate::ids::IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let parsed: Option<f64> = value.parse().ok().filter(|v: &f64| v.is_finite());
        match parsed {
            Some(v) if format!("{v}") == value => Ok(Self(value)),
            _ => Err(crate::ids::IdError {
                kind: "figure",
                reason: format!("{value:?} is not a canonical finite decimal"),
            }),
        }
    }
}

impl From<Figure> for String {
    fn from(value: Figure) -> String {
        value.0
    }
}

/// The first entry of every log: names the log and establishes the operator's key,
/// which seals every entry and signs contributor invitations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCreated {
    /// The checkpoint origin line of this log, e.g. `ledger.example.org/tributary`.
    pub origin: String,
    /// The operator's Ed25519 key.
    pub operator_key: PublicKey,
}

/// A contributor joins; signed by the operator (the invitation) and the contributor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContributorRegistered {
    /// The new contributor.
    pub contributor: ContributorId,
    /// Its organisation's name.
    pub organisation: String,
    /// The key every later statement of this contributor must verify against.
    pub public_key: PublicKey,
}

/// A contributor consents to the use of one expert under stated terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentGranted {
    /// The new consent.
    pub consent: ConsentId,
    /// Who grants it (must be the signer).
    pub contributor: ContributorId,
    /// The expert it covers.
    pub expert: ExpertDigest,
    /// Uses allowed, e.g. `research`, `commercial`.
    pub purposes: Vec<Purpose>,
    /// When the consent lapses, if ever.
    pub expires_at: Option<Timestamp>,
    /// What data the expert was trained on, in the contributor's words.
    pub data_description: String,
    /// SPDX licence identifier of the contribution.
    pub licence: String,
    /// Jurisdiction whose law governs the consent.
    pub jurisdiction: String,
}

/// One tensor of an expert upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorDigest {
    /// Tensor name, as in the safetensors header.
    pub name: String,
    /// SHA-256 of the tensor's bytes.
    pub sha256: Sha256Digest,
}

/// How an expert was trained, as reported by its contributor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingMetadata {
    /// Training tokens seen.
    pub tokens: u64,
    /// Optimiser steps.
    pub steps: u64,
    /// Loss on the contributor's own held-out data.
    pub held_out_loss: Figure,
}

/// The manifest a contributor signs for an upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertManifest {
    /// Digest of the anchor the expert was trained against.
    pub anchor: Sha256Digest,
    /// Per-tensor digests.
    pub tensors: Vec<TensorDigest>,
    /// Digest of the whole payload: the expert's identity.
    pub total: ExpertDigest,
    /// Training report.
    pub training: TrainingMetadata,
}

/// A contributor uploaded an expert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertSubmitted {
    /// The upload.
    pub submission: SubmissionId,
    /// Who uploaded it (must be the signer).
    pub contributor: ContributorId,
    /// What was uploaded.
    pub manifest: ExpertManifest,
}

/// The outcome of one validation step, with its measured figure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationResult {
    /// Which check, e.g. `sha256`, `norm_ratio`, `public_perplexity`.
    pub check: String,
    /// Whether it passed.
    pub passed: bool,
    /// The measured value, where the check measures one.
    pub figure: Option<Figure>,
}

/// The coordinator accepted an upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertAccepted {
    /// The upload.
    pub submission: SubmissionId,
    /// Its expert digest (repeated so the entry stands alone).
    pub expert: ExpertDigest,
    /// Every validation result.
    pub results: Vec<ValidationResult>,
}

/// The coordinator rejected an upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertRejected {
    /// The upload.
    pub submission: SubmissionId,
    /// Why, as a stable code.
    pub reason: ReasonCode,
    /// Every validation result up to the failing one.
    pub results: Vec<ValidationResult>,
}

/// One contributed expert of a published version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionExpert {
    /// The accepted upload this expert comes from.
    pub submission: SubmissionId,
    /// The expert's digest.
    pub expert: ExpertDigest,
    /// The consent under which it is included.
    pub consent: ConsentId,
}

/// The coordinator published a merged model version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersionPublished {
    /// The new version's number.
    pub version: VersionNumber,
    /// The version it replaces, if any.
    pub parent: Option<VersionNumber>,
    /// Contributed experts 1..n, in merge order.
    pub experts: Vec<VersionExpert>,
    /// The purpose this version is published for.
    pub purpose: Purpose,
    /// Experts active per token.
    pub top_k: u32,
    /// Digest of the assembled checkpoint manifest.
    pub checkpoint: Sha256Digest,
}

/// A contributor withdrew a consent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentWithdrawn {
    /// The consent withdrawn.
    pub consent: ConsentId,
    /// Who withdraws it (must be the signer and the consent's grantor).
    pub contributor: ContributorId,
    /// When the contributor signed the withdrawal.
    pub withdrawn_at: Timestamp,
}

/// The coordinator recorded that a consent reached its expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentExpired {
    /// The consent.
    pub consent: ConsentId,
}

/// The coordinator deleted an expert's weights from blob storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertErased {
    /// The expert erased.
    pub expert: ExpertDigest,
}

/// Every state change of the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
#[allow(missing_docs)] // each variant is documented by its payload type
pub enum Event {
    LogCreated(LogCreated),
    ContributorRegistered(ContributorRegistered),
    ConsentGranted(ConsentGranted),
    ExpertSubmitted(ExpertSubmitted),
    ExpertAccepted(ExpertAccepted),
    ExpertRejected(ExpertRejected),
    ModelVersionPublished(ModelVersionPublished),
    ConsentWithdrawn(ConsentWithdrawn),
    ConsentExpired(ConsentExpired),
    ExpertErased(ExpertErased),
}

/// Who is the author of an event, and so whose signature it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The operator's coordinator; its seal is the only signature needed.
    Coordinator,
    /// A contributor, who signs the event itself before the coordinator seals it.
    Contributor,
}

impl Event {
    /// The event's kind, as written in its `kind` field and in signature prefixes.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::LogCreated(_) => "LogCreated",
            Event::ContributorRegistered(_) => "ContributorRegistered",
            Event::ConsentGranted(_) => "ConsentGranted",
            Event::ExpertSubmitted(_) => "ExpertSubmitted",
            Event::ExpertAccepted(_) => "ExpertAccepted",
            Event::ExpertRejected(_) => "ExpertRejected",
            Event::ModelVersionPublished(_) => "ModelVersionPublished",
            Event::ConsentWithdrawn(_) => "ConsentWithdrawn",
            Event::ConsentExpired(_) => "ConsentExpired",
            Event::ExpertErased(_) => "ExpertErased",
        }
    }

    /// Who authors this kind of event.
    pub fn actor(&self) -> Actor {
        match self {
            Event::ContributorRegistered(_)
            | Event::ConsentGranted(_)
            | Event::ExpertSubmitted(_)
            | Event::ConsentWithdrawn(_) => Actor::Contributor,
            Event::LogCreated(_)
            | Event::ExpertAccepted(_)
            | Event::ExpertRejected(_)
            | Event::ModelVersionPublished(_)
            | Event::ConsentExpired(_)
            | Event::ExpertErased(_) => Actor::Coordinator,
        }
    }

    /// The contributor who signs this event, for contributor events.
    pub fn signing_contributor(&self) -> Option<&ContributorId> {
        match self {
            Event::ContributorRegistered(e) => Some(&e.contributor),
            Event::ConsentGranted(e) => Some(&e.contributor),
            Event::ExpertSubmitted(e) => Some(&e.contributor),
            Event::ConsentWithdrawn(e) => Some(&e.contributor),
            _ => None,
        }
    }

    /// Whether the event needs the operator's invitation signature.
    pub fn needs_invite(&self) -> bool {
        matches!(self, Event::ContributorRegistered(_))
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn figures_are_canonical_decimals() {
        let f = Figure::from_f64(2.5).unwrap();
        assert_eq!(f.as_str(), "2.5");
        assert_eq!(Figure::try_from("2.5".to_string()).unwrap(), f);
        assert!(Figure::try_from("2.50".to_string()).is_err());
        assert!(Figure::try_from("NaN".to_string()).is_err());
        assert!(Figure::from_f64(f64::INFINITY).is_none());
        assert_eq!(Figure::from_f64(1e-7).unwrap().to_f64(), 1e-7);
    }

    #[test]
    fn kind_tag_matches_kind_name() {
        let event = Event::ConsentExpired(ConsentExpired {
            consent: ConsentId::new("c1").unwrap(),
        });
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], event.kind());
        assert_eq!(event.actor(), Actor::Coordinator);
    }
}
