//! Downloading the log: the signed checkpoint, every entry bundle and every
//! hash tile its tree size needs, with the checks that bind them together —
//! each entry hashes to its level-0 tile hash, each hash of a higher tile is
//! the root of the full tile below it, and the tiles give the signed root.

use std::collections::HashMap;

use indicatif::{ProgressBar, ProgressStyle};
use tributary_ledger::note::NoteVerifier;
use tributary_ledger::tiles::{
    TILE_WIDTH, TileId, bundles_for_size, decode_entry_bundle, tiles_for_size,
};
use tributary_ledger::{
    Checkpoint, CompactRange, Hash, LedgerIndex, Rule, Violation, leaf_hash, node_hash,
};

use crate::client::{FetchError, TileClient};

/// Why the log could not be downloaded at all.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// A resource could not be fetched.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The checkpoint is not valid UTF-8, not a checkpoint, or not signed by the key.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A tile or bundle has the wrong shape for its path.
    #[error("{path}: {reason}")]
    Malformed {
        /// The resource.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// A downloaded log.
#[derive(Debug)]
pub struct Downloaded {
    /// The signed checkpoint note, verbatim.
    pub note: String,
    /// The checkpoint it signs.
    pub checkpoint: Checkpoint,
    /// The names of the keys whose signatures verified.
    pub signed_by: Vec<String>,
    /// Every entry, in order, from the bundles.
    pub entries: Vec<Vec<u8>>,
    /// Every leaf hash, in order, from the level-0 tiles.
    pub tile_leaves: Vec<Hash>,
    /// The root recomputed from the tiles.
    pub tile_root: Hash,
    /// Where tiles and entries disagree (invariant 1).
    pub mismatches: Vec<Violation>,
    /// Number of HTTP resources fetched.
    pub requests: usize,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// Fetches and opens the checkpoint.
pub fn fetch_checkpoint(
    client: &TileClient,
    verifier: &NoteVerifier,
) -> Result<(String, Checkpoint, Vec<String>), DownloadError> {
    let bytes = client.get("checkpoint")?;
    let note = String::from_utf8(bytes)
        .map_err(|_| DownloadError::Checkpoint("the note is not UTF-8".into()))?;
    let opened = tributary_ledger::open_note(&note, std::slice::from_ref(verifier))
        .map_err(|e| DownloadError::Checkpoint(e.to_string()))?;
    let checkpoint = Checkpoint::from_text(&opened.text)
        .map_err(|e| DownloadError::Checkpoint(e.to_string()))?;
    Ok((note, checkpoint, opened.verified_by))
}

/// The root of a full tile's 256 hashes (a perfect subtree of height 8).
fn full_tile_root(hashes: &[Hash]) -> Hash {
    let mut row = hashes.to_vec();
    while row.len() > 1 {
        row = row
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => node_hash(left, right),
                [single] => *single,
                _ => Hash::default(),
            })
            .collect();
    }
    row.first().copied().unwrap_or_default()
}

fn split_hashes(path: &str, bytes: &[u8], width: u16) -> Result<Vec<Hash>, DownloadError> {
    if bytes.len() != usize::from(width) * 32 {
        return Err(DownloadError::Malformed {
            path: path.to_string(),
            reason: format!("{} bytes, expected {} hashes of 32", bytes.len(), width),
        });
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|chunk| Hash::from_slice(chunk).unwrap_or_default())
        .collect())
}

