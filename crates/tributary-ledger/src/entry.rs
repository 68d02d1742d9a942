//! Log entries: an [`Event`] with its position, its time and its signatures,
//! in canonical JSON bytes (the bytes the Merkle leaf hashes).
//!
//! Two layers of Ed25519 signatures, each over canonical bytes behind a
//! domain-separation prefix naming the format version, the event kind and the
//! signer's role:
//!
//! - **statement** signatures, made before the event reaches the log, over
//!   `tributary-ledger/v1/<Kind>/<role>\n ‖ canonical({"event":…,"v":1})`:
//!   the contributor's own (`role = contributor`) on the events it authors,
//!   and the operator's invitation (`role = invite`) on `ContributorRegistered`.
//!   The operator cannot forge these, so it cannot invent a consent or hide a
//!   withdrawal.
//! - the **seal**, made by the operator when it appends the entry, over
//!   `tributary-ledger/v1/<Kind>/seal\n ‖ canonical(entry without "seal")`.
//!   It binds index and time to the event, so an edited, dropped, inserted or
//!   reordered row is pinned to its position by replay even without the keys.
//!
//! The JSON of an entry is
//! `{"at":…,"contributor_signature":…,"event":{"kind":…,…},"index":…,"invite_signature":…,"seal":…,"v":1}`
//! with the optional signatures omitted when absent.

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::canonical::{CanonicalError, from_canonical_bytes, to_canonical_bytes};
use crate::event::Event;
use crate::ids::{LedgerIndex, Timestamp};
use crate::keys::{KeyError, PublicKey, Signature};

/// The entry format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Prefix of every signed message, before the event kind.
pub const SIGNATURE_DOMAIN: &str = "tributary-ledger/v1/";

/// Largest entry in bytes: tlog-tiles entry bundles use 16-bit lengths.
pub const MAX_ENTRY_LEN: usize = u16::MAX as usize;

/// Why an entry could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The bytes are not a canonical entry.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// The entry declares a format this crate does not know.
    #[error("unsupported entry format version {0}")]
    UnsupportedVersion(u32),
    /// The encoded entry is longer than [`MAX_ENTRY_LEN`].
    #[error("entry is {0} bytes, more than the {MAX_ENTRY_LEN} allowed")]
    TooLong(usize),
}

/// Who makes a signature, which selects its domain-separation prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureRole {
    /// A contributor signing its own statement.
    Contributor,
    /// The operator inviting a contributor (on `ContributorRegistered`).
    Invite,
    /// The operator sealing an entry into the log.
    Seal,
}

impl SignatureRole {
    fn name(self) -> &'static str {
        match self {
            SignatureRole::Contributor => "contributor",
            SignatureRole::Invite => "invite",
            SignatureRole::Seal => "seal",
        }
    }
}

fn prefixed(kind: &str, role: SignatureRole, body: Vec<u8>) -> Vec<u8> {
    let prefix = format!("{SIGNATURE_DOMAIN}{kind}/{}\n", role.name());
    let mut message = Vec::with_capacity(prefix.len() + body.len());
    message.extend_from_slice(prefix.as_bytes());
    message.extend_from_slice(&body);
    message
}

#[derive(Serialize)]
struct Statement<'a> {
    v: u32,
    event: &'a Event,
}

/// The message a statement signature (contributor or invitation) covers.
pub fn statement_message(event: &Event, role: SignatureRole) -> Result<Vec<u8>, EntryError> {
    let body = to_canonical_bytes(&Statement {
        v: FORMAT_VERSION,
        event,
    })?;
    Ok(prefixed(event.kind(), role, body))
}

/// An event with the statement signatures it needs, before the log seals it.
///
/// This is what a contributor agent sends to the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEvent {
    /// The event.
    pub event: Event,
    /// The contributor's signature, on contributor events.
    pub contributor_signature: Option<Signature>,
    /// The operator's invitation, on `ContributorRegistered`.
    pub invite_signature: Option<Signature>,
}

impl SignedEvent {
    /// A coordinator event: no statement signature, only the seal.
    pub fn coordinator(event: Event) -> Self {
        Self {
            event,
            contributor_signature: None,
            invite_signature: None,
        }
    }

