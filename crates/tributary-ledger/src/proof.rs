//! Generation of tree heads, inclusion proofs and consistency proofs
//! (RFC 9162 §2.1.3.1 and §2.1.4.1) from stored complete-subtree hashes.
//!
//! Each function first works out the leaf ranges whose hashes the proof
//! contains, decomposes them into complete subtrees, reads all of those in a
//! single [`HashStore::read_hashes`] call (O(log n) ids), and folds them.

use crate::hash::{Hash, node_hash};
use crate::node::{NodeId, range_nodes, split_point};
use crate::store::{HashStore, StoreError};

/// Why a tree head or proof could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The requested leaf.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The sizes of a consistency proof are not `0 < old ≤ new`.
    #[error("no consistency proof from size {old} to size {new}")]
    BadSizes {
        /// The earlier size.
        old: u64,
        /// The later size.
        new: u64,
    },
    /// The store could not provide a hash.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The RFC 6962 Merkle tree hash of the first `size` leaves.
pub fn root_hash<S: HashStore>(store: &S, size: u64) -> Result<Hash, ProofError> {
    if size == 0 {
        return Ok(Hash::empty_root());
    }
    let mut hashes = read_ranges(store, &[(0, size)])?;
    hashes
        .pop()
        .ok_or(ProofError::Store(StoreError::Missing(NodeId::leaf(0))))
}

/// The audit path of leaf `index` in the tree of `size` leaves
/// (RFC 9162 §2.1.3.1 `PATH(m, D[n])`), from the leaf's sibling up to the root's child.
pub fn inclusion_proof<S: HashStore>(
    store: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    read_ranges(store, &inclusion_ranges(index, size))
}

/// The consistency proof between the trees of `old` and `new` leaves
/// (RFC 9162 §2.1.4.1 `PROOF(m, D[n])`). Empty when `old == new`.
pub fn consistency_proof<S: HashStore>(
    store: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::BadSizes { old, new });
    }
    read_ranges(store, &consistency_ranges(old, new))
}

/// The leaf ranges whose hashes form the inclusion proof, in proof order.
pub(crate) fn inclusion_ranges(index: u64, size: u64) -> Vec<(u64, u64)> {
    let (mut low, mut high) = (0u64, size);
    let mut ranges = Vec::new();
    while high - low > 1 {
        let k = split_point(high - low);
        if index - low < k {
            ranges.push((low + k, high));
            high = low + k;
        } else {
            ranges.push((low, low + k));
            low += k;
        }
    }
    ranges.reverse();
    ranges
}

/// The leaf ranges whose hashes form the consistency proof, in proof order.
pub(crate) fn consistency_ranges(old: u64, new: u64) -> Vec<(u64, u64)> {
    let (mut low, mut high) = (0u64, new);
    let mut remaining = old;
    // RFC 6962's `b`: true while the old tree is a complete subtree of the walk.
    let mut old_is_whole_subtree = true;
    let mut ranges = Vec::new();
    loop {
        let length = high - low;
        if remaining == length {
            if !old_is_whole_subtree {
                ranges.push((low, high));
            }
            break;
        }
        let k = split_point(length);
        if remaining <= k {
            ranges.push((low + k, high));
            high = low + k;
        } else {
            ranges.push((low, low + k));
            low += k;
            remaining -= k;
            old_is_whole_subtree = false;
        }
    }
    ranges.reverse();
    ranges
}

/// Reads every complete subtree of every range in one batch and folds each range.
fn read_ranges<S: HashStore>(store: &S, ranges: &[(u64, u64)]) -> Result<Vec<Hash>, ProofError> {
    let per_range: Vec<Vec<NodeId>> = ranges.iter().map(|&(a, b)| range_nodes(a, b)).collect();
    let ids: Vec<NodeId> = per_range.iter().flatten().copied().collect();
    let hashes = store.read_hashes(&ids)?;
    if hashes.len() != ids.len() {
        return Err(ProofError::Store(StoreError::Backend(
            format!(
                "store returned {} hashes for {} ids",
                hashes.len(),
                ids.len()
            )
            .into(),
        )));
    }
    let mut offset = 0;
    let mut folded = Vec::with_capacity(ranges.len());
    for nodes in &per_range {
        let parts = &hashes[offset..offset + nodes.len()];
        offset += nodes.len();
        let mut iter = parts.iter().rev();
        let Some(last) = iter.next() else {
            return Err(ProofError::Store(StoreError::Backend(
                "empty range in proof".into(),
            )));
        };
        folded.push(iter.fold(*last, |right, left| node_hash(left, &right)));
    }
    Ok(folded)
}
