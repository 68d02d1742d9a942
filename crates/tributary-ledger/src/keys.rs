//! Ed25519 keys and signatures as they appear in events: [`PublicKey`] and
//! [`Signature`], base64 in JSON, verified with `verify_strict` only.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// A key or signature could not be decoded, or a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64 of the right length.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// `public key` or `signature`.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The bytes are not a valid Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    InvalidKey,
    /// The signature does not verify under the key.
    #[error("signature does not verify")]
    BadSignature,
}

fn decode_fixed<const N: usize>(what: &'static str, text: &str) -> Result<[u8; N], KeyError> {
    let bytes = BASE64.decode(text).map_err(|e| KeyError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| KeyError::Malformed {
        what,
        reason: format!("expected {N} bytes, got {len}"),
    })
}

/// Gives a fixed-size byte newtype its base64 text form (serde, `Debug`).
macro_rules! base64_bytes {
    ($name:ident, $what:literal) => {
        impl TryFrom<String> for $name {
            type Error = KeyError;
            fn try_from(value: String) -> Result<Self, KeyError> {
                decode_fixed($what, &value).map(Self)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                BASE64.encode(value.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), BASE64.encode(self.0))
            }
        }
    };
}

/// An Ed25519 public key (32 bytes), written in JSON as standard base64.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey(pub [u8; 32]);

base64_bytes!(PublicKey, "public key");

impl PublicKey {
    /// The public half of a signing key.
    pub fn of(key: &SigningKey) -> Self {
        Self(key.verifying_key().to_bytes())
    }

    /// Verifies `signature` over `message` with `verify_strict`.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), KeyError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::InvalidKey)?;
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &signature)
            .map_err(|_| KeyError::BadSignature)
    }
}

/// An Ed25519 signature (64 bytes), written in JSON as standard base64.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Signature(pub [u8; 64]);

base64_bytes!(Signature, "signature");

impl Signature {
    /// Signs `message` with `key`.
    pub fn sign(key: &SigningKey, message: &[u8]) -> Self {
        Self(key.sign(message).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sign_and_verify_strictly() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = PublicKey::of(&key);
        let sig = Signature::sign(&key, b"hello");
        public.verify(b"hello", &sig).unwrap();
        assert_eq!(public.verify(b"hellO", &sig), Err(KeyError::BadSignature));
        // The identity point is a small-order key that verify_strict refuses.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = PublicKey(identity);
        assert!(weak.verify(b"hello", &Signature([0; 64])).is_err());
    }

    #[test]
    fn base64_round_trip_and_length_checks() {
        let public = PublicKey([9; 32]);
        let text: String = public.into();
        assert_eq!(PublicKey::try_from(text).unwrap(), public);
        assert!(PublicKey::try_from(BASE64.encode([1u8; 31])).is_err());
        assert!(Signature::try_from("not base64!".to_string()).is_err());
    }
}
