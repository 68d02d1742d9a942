//! Addresses of complete subtrees ([`NodeId`]) and the arithmetic that turns
//! the RFC 6962 recursive definitions into lists of complete subtrees.
//!
//! A complete subtree at `level` l and `index` k covers the leaves
//! `[k·2^l, (k+1)·2^l)`. Once the log has grown past its last leaf its hash never
//! changes, which is why storage keeps exactly these hashes and nothing else:
//! every hash a proof needs is a complete subtree or a right edge made of at
//! most `log2(n)` complete subtrees.

/// The address of a complete (perfect) subtree of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    /// Height above the leaves: 0 for a leaf hash.
    pub level: u8,
    /// Position among the subtrees of that level, from the left.
    pub index: u64,
}

impl NodeId {
    /// Creates a node address.
    pub const fn new(level: u8, index: u64) -> Self {
        Self { level, index }
    }

    /// The address of a leaf hash.
    pub const fn leaf(index: u64) -> Self {
        Self { level: 0, index }
    }

    /// First leaf covered by this subtree (saturating at `u64::MAX` for ids
    /// beyond any 64-bit tree).
    pub fn first_leaf(&self) -> u64 {
        leaf_position(u128::from(self.index), self.level)
    }

    /// One past the last leaf covered by this subtree (saturating like
    /// [`NodeId::first_leaf`]).
    pub fn end_leaf(&self) -> u64 {
        leaf_position(u128::from(self.index) + 1, self.level)
    }
}

fn leaf_position(index: u128, level: u8) -> u64 {
    if level >= 64 {
        return if index == 0 { 0 } else { u64::MAX };
    }
    u64::try_from(index << level).unwrap_or(u64::MAX)
}

/// The largest power of two strictly smaller than `n` (RFC 6962's `k`), for `n ≥ 2`.
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The complete subtrees whose concatenation is the leaf range `[start, end)`,
/// from left to right.
///
/// The ranges that occur in RFC 6962 trees start at a multiple of a power of
/// two at least as large as their length, so the greedy decomposition (largest
/// power of two first) yields aligned subtrees. The hash of the range is the
/// right-to-left fold of these subtrees with [`crate::hash::node_hash`].
pub(crate) fn range_nodes(start: u64, end: u64) -> Vec<NodeId> {
    let mut nodes = Vec::new();
    let mut position = start;
    let mut remaining = end.saturating_sub(start);
    while remaining > 0 {
        let level = 63 - remaining.leading_zeros();
        // Keep the subtree aligned: never take more than the alignment of `position` allows.
        let align = if position == 0 {
            level
        } else {
            level.min(position.trailing_zeros())
        };
        let size = 1u64 << align;
        nodes.push(NodeId::new(align as u8, position >> align));
        position += size;
        remaining -= size;
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_point_is_largest_power_of_two_below() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(8), 4);
        assert_eq!(split_point(9), 8);
        assert_eq!(split_point(1 << 40), 1 << 39);
    }

    #[test]
    fn range_decomposition_covers_the_range_with_aligned_subtrees() {
        for start in 0..40u64 {
            for end in start..80u64 {
                let nodes = range_nodes(start, end);
                let mut position = start;
                for node in &nodes {
                    assert_eq!(node.first_leaf(), position, "range {start}..{end}");
                    position = node.end_leaf();
                }
                assert_eq!(position, end);
            }
        }
        assert_eq!(
            range_nodes(0, 7),
            vec![NodeId::new(2, 0), NodeId::new(1, 2), NodeId::new(0, 6)]
        );
        assert_eq!(
            range_nodes(4, 7),
            vec![NodeId::new(1, 2), NodeId::new(0, 6)]
        );
        assert!(range_nodes(5, 5).is_empty());
        // Addresses beyond any 64-bit tree saturate instead of overflowing.
        assert_eq!(NodeId::new(70, 1).first_leaf(), u64::MAX);
        assert_eq!(NodeId::new(70, 0).first_leaf(), 0);
        assert_eq!(NodeId::new(1, u64::MAX).end_leaf(), u64::MAX);
    }
}
