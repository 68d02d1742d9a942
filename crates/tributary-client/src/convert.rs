//! Conversions between the wire messages of `tributary.v1` and the ledger's
//! domain types, shared by the client and the coordinator's gRPC layer so both
//! sides read a message the same way. Parsing a message either yields a valid
//! domain value or a [`ConvertError`] naming the field.

use tributary_ledger::event::{self, ConsentGranted, ExpertManifest, TrainingMetadata};
use tributary_ledger::{
    ConsentId, ContributorId, ExpertDigest, Hash, LedgerIndex, Purpose, Receipt, Sha256Digest,
    Signature, Timestamp,
};
use tributary_protos::v1;

/// A message field that does not hold a valid value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct ConvertError {
    /// The field's name.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConvertError {
    /// An error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Parses a required digest.
pub fn digest(
    field: &'static str,
    value: Option<&v1::Digest>,
) -> Result<Sha256Digest, ConvertError> {
    let value = value.ok_or_else(|| ConvertError::new(field, "missing"))?;
    let bytes: [u8; 32] = value
        .sha256
        .as_slice()
        .try_into()
        .map_err(|_| ConvertError::new(field, "a SHA-256 digest has 32 bytes"))?;
    Ok(Sha256Digest(bytes))
}

/// The wire form of a digest.
pub fn digest_to_proto(value: &Sha256Digest) -> v1::Digest {
    v1::Digest {
        sha256: value.0.to_vec(),
    }
}

/// Parses a required statement signature.
pub fn signature(
    field: &'static str,
    value: Option<&v1::StatementSignature>,
) -> Result<Signature, ConvertError> {
    let value = value.ok_or_else(|| ConvertError::new(field, "missing"))?;
    let bytes: [u8; 64] = value
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| ConvertError::new(field, "an Ed25519 signature has 64 bytes"))?;
    Ok(Signature(bytes))
}

/// The wire form of a statement signature.
pub fn signature_to_proto(value: &Signature) -> v1::StatementSignature {
    v1::StatementSignature {
        signature: value.0.to_vec(),
    }
}

/// Parses a 32-byte public key.
pub fn public_key(
    field: &'static str,
    value: &[u8],
) -> Result<tributary_ledger::PublicKey, ConvertError> {
    let bytes: [u8; 32] = value
        .try_into()
        .map_err(|_| ConvertError::new(field, "an Ed25519 public key has 32 bytes"))?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|_| ConvertError::new(field, "not an Ed25519 public key"))?;
    Ok(tributary_ledger::PublicKey(bytes))
}

/// Parses a contributor id.
pub fn contributor_id(field: &'static str, value: &str) -> Result<ContributorId, ConvertError> {
    ContributorId::new(value).map_err(|e| ConvertError::new(field, e.to_string()))
}

/// Parses a consent id.
pub fn consent_id(field: &'static str, value: &str) -> Result<ConsentId, ConvertError> {
    ConsentId::new(value).map_err(|e| ConvertError::new(field, e.to_string()))
}