    /// A contributor event signed with the contributor's key.
    pub fn contributor(event: Event, key: &SigningKey) -> Result<Self, EntryError> {
        let message = statement_message(&event, SignatureRole::Contributor)?;
        Ok(Self {
            contributor_signature: Some(Signature::sign(key, &message)),
            event,
            invite_signature: None,
        })
    }

    /// Adds the operator's invitation signature.
    pub fn invited_by(mut self, operator: &SigningKey) -> Result<Self, EntryError> {
        let message = statement_message(&self.event, SignatureRole::Invite)?;
        self.invite_signature = Some(Signature::sign(operator, &message));
        Ok(self)
    }
}

/// One record of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Format version, [`FORMAT_VERSION`].
    pub v: u32,
    /// The entry's position (Merkle leaf index).
    pub index: LedgerIndex,
    /// When the coordinator appended it.
    pub at: Timestamp,
    /// What happened.
    pub event: Event,
    /// The contributor's statement signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contributor_signature: Option<Signature>,
    /// The operator's invitation signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_signature: Option<Signature>,
    /// The operator's seal over everything above.
    pub seal: Signature,
}

#[derive(Serialize)]
struct SealBody<'a> {
    v: u32,
    index: LedgerIndex,
    at: Timestamp,
    event: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    contributor_signature: Option<&'a Signature>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invite_signature: Option<&'a Signature>,
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u32,
}

impl Entry {
    /// Seals a signed event at `index` and time `at` with the operator's key.
    pub fn seal(
        signed: SignedEvent,
        index: LedgerIndex,
        at: Timestamp,
        operator: &SigningKey,
    ) -> Result<Self, EntryError> {
        let mut entry = Entry {
            v: FORMAT_VERSION,
            index,
            at,
            event: signed.event,
            contributor_signature: signed.contributor_signature,
            invite_signature: signed.invite_signature,
            seal: Signature([0; 64]),
        };
        entry.seal = Signature::sign(operator, &entry.seal_message()?);
        let len = entry.to_bytes()?.len();
        if len > MAX_ENTRY_LEN {
            return Err(EntryError::TooLong(len));
        }
        Ok(entry)
    }

    /// The message the seal covers.
    pub fn seal_message(&self) -> Result<Vec<u8>, EntryError> {
        let body = to_canonical_bytes(&SealBody {
            v: self.v,
            index: self.index,
            at: self.at,
            event: &self.event,
            contributor_signature: self.contributor_signature.as_ref(),
            invite_signature: self.invite_signature.as_ref(),
        })?;
        Ok(prefixed(self.event.kind(), SignatureRole::Seal, body))
    }

