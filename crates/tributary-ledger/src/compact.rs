//! [`CompactRange`]: the tree head of a growing log in O(log n) memory.
//!
//! Keeps only the roots of the complete subtrees that make up the current size
//! (one per set bit of the size). Used by replay to recompute the root at every
//! size a checkpoint names, in a single pass over the entries.

use crate::hash::{Hash, leaf_hash, node_hash};

/// The complete-subtree roots of the leaves appended so far.
#[derive(Debug, Clone, Default)]
pub struct CompactRange {
    size: u64,
    /// Roots of the complete subtrees, largest (leftmost) first.
    peaks: Vec<Hash>,
}

impl CompactRange {
    /// An empty range.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves appended.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one entry, hashing it as a leaf.
    pub fn append_entry(&mut self, entry: &[u8]) {
        self.append_leaf_hash(leaf_hash(entry));
    }

    /// Appends one leaf hash.
    pub fn append_leaf_hash(&mut self, leaf: Hash) {
        let mut current = leaf;
        // Each trailing one-bit of the old size is a peak the new leaf completes.
        for _ in 0..self.size.trailing_ones() {
            match self.peaks.pop() {
                Some(left) => current = node_hash(&left, &current),
                None => break,
            }
        }
        self.peaks.push(current);
        self.size += 1;
    }

    /// The RFC 6962 root of the leaves appended so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        match iter.next() {
            None => Hash::empty_root(),
            Some(last) => iter.fold(*last, |right, left| node_hash(left, &right)),
        }
    }
}
