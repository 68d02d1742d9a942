//! [`MemoryStore`]: an in-memory append-only tree, used by tests, the auditor and
//! the benchmark, and a model for database-backed stores.

use crate::hash::{Hash, leaf_hash, node_hash};
use crate::node::NodeId;
use crate::store::{HashStore, StoreError};

/// An append-only Merkle tree held in memory: one vector of complete-subtree
/// hashes per level (about `2n` hashes for `n` leaves).
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    levels: Vec<Vec<Hash>>,
}

impl MemoryStore {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// Appends an entry (hashing it as a leaf) and returns its leaf index.
    pub fn append_entry(&mut self, entry: &[u8]) -> u64 {
        self.append_leaf_hash(leaf_hash(entry))
    }

    /// Appends an already-computed leaf hash and returns its leaf index.
    pub fn append_leaf_hash(&mut self, leaf: Hash) -> u64 {
        let index = self.size();
        let mut current = leaf;
        let mut level = 0usize;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(current);
            let position = row.len();
            // An even count means the new hash completed a pair.
            if position % 2 == 1 {
                break;
            }
            current = node_hash(&row[position - 2], &row[position - 1]);
            level += 1;
        }
        index
    }
}

impl HashStore for MemoryStore {
    fn read_hashes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        ids.iter()
            .map(|id| {
                self.levels
                    .get(usize::from(id.level))
                    .and_then(|row| usize::try_from(id.index).ok().and_then(|i| row.get(i)))
                    .copied()
                    .ok_or(StoreError::Missing(*id))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::hashes_to_append;

    #[test]
    fn append_rows_match_the_memory_tree() {
        let mut incremental = MemoryStore::new();
        let mut from_rows: std::collections::BTreeMap<NodeId, Hash> = Default::default();
        for i in 0..100u64 {
            let leaf = leaf_hash(&i.to_be_bytes());
            let rows = hashes_to_append(&incremental, i, leaf).unwrap();
            incremental.append_leaf_hash(leaf);
            for (id, hash) in rows {
                assert_eq!(incremental.read_hashes(&[id]).unwrap(), vec![hash]);
                assert!(from_rows.insert(id, hash).is_none(), "row written twice");
            }
        }
        // Every stored subtree came from exactly one append.
        let stored: usize = incremental.levels.iter().map(Vec::len).sum();
        assert_eq!(stored, from_rows.len());
    }

    #[test]
    fn missing_nodes_are_reported() {
        let mut store = MemoryStore::new();
        store.append_entry(b"x");
        assert!(matches!(
            store.read_hashes(&[NodeId::new(1, 0)]),
            Err(StoreError::Missing(_))
        ));
        assert!(matches!(
            store.read_hashes(&[NodeId::new(0, u64::MAX)]),
            Err(StoreError::Missing(_))
        ));
    }
}
