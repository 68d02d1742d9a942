//! Reference vectors for the Merkle log.
//!
//! The leaf inputs, complete-subtree hashes, roots for sizes 0–8 and the
//! inclusion and consistency proofs below are the published RFC 6962 test data
//! of the transparency-dev Merkle project (`testonly/constants.go`,
//! `proof/verify_test.go`, and the JSON cases under `testdata/`). Only the
//! numbers are taken from there; the corruption families mirror the cases that
//! project publishes (wrong index, wrong size, wrong root, extra or missing
//! hashes, flipped bits).

use tributary_ledger::{
    Hash, HashStore, MemoryStore, NodeId, VerifyError, consistency_proof, inclusion_proof,
    leaf_hash, root_hash, verify_consistency, verify_inclusion,
};

fn h(hex_str: &str) -> Hash {
    Hash::from_slice(&hex::decode(hex_str).unwrap()).unwrap()
}

/// The eight reference leaf inputs.
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// Roots of the trees of sizes 0..=8 built from `LEAVES`.
const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// Complete-subtree hashes of the 8-leaf tree, per level.
const NODES: [&[&str]; 4] = [
    &[
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    &[
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    &[
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
];

/// Inclusion proofs: (leaf index, tree size, proof).
const INCLUSION: [(u64, u64, &[&str]); 4] = [
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// Consistency proofs: (old size, new size, proof).
const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

/// A corrupted verification input: description, two sizes (or index and size),
/// two hashes (leaf and root, or old and new root) and the proof.
type Probe = (&'static str, u64, u64, Hash, Hash, Vec<Hash>);

/// An arbitrary well-formed hash that is no root of the reference tree.
const SOME_HASH: &str = "abacaba000000000000000000000000000000000000000000060061e00123456";

fn reference_store() -> MemoryStore {
    let mut store = MemoryStore::new();
    for leaf in LEAVES {
        store.append_entry(&hex::decode(leaf).unwrap());
    }
    store
}

fn hashes(list: &[&str]) -> Vec<Hash> {
    list.iter().map(|s| h(s)).collect()
}

#[test]
fn roots_for_sizes_zero_to_eight_match_rfc6962_reference() {
    let mut store = MemoryStore::new();
    assert_eq!(root_hash(&store, 0).unwrap(), h(ROOTS[0]));
    for (i, leaf) in LEAVES.iter().enumerate() {
        store.append_entry(&hex::decode(leaf).unwrap());
        assert_eq!(
            root_hash(&store, i as u64 + 1).unwrap(),
            h(ROOTS[i + 1]),
            "size {}",
            i + 1
        );
    }
    // Earlier sizes stay answerable from the grown store.
    for (size, root) in ROOTS.iter().enumerate() {
        assert_eq!(root_hash(&store, size as u64).unwrap(), h(root));
    }
}

#[test]
fn stored_subtree_hashes_match_reference_nodes() {
    let store = reference_store();
    for (level, row) in NODES.iter().enumerate() {
        for (index, expected) in row.iter().enumerate() {
            let got = store
                .read_hashes(&[NodeId::new(level as u8, index as u64)])
                .unwrap();
            assert_eq!(got[0], h(expected), "level {level} index {index}");
        }
    }
    for (i, leaf) in LEAVES.iter().enumerate() {
        assert_eq!(leaf_hash(&hex::decode(leaf).unwrap()), h(NODES[0][i]));
    }
}

#[test]
fn generated_inclusion_proofs_equal_published_ones() {
    let store = reference_store();
    for (index, size, proof) in INCLUSION {
        assert_eq!(
            inclusion_proof(&store, index, size).unwrap(),
            hashes(proof),
            "{index}/{size}"
        );
    }
    // A one-leaf tree has an empty path.
    assert!(inclusion_proof(&store, 0, 1).unwrap().is_empty());
}

#[test]
fn generated_consistency_proofs_equal_published_ones() {
    let store = reference_store();
    for (old, new, proof) in CONSISTENCY {
        assert_eq!(
            consistency_proof(&store, old, new).unwrap(),
            hashes(proof),
            "{old}->{new}"
        );
    }
}

#[test]
fn published_inclusion_proofs_verify_and_every_corruption_fails() {
    let some = h(SOME_HASH);
    let empty_root = h(ROOTS[0]);
    for (index, size, proof) in INCLUSION {
        let proof = hashes(proof);
        let leaf = leaf_hash(&hex::decode(LEAVES[index as usize]).unwrap());
        let root = h(ROOTS[size as usize]);
        verify_inclusion(&leaf, index, size, &proof, &root).unwrap();

        let mut bad: Vec<Probe> = vec![
            (
                "index - 1",
                index.wrapping_sub(1),
                size,
                leaf,
                root,
                proof.clone(),
            ),
            ("index + 1", index + 1, size, leaf, root, proof.clone()),
            ("index ^ 2", index ^ 2, size, leaf, root, proof.clone()),
            ("size * 2", index, size * 2, leaf, root, proof.clone()),
            ("size / 2", index, size / 2, leaf, root, proof.clone()),
            ("wrong leaf", index, size, some, root, proof.clone()),
            ("empty root", index, size, leaf, empty_root, proof.clone()),
            ("random root", index, size, leaf, some, proof.clone()),
            (
                "trailing root",
                index,
                size,
                leaf,
                root,
                [proof.clone(), vec![root]].concat(),
            ),
            (
                "preceding root",
                index,
                size,
                leaf,
                root,
                [vec![root], proof.clone()].concat(),
            ),
        ];
        for i in 0..proof.len() {
            let mut flipped = proof.clone();
            flipped[i].0[0] ^= 8;
            bad.push(("flipped bit", index, size, leaf, root, flipped));
        }
        if !proof.is_empty() {
            bad.push((
                "removed",
                index,
                size,
                leaf,
                root,
                proof[..proof.len() - 1].to_vec(),
            ));
        }
        if proof.len() > 1 {
            let inserted = [vec![proof[0], some], proof[1..].to_vec()].concat();
            bad.push(("inserted", index, size, leaf, root, inserted));
        }
        for (what, i, s, l, r, p) in bad {
            assert!(
                verify_inclusion(&l, i, s, &p, &r).is_err(),
                "{what} verified for {index}/{size}"
            );
        }
    }
}

#[test]
fn inclusion_edge_cases_are_errors() {
    let some = h(SOME_HASH);
    let empty = h(ROOTS[0]);
    for (index, size) in [(0, 0), (1, 0), (2, 1), (1, 1)] {
        assert!(matches!(
            verify_inclusion(&some, index, size, &[], &empty),
            Err(VerifyError::IndexOutOfRange { .. })
        ));
    }
    // A single-leaf tree: the root is the leaf hash and the path is empty.
    let leaf = leaf_hash(b"data");
    verify_inclusion(&leaf, 0, 1, &[], &leaf).unwrap();
    assert!(verify_inclusion(&leaf, 0, 1, &[], &some).is_err());
    assert!(verify_inclusion(&leaf, 0, 1, &[leaf], &leaf).is_err());
    // Proof hashes of the wrong length never reach the verifier: parsing rejects them.
    assert!(Hash::from_slice(b"WrongLeaf").is_err());
    assert!(Hash::from_slice(&[]).is_err());
}

#[test]
fn published_consistency_proofs_verify_and_every_corruption_fails() {
    let some = h(SOME_HASH);
    for (old, new, proof) in CONSISTENCY {
        let proof = hashes(proof);
        let r1 = h(ROOTS[old as usize]);
        let r2 = h(ROOTS[new as usize]);
        verify_consistency(old, new, &proof, &r1, &r2).unwrap();
        if proof.is_empty() {
            continue;
        }
        let mut bad: Vec<Probe> = vec![
            ("old - 1", old - 1, new, r1, r2, proof.clone()),
            ("old + 1", old + 1, new, r1, r2, proof.clone()),
            ("old ^ 2", old ^ 2, new, r1, r2, proof.clone()),
            ("new * 2", old, new * 2, r1, r2, proof.clone()),
            ("new / 2", old, new / 2, r1, r2, proof.clone()),
            ("wrong root1", old, new, some, r2, proof.clone()),
            ("wrong root2", old, new, r1, some, proof.clone()),
            ("swapped roots", old, new, r2, r1, proof.clone()),
            ("empty proof", old, new, r1, r2, vec![]),
            (
                "trailing root1",
                old,
                new,
                r1,
                r2,
                [proof.clone(), vec![r1]].concat(),
            ),
            (
                "trailing root2",
                old,
                new,
                r1,
                r2,
                [proof.clone(), vec![r2]].concat(),
            ),
            (
                "preceding root1",
                old,
                new,
                r1,
                r2,
                [vec![r1], proof.clone()].concat(),
            ),
            (
                "preceding root2",
                old,
                new,
                r1,
                r2,
                [vec![r2], proof.clone()].concat(),
            ),
            (
                "preceding proof[0]",
                old,
                new,
                r1,
                r2,
                [vec![proof[0]], proof.clone()].concat(),
            ),
            (
                "truncated",
                old,
                new,
                r1,
                r2,
                proof[..proof.len() - 1].to_vec(),
            ),
        ];
        for i in 0..proof.len() {
            let mut flipped = proof.clone();
            flipped[i].0[0] ^= 16;
            bad.push(("flipped bit", old, new, r1, r2, flipped));
        }
        for (what, o, n, a, b, p) in bad {
            assert!(
                verify_consistency(o, n, &p, &a, &b).is_err(),
                "{what} verified for {old}->{new}"
            );
        }
    }
}

#[test]
fn consistency_edge_cases() {
    let r1 = h(SOME_HASH);
    let r2 = h(ROOTS[3]);
    let empty = h(ROOTS[0]);
    // Equal sizes need equal roots and no proof.
    verify_consistency(0, 0, &[], &r1, &r1).unwrap();
    verify_consistency(1, 1, &[], &r2, &r2).unwrap();
    assert!(verify_consistency(0, 0, &[], &r1, &r2).is_err());
    assert!(verify_consistency(1, 1, &[], &r1, &r2).is_err());
    assert!(verify_consistency(0, 0, &[empty], &empty, &empty).is_err());
    assert!(verify_consistency(1, 1, &[empty], &empty, &empty).is_err());
    // The empty tree is a prefix of every tree, with an empty proof.
    verify_consistency(0, 1, &[], &r1, &r2).unwrap();
    assert!(verify_consistency(0, 1, &[empty], &empty, &empty).is_err());
    // Time does not run backwards.
    assert!(verify_consistency(1, 0, &[], &r1, &r2).is_err());
    assert!(verify_consistency(2, 1, &[], &r1, &r2).is_err());
    // A real growth needs a proof.
    assert!(verify_consistency(1, 2, &[], &r1, &r2).is_err());
}

#[test]
fn generation_rejects_bad_requests() {
    let store = reference_store();
    assert!(inclusion_proof(&store, 8, 8).is_err());
    assert!(inclusion_proof(&store, 0, 0).is_err());
    assert!(consistency_proof(&store, 0, 4).is_err());
    assert!(consistency_proof(&store, 5, 4).is_err());
    // Sizes the store has not reached are a storage error, not a panic.
    assert!(root_hash(&store, 9).is_err());
    assert!(inclusion_proof(&store, 0, 9).is_err());
}
