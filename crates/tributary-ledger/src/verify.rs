//! Verification of inclusion and consistency proofs exactly as RFC 9162
//! §2.1.3.2 and §2.1.4.2 describe them. Every malformed input is an error;
//! nothing here panics.

use crate::hash::{Hash, node_hash};

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The leaf index is not below the tree size (this includes the empty tree).
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The claimed leaf index.
        index: u64,
        /// The claimed tree size.
        size: u64,
    },
    /// The later tree is smaller than the earlier one.
    #[error("tree size went backwards from {old} to {new}")]
    SizesReversed {
        /// The earlier size.
        old: u64,
        /// The later size.
        new: u64,
    },
    /// The proof has more or fewer hashes than the tree sizes require.
    #[error("proof has the wrong number of hashes")]
    WrongProofLength,
    /// A trivial case (equal sizes, empty old tree) came with a non-empty proof.
    #[error("a proof between these sizes must be empty")]
    ProofNotEmpty,
    /// The recomputed root differs from the expected root.
    #[error("recomputed root {computed} does not match expected root {expected}")]
    RootMismatch {
        /// What the proof hashes to.
        computed: Hash,
        /// What the caller expected.
        expected: Hash,
    },
    /// Both trees have the same size but different roots.
    #[error("two trees of the same size have different roots")]
    DifferentRootsSameSize,
}

/// RFC 9162's "if LSB(fn) is not set, right-shift both fn and sn equally until
/// either LSB(fn) is set or fn is 0", shared by both verification algorithms.
fn climb_to_right_child(f_n: &mut u64, s_n: &mut u64) {
    while *f_n & 1 == 0 && *f_n != 0 {
        *f_n >>= 1;
        *s_n >>= 1;
    }
}

/// Recomputes the root of a tree of `size` leaves from a leaf hash and its audit
/// path (RFC 9162 §2.1.3.2 steps 1–5, without the final comparison).
pub fn root_from_inclusion_proof(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, VerifyError> {
    if index >= size {
        return Err(VerifyError::IndexOutOfRange { index, size });
    }
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(VerifyError::WrongProofLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            climb_to_right_child(&mut f_n, &mut s_n);
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(VerifyError::WrongProofLength);
    }
    Ok(r)
}

/// Verifies that `leaf` is the leaf at `index` of the tree of `size` leaves with root `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    let computed = root_from_inclusion_proof(leaf, index, size, proof)?;
    if computed != *root {
        return Err(VerifyError::RootMismatch {
            computed,
            expected: *root,
        });
    }
    Ok(())
}

/// Verifies that the tree of `old` leaves with root `old_root` is a prefix of
/// the tree of `new` leaves with root `new_root` (RFC 9162 §2.1.4.2).
///
/// Edge cases: `old == new` needs an empty proof and equal roots; `old == 0`
/// (the empty tree is a prefix of everything) needs an empty proof.
pub fn verify_consistency(
    old: u64,
    new: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), VerifyError> {
    if old > new {
        return Err(VerifyError::SizesReversed { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(VerifyError::ProofNotEmpty);
        }
        if old_root != new_root {
            return Err(VerifyError::DifferentRootsSameSize);
        }
        return Ok(());
    }
    if old == 0 {
        if !proof.is_empty() {
            return Err(VerifyError::ProofNotEmpty);
        }
        return Ok(());
    }
    // Step 1.
    if proof.is_empty() {
        return Err(VerifyError::WrongProofLength);
    }
    // Step 2: when `old` is a power of two the old root itself starts the path.
    let mut path = proof.iter();
    let first = if old.is_power_of_two() {
        *old_root
    } else {
        match path.next() {
            Some(h) => *h,
            None => return Err(VerifyError::WrongProofLength),
        }
    };
    // Steps 3–4.
    let mut f_n = old - 1;
    let mut s_n = new - 1;
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 5.
    let mut f_r = first;
    let mut s_r = first;
    // Step 6.
    for c in path {
        if s_n == 0 {
            return Err(VerifyError::WrongProofLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            climb_to_right_child(&mut f_n, &mut s_n);
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 7.
    if s_n != 0 {
        return Err(VerifyError::WrongProofLength);
    }
    if f_r != *old_root {
        return Err(VerifyError::RootMismatch {
            computed: f_r,
            expected: *old_root,
        });
    }
    if s_r != *new_root {
        return Err(VerifyError::RootMismatch {
            computed: s_r,
            expected: *new_root,
        });
    }
    Ok(())
}
