//! Property tests: proofs generated from storage verify for any leaf, any tree
//! size and any pair of sizes, and any single change to a proof is rejected.

use proptest::prelude::*;
use tributary_ledger::{
    CompactRange, Hash, MemoryStore, consistency_proof, inclusion_proof, leaf_hash, root_hash,
    verify_consistency, verify_inclusion,
};

fn store_of(size: u64) -> MemoryStore {
    let mut store = MemoryStore::new();
    for i in 0..size {
        store.append_entry(&i.to_le_bytes());
    }
    store
}

/// The root by the RFC 6962 recursive definition, straight from the leaves.
fn naive_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Hash::empty_root(),
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            tributary_ledger::node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn root_matches_recursive_definition(size in 0u64..300) {
        let store = store_of(size);
        let leaves: Vec<Hash> = (0..size).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let mut compact = CompactRange::new();
        for leaf in &leaves {
            compact.append_leaf_hash(*leaf);
        }
        let expected = naive_root(&leaves);
        prop_assert_eq!(root_hash(&store, size).unwrap(), expected);
        prop_assert_eq!(compact.root(), expected);
    }

    #[test]
    fn any_leaf_in_any_tree_verifies(size in 1u64..2000, seed in any::<u64>()) {
        let store = store_of(size);
        let index = seed % size;
        let root = root_hash(&store, size).unwrap();
        let proof = inclusion_proof(&store, index, size).unwrap();
        let leaf = leaf_hash(&index.to_le_bytes());
        prop_assert!(verify_inclusion(&leaf, index, size, &proof, &root).is_ok());
        // The same proof does not prove the neighbour.
        if size > 1 {
            let other = (index + 1) % size;
            let other_leaf = leaf_hash(&other.to_le_bytes());
            prop_assert!(verify_inclusion(&other_leaf, other, size, &proof, &root).is_err());
        }
    }

    #[test]
    fn any_tampered_inclusion_proof_fails(
        size in 2u64..1000, seed in any::<u64>(), byte in 0usize..32, bit in 0u8..8, pick in any::<usize>(),
    ) {
        let store = store_of(size);
        let index = seed % size;
        let root = root_hash(&store, size).unwrap();
        let mut proof = inclusion_proof(&store, index, size).unwrap();
        let leaf = leaf_hash(&index.to_le_bytes());
        let at = pick % proof.len();
        proof[at].0[byte] ^= 1 << bit;
        prop_assert!(verify_inclusion(&leaf, index, size, &proof, &root).is_err());
        proof[at].0[byte] ^= 1 << bit;
        // Dropping or appending a hash also fails.
        let shorter = &proof[..proof.len() - 1];
        prop_assert!(verify_inclusion(&leaf, index, size, shorter, &root).is_err());
        let mut longer = proof.clone();
        longer.push(root);
        prop_assert!(verify_inclusion(&leaf, index, size, &longer, &root).is_err());
    }

    #[test]
    fn consistency_between_random_sizes(a in 1u64..1500, b in 1u64..1500) {
        let (old, new) = if a <= b { (a, b) } else { (b, a) };
        let store = store_of(new);
        let old_root = root_hash(&store, old).unwrap();
        let new_root = root_hash(&store, new).unwrap();
        let proof = consistency_proof(&store, old, new).unwrap();
        prop_assert!(verify_consistency(old, new, &proof, &old_root, &new_root).is_ok());
        if old < new {
            // A different old tree (one leaf changed) is not consistent.
            let mut other = MemoryStore::new();
            for i in 0..new {
                let value = if i == old - 1 { u64::MAX } else { i };
                other.append_entry(&value.to_le_bytes());
            }
            let forged_old_root = root_hash(&other, old).unwrap();
            prop_assert!(verify_consistency(old, new, &proof, &forged_old_root, &new_root).is_err());
        }
    }

    #[test]
    fn any_tampered_consistency_proof_fails(
        a in 1u64..800, b in 1u64..800, byte in 0usize..32, bit in 0u8..8, pick in any::<usize>(),
    ) {
        let (old, new) = if a < b { (a, b) } else if a > b { (b, a) } else { (a, a + 1) };
        let store = store_of(new);
        let old_root = root_hash(&store, old).unwrap();
        let new_root = root_hash(&store, new).unwrap();
        let mut proof = consistency_proof(&store, old, new).unwrap();
        let at = pick % proof.len();
        proof[at].0[byte] ^= 1 << bit;
        prop_assert!(verify_consistency(old, new, &proof, &old_root, &new_root).is_err());
    }
}
