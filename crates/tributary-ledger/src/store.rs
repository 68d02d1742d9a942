//! The storage interface of the tree: a batch read of complete-subtree hashes,
//! and the pure computation of which hashes to write when a leaf is appended.
//!
//! The interface is shaped for a database: proof generation computes every
//! [`NodeId`] it needs first (at most about `2·log2(n)` of them) and asks for
//! them in **one** [`HashStore::read_hashes`] call, which a Postgres backend
//! answers with a single indexed query such as
//! `SELECT … FROM tree_hashes WHERE (level, index) IN (…)`. Appending a leaf
//! writes one row per new complete subtree (amortised two rows per leaf), all
//! computed by [`hashes_to_append`] from at most `log2(n)` earlier rows. Rows
//! are never updated, so an append-only table is enough.

use crate::hash::{Hash, node_hash};
use crate::node::NodeId;

/// A failure of the storage behind the tree.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A hash that should exist for the requested tree size is not stored.
    #[error("no stored hash for subtree at level {} index {}", .0.level, .0.index)]
    Missing(NodeId),
    /// The storage backend failed (I/O, database, …).
    #[error("tree storage failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Read access to the hashes of complete subtrees.
///
/// Implementations must return the hashes in the order of `ids`, and
/// [`StoreError::Missing`] for an id that is not stored. Every id passed by this
/// crate refers to a subtree that is complete for the tree size the caller
/// asked about, so a store that holds all complete subtrees of its current size
/// never reports `Missing` for a size it has reached.
pub trait HashStore {
    /// Reads the hashes of the given complete subtrees, in order.
    fn read_hashes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError>;
}

impl<S: HashStore + ?Sized> HashStore for &S {
    fn read_hashes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        (**self).read_hashes(ids)
    }
}

/// The complete-subtree hashes that appear when the leaf `leaf` is appended to a
/// tree of `size` leaves: the leaf itself and every subtree it completes, lowest
/// level first.
///
/// Reads the left siblings it needs (one per trailing one-bit of `size`) in one
/// batch. The caller writes the returned rows in the same transaction as the entry.
pub fn hashes_to_append<S: HashStore>(
    store: &S,
    size: u64,
    leaf: Hash,
) -> Result<Vec<(NodeId, Hash)>, StoreError> {
    let completed = size.trailing_ones() as u8;
    let siblings: Vec<NodeId> = (0..completed)
        .map(|level| NodeId::new(level, (size >> level) - 1))
        .collect();
    let sibling_hashes = store.read_hashes(&siblings)?;
    let mut rows = Vec::with_capacity(usize::from(completed) + 1);
    let mut current = leaf;
    rows.push((NodeId::leaf(size), current));
    for (level, left) in sibling_hashes.iter().enumerate() {
        current = node_hash(left, &current);
        let parent_level = level as u8 + 1;
        rows.push((NodeId::new(parent_level, size >> parent_level), current));
    }
    Ok(rows)
}
