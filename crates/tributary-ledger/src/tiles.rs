//! The C2SP `tlog-tiles` layout: which tiles and entry bundles exist for a
//! tree size, their paths (`tile/<L>/<N>[.p/<W>]`, `tile/entries/<N>[.p/<W>]`)
//! and their contents, so the coordinator can serve the log to tlog clients.
//!
//! A tile at level `L` holds up to 256 consecutive hashes of tree level `8·L`;
//! those are complete subtrees, so a tile is one [`HashStore::read_hashes`]
//! call. An entry bundle is the entries of one level-0 tile, each prefixed by
//! its big-endian `u16` length.

use crate::node::NodeId;
use crate::store::{HashStore, StoreError};

/// Tree levels per tile level.
pub const TILE_HEIGHT: u8 = 8;

/// Hashes (or entries) in a full tile (or bundle).
pub const TILE_WIDTH: u64 = 256;

/// Why a path or bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    /// The path is not a tile or bundle path.
    #[error("not a tile path: {0}")]
    BadPath(String),
    /// An entry does not fit a bundle's 16-bit length prefix.
    #[error("entry of {0} bytes is too long for an entry bundle")]
    EntryTooLong(usize),
    /// The bundle bytes are truncated or have trailing bytes.
    #[error("malformed entry bundle")]
    MalformedBundle,
}

/// A tile of hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TileId {
    /// Tile level (tree level `8 · level`).
    pub level: u8,
    /// Index within the level.
    pub index: u64,
    /// Number of hashes, 1..=256; 256 is a full tile.
    pub width: u16,
}

/// An entry bundle (the entries under one level-0 tile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BundleId {
    /// Bundle index.
    pub index: u64,
    /// Number of entries, 1..=256; 256 is a full bundle.
    pub width: u16,
}

/// A parsed request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TilePath {
    /// `tile/<L>/<N>[.p/<W>]`.
    Hashes(TileId),
    /// `tile/entries/<N>[.p/<W>]`.
    Entries(BundleId),
}

