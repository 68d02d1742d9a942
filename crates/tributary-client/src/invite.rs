//! [`Invite`]: what an operator hands a future contributor (the file
//! `coordinator invite` writes and `contributor-agent register` reads), and
//! [`parse_public_key`] for keys given on a command line.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tributary_ledger::{ContributorId, PublicKey, Signature};

/// The `format` of every invite file.
pub const INVITE_FORMAT: &str = "tributary-invite/1";

/// An operator's invitation of one key under one contributor id and organisation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// Always [`INVITE_FORMAT`].
    pub format: String,
    /// The contributor id the invite is for.
    pub contributor_id: ContributorId,
    /// The organisation's name, as the operator recorded it.
    pub organisation: String,
    /// The contributor's public key (base64).
    pub public_key: PublicKey,
    /// The operator's signature over the `ContributorRegistered` event (base64).
    pub invite: Signature,
}

/// Why an invite or a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    /// Not an invite file's JSON.
    #[error("not an invite: {0}")]
    Json(#[from] serde_json::Error),
    /// A JSON invite of another format.
    #[error("invite format {0:?}, expected {INVITE_FORMAT:?}")]
    Format(String),
    /// Not a public key.
    #[error("not an Ed25519 public key (64 hex digits or base64 of 32 bytes): {0:?}")]
    PublicKey(String),
}

impl Invite {
    /// An invite of `public_key` as `contributor_id` of `organisation`.
    pub fn new(
        contributor_id: ContributorId,
        organisation: String,
        public_key: PublicKey,
        invite: Signature,
    ) -> Self {
        Self {
            format: INVITE_FORMAT.into(),
            contributor_id,
            organisation,
            public_key,
            invite,
        }
    }

    /// The invite file's text (pretty JSON).
    pub fn to_json(&self) -> String {
        // A struct of strings always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Parses an invite file's text.
    pub fn from_json(text: &str) -> Result<Self, InviteError> {
        let invite: Invite = serde_json::from_str(text)?;
        if invite.format != INVITE_FORMAT {
            return Err(InviteError::Format(invite.format));
        }
        Ok(invite)
    }
}

/// A public key written as 64 hex digits (what `contributor-agent keygen`
/// prints) or as base64 of its 32 bytes.
pub fn parse_public_key(text: &str) -> Result<PublicKey, InviteError> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).ok()
    } else {
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(PublicKey)
        .ok_or_else(|| InviteError::PublicKey(text.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn invites_round_trip_and_keys_parse_as_hex_or_base64() {
        let key = PublicKey([7; 32]);
        let invite = Invite::new(
            ContributorId::new("alice").unwrap(),
            "Alice Ltd".into(),
            key,
            Signature([9; 64]),
        );
        assert_eq!(Invite::from_json(&invite.to_json()).unwrap(), invite);
        let other = invite.to_json().replace(INVITE_FORMAT, "other/2");
        assert!(matches!(
            Invite::from_json(&other),
            Err(InviteError::Format(_))
        ));
        assert_eq!(parse_public_key(&hex::encode([7u8; 32])).unwrap(), key);
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(parse_public_key(&b64).unwrap(), key);
        assert!(parse_public_key("abcd").is_err());
        assert!(parse_public_key(&hex::encode([7u8; 31])).is_err());
    }
}
