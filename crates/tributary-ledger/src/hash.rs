//! RFC 6962 / RFC 9162 hashing: the 32-byte [`struct@Hash`] type, leaf hashes
//! `SHA-256(0x00 ‖ entry)` and interior node hashes `SHA-256(0x01 ‖ left ‖ right)`.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// Length in bytes of every hash in the log (SHA-256).
pub const HASH_LEN: usize = 32;

/// Domain-separation byte prefixed to a leaf before hashing (RFC 6962 §2.1).
pub const LEAF_PREFIX: u8 = 0x00;

/// Domain-separation byte prefixed to two child hashes before hashing (RFC 6962 §2.1).
pub const NODE_PREFIX: u8 = 0x01;

/// A SHA-256 output used as a Merkle tree hash (leaf, interior node or root).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; HASH_LEN]);

/// A byte string that was supposed to be a hash had the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a hash must be {HASH_LEN} bytes, got {0}")]
pub struct HashLengthError(pub usize);

impl Hash {
    /// The hash of the empty tree: `SHA-256()` of no bytes (RFC 6962 §2.1).
    pub fn empty_root() -> Self {
        Self(Sha256::digest([]).into())
    }

    /// Parses a hash from a byte slice, rejecting any length other than 32.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, HashLengthError> {
        let array: [u8; HASH_LEN] = bytes.try_into().map_err(|_| HashLengthError(bytes.len()))?;
        Ok(Self(array))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// Lower-case hexadecimal rendering.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl AsRef<[u8]> for Hash {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The RFC 6962 leaf hash of one log entry: `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(entry);
    Hash(hasher.finalize().into())
}

/// The RFC 6962 interior node hash: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut block = [0u8; 1 + 2 * HASH_LEN];
    block[0] = NODE_PREFIX;
    block[1..1 + HASH_LEN].copy_from_slice(&left.0);
    block[1 + HASH_LEN..].copy_from_slice(&right.0);
    Hash(Sha256::digest(block).into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            Hash::empty_root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn leaf_and_node_hashes_are_domain_separated() {
        // RFC 6962 leaf hash of the empty entry: SHA-256(0x00).
        assert_eq!(
            leaf_hash(b"").to_hex(),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let a = leaf_hash(b"a");
        let b = leaf_hash(b"b");
        assert_ne!(node_hash(&a, &b), node_hash(&b, &a));
        let mut concatenated = a.0.to_vec();
        concatenated.extend_from_slice(&b.0);
        assert_ne!(node_hash(&a, &b), leaf_hash(&concatenated));
    }

    #[test]
    fn wrong_length_is_an_error() {
        assert_eq!(Hash::from_slice(&[0; 31]), Err(HashLengthError(31)));
        assert_eq!(Hash::from_slice(&[]), Err(HashLengthError(0)));
        assert!(Hash::from_slice(&[7; 32]).is_ok());
    }
}