/// Downloads every bundle and tile of the checkpoint's tree and cross-checks them.
pub fn download(
    client: &TileClient,
    verifier: &NoteVerifier,
    progress: bool,
) -> Result<Downloaded, DownloadError> {
    let (note, checkpoint, signed_by) = fetch_checkpoint(client, verifier)?;
    let size = checkpoint.size;
    let bundles = bundles_for_size(size);
    let tiles = tiles_for_size(size);
    let bar = if progress {
        ProgressBar::new((bundles.len() + tiles.len()) as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message("downloading tiles");
    let mut bytes_total = note.len() as u64;
    let mut entries = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    for bundle in &bundles {
        let path = bundle.path();
        let bytes = client.get(&path)?;
        bytes_total += bytes.len() as u64;
        let decoded = decode_entry_bundle(&bytes).map_err(|e| DownloadError::Malformed {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if decoded.len() != usize::from(bundle.width) {
            return Err(DownloadError::Malformed {
                path,
                reason: format!("{} entries, expected {}", decoded.len(), bundle.width),
            });
        }
        entries.extend(decoded);
        bar.inc(1);
    }
    let mut by_id: HashMap<(u8, u64), Vec<Hash>> = HashMap::new();
    for tile in &tiles {
        let path = tile.path();
        let bytes = client.get(&path)?;
        bytes_total += bytes.len() as u64;
        by_id.insert(
            (tile.level, tile.index),
            split_hashes(&path, &bytes, tile.width)?,
        );
        bar.inc(1);
    }
    bar.finish_and_clear();

    let mut mismatches = Vec::new();
    let mut tile_leaves = Vec::with_capacity(entries.len());
    for tile in tiles.iter().filter(|t| t.level == 0) {
        tile_leaves.extend(by_id.get(&(0, tile.index)).into_iter().flatten().copied());
    }
    for (index, (entry, leaf)) in entries.iter().zip(&tile_leaves).enumerate() {
        if leaf_hash(entry) != *leaf {
            let bundle = bundles[index / TILE_WIDTH as usize];
            let tile = TileId {
                level: 0,
                index: bundle.index,
                width: bundle.width,
            };
            mismatches.push(Violation {
                index: LedgerIndex(index as u64),
                rule: Rule::TreeHead,
                reason: format!(
                    "the entry served in {} does not hash to its leaf hash in {}: the entry or \
                     the tree was altered after it was appended",
                    bundle.path(),
                    tile.path(),
                ),
            });
        }
    }
    for tile in tiles.iter().filter(|t| t.level > 0) {
        let hashes = by_id
            .get(&(tile.level, tile.index))
            .cloned()
            .unwrap_or_default();
        for (offset, hash) in hashes.iter().enumerate() {
            let below = tile.index * TILE_WIDTH + offset as u64;
            let expected = by_id
                .get(&(tile.level - 1, below))
                .filter(|h| h.len() as u64 == TILE_WIDTH)
                .map(|h| full_tile_root(h));
            if expected != Some(*hash) {
                let first_leaf =
                    below.saturating_mul(TILE_WIDTH.saturating_pow(u32::from(tile.level)));
                mismatches.push(Violation {
                    index: LedgerIndex(first_leaf),
                    rule: Rule::TreeHead,
                    reason: format!(
                        "hash {offset} of {} is not the root of the full tile below it",
                        tile.path()
                    ),
                });
            }
        }
    }
    let mut tree = CompactRange::new();
    for leaf in &tile_leaves {
        tree.append_leaf_hash(*leaf);
    }
    let tile_root = tree.root();
    if tile_root != checkpoint.root {
        mismatches.push(Violation {
            index: LedgerIndex(size.saturating_sub(1)),
            rule: Rule::TreeHead,
            reason: format!(
                "the tiles give root {tile_root} but the checkpoint signed {}",
                checkpoint.root
            ),
        });
    }
    Ok(Downloaded {
        note,
        checkpoint,
        signed_by,
        entries,
        tile_leaves,
        tile_root,
        mismatches,
        requests: 1 + bundles.len() + tiles.len(),
        bytes: bytes_total,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tributary_ledger::{MemoryStore, root_hash};

    #[test]
    fn a_full_tile_root_is_the_subtree_root() {
        let mut store = MemoryStore::new();
        let mut leaves = Vec::new();
        for i in 0..256u32 {
            store.append_entry(&i.to_be_bytes());
            leaves.push(leaf_hash(&i.to_be_bytes()));
        }
        assert_eq!(full_tile_root(&leaves), root_hash(&store, 256).unwrap());
    }

    #[test]
    fn tiles_of_the_wrong_length_are_refused() {
        assert!(split_hashes("tile/0/000.p/2", &[0; 63], 2).is_err());
        assert_eq!(
            split_hashes("tile/0/000.p/2", &[0; 64], 2).unwrap().len(),
            2
        );
    }
}