    /// The canonical bytes of the entry: what the log stores and hashes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EntryError> {
        Ok(to_canonical_bytes(self)?)
    }

    /// Reads an entry, accepting only canonical bytes of a known format version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EntryError> {
        if bytes.len() > MAX_ENTRY_LEN {
            return Err(EntryError::TooLong(bytes.len()));
        }
        match from_canonical_bytes::<Entry>(bytes) {
            Ok(entry) if entry.v == FORMAT_VERSION => Ok(entry),
            Ok(entry) => Err(EntryError::UnsupportedVersion(entry.v)),
            Err(error) => match serde_json::from_slice::<VersionProbe>(bytes) {
                Ok(probe) if probe.v != FORMAT_VERSION => {
                    Err(EntryError::UnsupportedVersion(probe.v))
                }
                _ => Err(error.into()),
            },
        }
    }

    /// Checks the operator's seal.
    pub fn verify_seal(&self, operator: &PublicKey) -> Result<(), KeyError> {
        let message = self.seal_message().map_err(|_| KeyError::BadSignature)?;
        operator.verify(&message, &self.seal)
    }

    /// Checks the statement signature of `role` (contributor or invitation) under `key`.
    pub fn verify_statement(&self, role: SignatureRole, key: &PublicKey) -> Result<(), KeyError> {
        let signature = match role {
            SignatureRole::Contributor => self.contributor_signature.as_ref(),
            SignatureRole::Invite => self.invite_signature.as_ref(),
            SignatureRole::Seal => Some(&self.seal),
        }
        .ok_or(KeyError::BadSignature)?;
        let message = statement_message(&self.event, role).map_err(|_| KeyError::BadSignature)?;
        key.verify(&message, signature)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::{ConsentExpired, ConsentWithdrawn};
    use crate::ids::{ConsentId, ContributorId};

    fn withdrawal() -> Event {
        Event::ConsentWithdrawn(ConsentWithdrawn {
            consent: ConsentId::new("c-1").unwrap(),
            contributor: ContributorId::new("alice").unwrap(),
            withdrawn_at: Timestamp(100),
        })
    }

    #[test]
    fn sealed_entry_round_trips_and_verifies() {
        let operator = SigningKey::from_bytes(&[1; 32]);
        let alice = SigningKey::from_bytes(&[2; 32]);
        let signed = SignedEvent::contributor(withdrawal(), &alice).unwrap();
        let entry = Entry::seal(signed, LedgerIndex(5), Timestamp(101), &operator).unwrap();
        let bytes = entry.to_bytes().unwrap();
        let back = Entry::from_bytes(&bytes).unwrap();
        assert_eq!(back, entry);
        back.verify_seal(&PublicKey::of(&operator)).unwrap();
        back.verify_statement(SignatureRole::Contributor, &PublicKey::of(&alice))
            .unwrap();
        assert!(back.verify_seal(&PublicKey::of(&alice)).is_err());
        assert!(
            back.verify_statement(SignatureRole::Contributor, &PublicKey::of(&operator))
                .is_err()
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("{\"at\":101,\"contributor_signature\":\""),
            "{text}"
        );
        assert!(text.ends_with(",\"v\":1}"), "{text}");
    }

    #[test]
    fn signatures_are_separated_by_kind_and_role() {
        let event = withdrawal();
        let as_contributor = statement_message(&event, SignatureRole::Contributor).unwrap();
        let as_invite = statement_message(&event, SignatureRole::Invite).unwrap();
        assert!(as_contributor.starts_with(b"tributary-ledger/v1/ConsentWithdrawn/contributor\n"));
        assert_ne!(as_contributor, as_invite);
        let other = Event::ConsentExpired(ConsentExpired {
            consent: ConsentId::new("c-1").unwrap(),
        });
        let other_message = statement_message(&other, SignatureRole::Contributor).unwrap();
        assert!(other_message.starts_with(b"tributary-ledger/v1/ConsentExpired/contributor\n"));
    }

    #[test]
    fn moving_an_entry_breaks_its_seal() {
        let operator = SigningKey::from_bytes(&[1; 32]);
        let entry = Entry::seal(
            SignedEvent::coordinator(withdrawal()),
            LedgerIndex(5),
            Timestamp(101),
            &operator,
        )
        .unwrap();
        let mut moved = entry.clone();
        moved.index = LedgerIndex(6);
        assert!(moved.verify_seal(&PublicKey::of(&operator)).is_err());
    }

    #[test]
    fn non_canonical_and_future_entries_are_refused() {
        let operator = SigningKey::from_bytes(&[1; 32]);
        let entry = Entry::seal(
            SignedEvent::coordinator(withdrawal()),
            LedgerIndex(0),
            Timestamp(1),
            &operator,
        )
        .unwrap();
        let text = String::from_utf8(entry.to_bytes().unwrap()).unwrap();
        let spaced = text.replacen(":", ": ", 1);
        assert!(Entry::from_bytes(spaced.as_bytes()).is_err());
        let future = text.replace("\"v\":1}", "\"v\":2}");
        assert!(matches!(
            Entry::from_bytes(future.as_bytes()),
            Err(EntryError::UnsupportedVersion(2))
        ));
        let extra = text.replace("\"v\":1}", "\"v\":1,\"w\":0}");
        assert!(Entry::from_bytes(extra.as_bytes()).is_err());
        assert!(Entry::from_bytes(b"not json").is_err());
    }
}
