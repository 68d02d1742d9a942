//! Newtypes for the identifiers, digests, numbers and times that events carry.
//!
//! Parse, don't validate: every type checks its invariant when it is built or
//! deserialised, so the rest of the crate never sees a malformed id.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A value could not be turned into one of the identifier types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct IdError {
    /// Which type was being parsed.
    pub kind: &'static str,
    /// What was wrong.
    pub reason: String,
}

/// Longest accepted identifier, in bytes.
pub const MAX_ID_LEN: usize = 128;

fn check_token(kind: &'static str, value: &str, allowed: fn(char) -> bool) -> Result<(), IdError> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        return Err(IdError {
            kind,
            reason: format!("length must be 1..={MAX_ID_LEN} bytes, got {}", value.len()),
        });
    }
    if let Some(c) = value.chars().find(|c| !allowed(*c)) {
        return Err(IdError {
            kind,
            reason: format!("character {c:?} is not allowed"),
        });
    }
    Ok(())
}

/// Visible ASCII without spaces: what ids may contain.
fn id_char(c: char) -> bool {
    c.is_ascii_graphic()
}

/// Lower-case letters, digits, `-` and `_`: what purposes may contain.
fn purpose_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

/// Defines a validated string newtype with serde, `Display`, `FromStr` and `as_str`.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $allowed:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates the identifier.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_token($kind, &value, $allowed)?;
                Ok(Self(value))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// Identifies a contributor (a data owner) across the whole ledger.
    ContributorId,
    "contributor id",
    id_char
);
string_id!(
    /// Identifies one consent statement of a contributor.
    ConsentId,
    "consent id",
    id_char
);
string_id!(
    /// Identifies one upload of an expert.
    SubmissionId,
    "submission id",
    id_char
);
string_id!(
    /// A use of a model that a consent may allow, such as `research` or `commercial`.
    Purpose,
    "purpose",
    purpose_char
);
string_id!(
    /// A stable machine-readable code, e.g. the reason an upload was rejected.
    ReasonCode,
    "reason code",
    id_char
);

/// A SHA-256 digest, written as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parses 64 lower-case hex digits.
    pub fn from_hex(text: &str) -> Result<Self, IdError> {
        let bad = |reason: String| IdError {
            kind: "sha256 digest",
            reason,
        };
        if text.len() != 64 || text.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("expected 64 lower-case hex digits".into()));
        }
        let bytes = hex::decode(text).map_err(|e| bad(e.to_string()))?;
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("expected 32 bytes".into()))?;
        Ok(Self(array))
    }

    /// The SHA-256 digest of some bytes.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::digest(bytes).into())
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::from_hex(&value)
    }
}

impl From<Sha256Digest> for String {
    fn from(value: Sha256Digest) -> String {
        hex::encode(value.0)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

/// The total digest of an expert's weights: what consents cover and versions list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExpertDigest(pub Sha256Digest);

impl fmt::Display for ExpertDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Defines a `u64` newtype with serde, `Display` and a `get` accessor.
macro_rules! number_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The number.
            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

number_id!(
    /// The position of an entry in the log (its Merkle leaf index), from 0.
    LedgerIndex
);
number_id!(
    /// The number of a published model version.
    VersionNumber
);
number_id!(
    /// Seconds since the Unix epoch (UTC).
    Timestamp
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_reject_empty_long_and_spaced_values() {
        assert!(ContributorId::new("hospital-7").is_ok());
        assert!(ContributorId::new("").is_err());
        assert!(ContributorId::new("a b").is_err());
        assert!(ContributorId::new("x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(Purpose::new("commercial").is_ok());
        assert!(Purpose::new("Commercial").is_err());
        let parsed: Result<ConsentId, _> = serde_json::from_str("\"has space\"");
        assert!(parsed.is_err());
    }

    #[test]
    fn digests_are_lower_case_hex() {
        let d = Sha256Digest::of(b"abc");
        let text = d.to_string();
        assert_eq!(Sha256Digest::from_hex(&text).unwrap(), d);
        assert!(Sha256Digest::from_hex(&text.to_uppercase()).is_err());
        assert!(Sha256Digest::from_hex(&text[..62]).is_err());
        assert_eq!(
            serde_json::to_string(&ExpertDigest(d)).unwrap(),
            format!("\"{text}\"")
        );
    }
}