/// Encodes a tile index as zero-padded 3-digit path elements, all but the
/// last prefixed with `x` (1234067 → `x001/x234/067`).
pub fn encode_index(index: u64) -> String {
    let mut groups = vec![format!("{:03}", index % 1000)];
    let mut rest = index / 1000;
    while rest > 0 {
        groups.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    groups.reverse();
    groups.join("/")
}

fn width_suffix(width: u16) -> String {
    if u64::from(width) == TILE_WIDTH {
        String::new()
    } else {
        format!(".p/{width}")
    }
}

impl TileId {
    /// The tile's path below the log prefix.
    pub fn path(&self) -> String {
        format!(
            "tile/{}/{}{}",
            self.level,
            encode_index(self.index),
            width_suffix(self.width)
        )
    }

    /// The complete subtrees whose hashes the tile holds, in order.
    pub fn nodes(&self) -> Vec<NodeId> {
        // Out-of-range ids saturate; the store then reports them missing.
        let level = self.level.saturating_mul(TILE_HEIGHT);
        let first = self.index.saturating_mul(TILE_WIDTH);
        (0..u64::from(self.width))
            .map(|i| NodeId::new(level, first.saturating_add(i)))
            .collect()
    }
}

impl BundleId {
    /// The bundle's path below the log prefix.
    pub fn path(&self) -> String {
        format!(
            "tile/entries/{}{}",
            encode_index(self.index),
            width_suffix(self.width)
        )
    }

    /// The range of entry indices the bundle holds.
    pub fn entries(&self) -> std::ops::Range<u64> {
        let start = self.index.saturating_mul(TILE_WIDTH);
        start..start.saturating_add(u64::from(self.width))
    }
}

/// The tiles of each level that exist for a tree of `size` leaves, as
/// `(level, full tiles, partial width)`.
fn level_shape(size: u64) -> Vec<(u8, u64, u16)> {
    let mut shape = Vec::new();
    let mut count = size;
    let mut level = 0u8;
    while count > 0 {
        shape.push((level, count / TILE_WIDTH, (count % TILE_WIDTH) as u16));
        count /= TILE_WIDTH;
        level += 1;
    }
    shape
}

/// Every tile that exists for a tree of `size` leaves.
pub fn tiles_for_size(size: u64) -> Vec<TileId> {
    tiles_changed(0, size)
}

/// The tiles that exist at `new` but not at `old`: what to write after growing the log.
pub fn tiles_changed(old: u64, new: u64) -> Vec<TileId> {
    let before = level_shape(old);
    let mut tiles = Vec::new();
    for (level, full, partial) in level_shape(new) {
        let (old_full, old_partial) = before
            .get(usize::from(level))
            .map_or((0, 0), |&(_, f, p)| (f, p));
        for index in old_full..full {
            tiles.push(TileId {
                level,
                index,
                width: TILE_WIDTH as u16,
            });
        }
        if partial > 0 && (full, partial) != (old_full, old_partial) {
            tiles.push(TileId {
                level,
                index: full,
                width: partial,
            });
        }
    }
    tiles
}

/// Every entry bundle that exists for a tree of `size` leaves.
pub fn bundles_for_size(size: u64) -> Vec<BundleId> {
    tiles_for_size(size)
        .into_iter()
        .filter(|t| t.level == 0)
        .map(|t| BundleId {
            index: t.index,
            width: t.width,
        })
        .collect()
}

/// Reads a tile's contents: its hashes concatenated.
pub fn read_tile<S: HashStore>(store: &S, tile: &TileId) -> Result<Vec<u8>, StoreError> {
    let hashes = store.read_hashes(&tile.nodes())?;
    Ok(hashes.iter().flat_map(|h| h.0).collect())
}

/// Concatenates entries with big-endian `u16` length prefixes.
pub fn encode_entry_bundle<B: AsRef<[u8]>>(entries: &[B]) -> Result<Vec<u8>, TileError> {
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.as_ref();
        let len = u16::try_from(entry.len()).map_err(|_| TileError::EntryTooLong(entry.len()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(entry);
    }
    Ok(out)
}

/// Splits an entry bundle back into entries.
pub fn decode_entry_bundle(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, TileError> {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let [hi, lo, rest @ ..] = bytes else {
            return Err(TileError::MalformedBundle);
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if rest.len() < len {
            return Err(TileError::MalformedBundle);
        }
        entries.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    Ok(entries)
}

/// Parses `tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`.
pub fn parse_tile_path(path: &str) -> Result<TilePath, TileError> {
    let bad = || TileError::BadPath(path.to_string());
    let rest = path.strip_prefix("tile/").ok_or_else(bad)?;
    let (level, rest) = rest.split_once('/').ok_or_else(bad)?;
    let (index_part, width) = match rest.split_once(".p/") {
        Some((index_part, width_text)) => {
            let canonical =
                !width_text.starts_with('0') && width_text.bytes().all(|b| b.is_ascii_digit());
            let width: u16 = width_text.parse().map_err(|_| bad())?;
            if !canonical || width == 0 || u64::from(width) >= TILE_WIDTH {
                return Err(bad());
            }
            (index_part, width)
        }
        None => (rest, TILE_WIDTH as u16),
    };
    let groups: Vec<&str> = index_part.split('/').collect();
    let mut index: u64 = 0;
    for (i, group) in groups.iter().enumerate() {
        let digits = if i + 1 < groups.len() {
            group.strip_prefix('x').ok_or_else(bad)?
        } else {
            group
        };
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let value: u64 = digits.parse().map_err(|_| bad())?;
        index = index
            .checked_mul(1000)
            .and_then(|v| v.checked_add(value))
            .ok_or_else(bad)?;
    }
    if groups.len() > 1 && groups[0] == "x000" {
        return Err(bad());
    }
    if level == "entries" {
        return Ok(TilePath::Entries(BundleId { index, width }));
    }
    let canonical_level =
        level == "0" || (!level.starts_with('0') && level.bytes().all(|b| b.is_ascii_digit()));
    let level: u8 = level.parse().map_err(|_| bad())?;
    if !canonical_level || level > 63 || u32::from(level) * u32::from(TILE_HEIGHT) > 63 {
        return Err(bad());
    }
    Ok(TilePath::Hashes(TileId {
        level,
        index,
        width,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::memory_store::MemoryStore;
    use crate::proof::root_hash;

    #[test]
    fn index_encoding_matches_the_spec_example() {
        assert_eq!(encode_index(1234067), "x001/x234/067");
        assert_eq!(encode_index(0), "000");
        assert_eq!(encode_index(1000), "x001/000");
        let tile = TileId {
            level: 1,
            index: 1234067,
            width: 17,
        };
        assert_eq!(tile.path(), "tile/1/x001/x234/067.p/17");
        assert_eq!(
            parse_tile_path(&tile.path()).unwrap(),
            TilePath::Hashes(tile)
        );
        let bundle = BundleId {
            index: 5,
            width: 256,
        };
        assert_eq!(bundle.path(), "tile/entries/005");
        assert_eq!(
            parse_tile_path("tile/entries/005").unwrap(),
            TilePath::Entries(bundle)
        );
        for bad in [
            "tile/1/1234",
            "tile/01/000",
            "tile/0/x000/001",
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/0/000.p/07",
            "tile/8/000",
            "tiles/0/000",
            "tile/0/01",
            "tile/0/001/002",
        ] {
            assert!(parse_tile_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tile_sets_match_the_spec_examples() {
        // A tree of 70,000: 273 full level-0 tiles and one of width 112, one full
        // level-1 tile and one of width 17, and one level-2 tile of width 1.
        let tiles = tiles_for_size(70_000);
        let count = |level: u8, full: bool| {
            tiles
                .iter()
                .filter(|t| t.level == level && (t.width == 256) == full)
                .count()
        };
        assert_eq!((count(0, true), count(0, false)), (273, 1));
        assert_eq!((count(1, true), count(1, false)), (1, 1));
        assert_eq!((count(2, true), count(2, false)), (0, 1));
        assert!(tiles.contains(&TileId {
            level: 0,
            index: 273,
            width: 112
        }));
        assert!(tiles.contains(&TileId {
            level: 1,
            index: 1,
            width: 17
        }));
        assert!(tiles.contains(&TileId {
            level: 2,
            index: 0,
            width: 1
        }));
        // A tree of 256: one full level-0 tile and a level-1 tile of width 1.
        assert_eq!(
            tiles_for_size(256),
            vec![
                TileId {
                    level: 0,
                    index: 0,
                    width: 256
                },
                TileId {
                    level: 1,
                    index: 0,
                    width: 1
                }
            ]
        );
        assert!(tiles_for_size(0).is_empty());
        // Growing from 70,000 to 70,001 only rewrites the partial tiles that changed.
        assert_eq!(
            tiles_changed(70_000, 70_001),
            vec![TileId {
                level: 0,
                index: 273,
                width: 113
            }]
        );
        assert_eq!(tiles_changed(255, 256).len(), 2);
    }

    #[test]
    fn tile_contents_are_the_subtree_hashes() {
        let mut store = MemoryStore::new();
        for i in 0..600u32 {
            store.append_entry(&i.to_be_bytes());
        }
        let tiles = tiles_for_size(600);
        assert_eq!(tiles.len(), 4); // two full and one partial at level 0, one partial at level 1
        let level1 = tiles.iter().find(|t| t.level == 1).unwrap();
        let bytes = read_tile(&store, level1).unwrap();
        assert_eq!(bytes.len(), 64);
        // Its first hash is the root of the first 256 entries.
        assert_eq!(&bytes[..32], root_hash(&store, 256).unwrap().as_bytes());
        let partial = tiles
            .iter()
            .find(|t| t.level == 0 && t.width != 256)
            .unwrap();
        assert_eq!(read_tile(&store, partial).unwrap().len(), 88 * 32);
    }

    #[test]
    fn bundles_round_trip() {
        let entries = vec![b"a".to_vec(), Vec::new(), vec![7; 300]];
        let bytes = encode_entry_bundle(&entries).unwrap();
        assert_eq!(&bytes[..3], &[0, 1, b'a']);
        assert_eq!(decode_entry_bundle(&bytes).unwrap(), entries);
        assert!(decode_entry_bundle(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_entry_bundle(&[0]).is_err());
        // Absurd ids do not overflow.
        let huge = TileId {
            level: 200,
            index: u64::MAX,
            width: 256,
        };
        assert_eq!(huge.nodes().len(), 256);
        assert!(read_tile(&MemoryStore::new(), &huge).is_err());
        assert_eq!(
            BundleId {
                index: u64::MAX,
                width: 3
            }
            .entries()
            .count(),
            0
        );
        assert!(encode_entry_bundle(&[vec![0u8; 65_536]]).is_err());
        assert_eq!(
            bundles_for_size(300),
            vec![
                BundleId {
                    index: 0,
                    width: 256
                },
                BundleId {
                    index: 1,
                    width: 44
                }
            ]
        );
    }
}