/// Parses consent terms into the `ConsentGranted` event they state.
pub fn consent_from_proto(
    terms: Option<&v1::ConsentTerms>,
) -> Result<ConsentGranted, ConvertError> {
    let terms = terms.ok_or_else(|| ConvertError::new("terms", "missing"))?;
    let purposes = terms
        .purposes
        .iter()
        .map(|p| {
            Purpose::new(p.as_str()).map_err(|e| ConvertError::new("terms.purposes", e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if purposes.is_empty() {
        return Err(ConvertError::new("terms.purposes", "at least one purpose"));
    }
    let expires_at = match terms.expires_at_unix {
        0 => None,
        t => Some(Timestamp(u64::try_from(t).map_err(|_| {
            ConvertError::new("terms.expires_at_unix", "must not be negative")
        })?)),
    };
    Ok(ConsentGranted {
        consent: consent_id("terms.consent_id", &terms.consent_id)?,
        contributor: contributor_id("terms.contributor_id", &terms.contributor_id)?,
        expert: ExpertDigest(digest("terms.expert", terms.expert.as_ref())?),
        purposes,
        expires_at,
        data_description: terms.data_description.clone(),
        licence: terms.licence.clone(),
        jurisdiction: terms.jurisdiction.clone(),
    })
}

/// The wire form of consent terms.
pub fn consent_to_proto(event: &ConsentGranted) -> v1::ConsentTerms {
    v1::ConsentTerms {
        consent_id: event.consent.as_str().to_string(),
        contributor_id: event.contributor.as_str().to_string(),
        expert: Some(digest_to_proto(&event.expert.0)),
        purposes: event
            .purposes
            .iter()
            .map(|p| p.as_str().to_string())
            .collect(),
        expires_at_unix: event
            .expires_at
            .map_or(0, |t| i64::try_from(t.0).unwrap_or(i64::MAX)),
        data_description: event.data_description.clone(),
        licence: event.licence.clone(),
        jurisdiction: event.jurisdiction.clone(),
    }
}

/// Parses an upload manifest.
pub fn manifest_from_proto(
    manifest: Option<&v1::ExpertManifest>,
) -> Result<ExpertManifest, ConvertError> {
    let m = manifest.ok_or_else(|| ConvertError::new("manifest", "missing"))?;
    let training = m
        .training
        .as_ref()
        .ok_or_else(|| ConvertError::new("manifest.training", "missing"))?;
    let tensors = m
        .tensors
        .iter()
        .map(|t| {
            Ok(event::TensorDigest {
                name: t.name.clone(),
                sha256: digest("manifest.tensors.sha256", t.sha256.as_ref())?,
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;
    Ok(ExpertManifest {
        anchor: digest("manifest.anchor", m.anchor.as_ref())?,
        tensors,
        total: ExpertDigest(digest("manifest.total", m.total.as_ref())?),
        training: TrainingMetadata {
            tokens: training.tokens,
            steps: training.steps,
            held_out_loss: event::Figure::try_from(training.held_out_loss.clone())
                .map_err(|e| ConvertError::new("manifest.training.held_out_loss", e.to_string()))?,
        },
    })
}

/// The wire form of an upload manifest.
pub fn manifest_to_proto(m: &ExpertManifest) -> v1::ExpertManifest {
    v1::ExpertManifest {
        anchor: Some(digest_to_proto(&m.anchor)),
        tensors: m
            .tensors
            .iter()
            .map(|t| v1::TensorDigest {
                name: t.name.clone(),
                sha256: Some(digest_to_proto(&t.sha256)),
            })
            .collect(),
        total: Some(digest_to_proto(&m.total.0)),
        training: Some(v1::TrainingMetadata {
            tokens: m.training.tokens,
            steps: m.training.steps,
            held_out_loss: m.training.held_out_loss.as_str().to_string(),
        }),
    }
}

/// Parses a receipt.
pub fn receipt_from_proto(receipt: &v1::Receipt) -> Result<Receipt, ConvertError> {
    let proof = receipt
        .inclusion_proof
        .iter()
        .map(|h| {
            Hash::from_slice(h)
                .map_err(|_| ConvertError::new("receipt.inclusion_proof", "hashes have 32 bytes"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Receipt {
        entry: receipt.entry.clone(),
        index: LedgerIndex(receipt.index),
        proof,
        checkpoint: receipt.checkpoint.clone(),
    })
}

/// The wire form of a receipt.
pub fn receipt_to_proto(receipt: &Receipt) -> v1::Receipt {
    v1::Receipt {
        entry: receipt.entry.clone(),
        index: receipt.index.0,
        inclusion_proof: receipt.proof.iter().map(|h| h.0.to_vec()).collect(),
        checkpoint: receipt.checkpoint.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn consent_terms_round_trip_and_bad_fields_are_named() {
        let event = ConsentGranted {
            consent: ConsentId::new("c-1").unwrap(),
            contributor: ContributorId::new("alice").unwrap(),
            expert: ExpertDigest(Sha256Digest::of(b"w")),
            purposes: vec![Purpose::new("research").unwrap()],
            expires_at: Some(Timestamp(99)),
            data_description: "letters".into(),
            licence: "CC-BY-4.0".into(),
            jurisdiction: "EU".into(),
        };
        let wire = consent_to_proto(&event);
        assert_eq!(consent_from_proto(Some(&wire)).unwrap(), event);
        let mut bad = wire.clone();
        bad.expert = Some(v1::Digest {
            sha256: vec![1; 31],
        });
        assert_eq!(
            consent_from_proto(Some(&bad)).unwrap_err().field,
            "terms.expert"
        );
        let mut bad = wire;
        bad.purposes.clear();
        assert_eq!(
            consent_from_proto(Some(&bad)).unwrap_err().field,
            "terms.purposes"
        );
    }
}
