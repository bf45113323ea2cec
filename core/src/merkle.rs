//! Merkle tree over a window's events, with RFC 6962 domain separation.
//!
//! - leaf hash: `SHA-256(0x00 ‖ leaf bytes)`;
//! - interior node: `SHA-256(0x01 ‖ left ‖ right)`;
//! - levels are paired left to right; an odd node at the end of a level is promoted to the next
//!   level unchanged. It is never paired with a copy of itself: duplicating it would give the
//!   lists `[a, b, c]` and `[a, b, c, c]` the same root;
//! - the empty tree's root is `SHA-256("")`.
//!
//! The prefixes make a leaf hash and a node hash of the same bytes differ, so no interior node
//! can be passed off as a leaf (second-preimage attack). This pairing yields exactly the
//! Merkle Tree Hash of RFC 6962 §2.1 (split at the largest power of two below `n`).
//!
//! An inclusion proof is the list of sibling hashes from the leaf up to the root. The verifier
//! derives from the leaf index and the tree size on which side each sibling sits and at which
//! levels the node was promoted, so a proof is bound to one position in one tree size.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Why an inclusion proof cannot be produced.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MerkleError {
    /// The leaf index is not below the number of leaves.
    #[error("index: expected a leaf index below {leaf_count}, found {index}")]
    IndexOutOfRange {
        /// Requested index.
        index: usize,
        /// Number of leaves in the tree.
        leaf_count: usize,
    },
}

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the tree over `leaves` (`SHA-256("")` when there are none).
pub fn merkle_root<T: AsRef<[u8]>>(leaves: &[T]) -> Hash {
    if leaves.is_empty() {
        return Sha256::digest(b"").into();
    }
    let level: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l.as_ref())).collect();
    root_of_leaf_hashes(&level)
}

/// The root of the tree whose leaves hash to `leaf_hashes` (each `SHA-256(0x00 ‖ leaf)`), so a
/// producer can hash each leaf as it arrives and keep 32 bytes instead of the leaf.
pub fn root_of_leaf_hashes(leaf_hashes: &[Hash]) -> Hash {
    match leaf_hashes {
        [] => Sha256::digest(b"").into(),
        [one] => *one,
        _ => {
            let mut level = next_level(leaf_hashes);
            while level.len() > 1 {
                level = next_level(&level);
            }
            level[0]
        }
    }
}

/// The root of the tree over `leaves`, lower-case hex (the PCS `merkle_root` field).
pub fn merkle_root_hex<T: AsRef<[u8]>>(leaves: &[T]) -> String {
    hex::encode(merkle_root(leaves))
}

fn next_level(level: &[Hash]) -> Vec<Hash> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => node_hash(l, r),
            _ => pair[0],
        })
        .collect()
}

/// Proof that one leaf is part of a tree of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// Position of the leaf, from 0.
    pub index: usize,
    /// Number of leaves in the tree.
    pub leaf_count: usize,
    /// Sibling hashes from the leaf's level upwards; levels where the node is promoted have none.
    pub siblings: Vec<Hash>,
}

/// The inclusion proof of leaf `index` in the tree over `leaves`.
pub fn inclusion_proof<T: AsRef<[u8]>>(
    leaves: &[T],
    index: usize,
) -> Result<InclusionProof, MerkleError> {
    if index >= leaves.len() {
        return Err(MerkleError::IndexOutOfRange {
            index,
            leaf_count: leaves.len(),
        });
    }
    let mut level: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l.as_ref())).collect();
    let mut i = index;
    let mut siblings = Vec::new();
    while level.len() > 1 {
        let sibling = if i % 2 == 1 { Some(i - 1) } else { Some(i + 1) };
        if let Some(s) = sibling.filter(|s| *s < level.len()) {
            siblings.push(level[s]);
        }
        level = next_level(&level);
        i /= 2;
    }
    Ok(InclusionProof {
        index,
        leaf_count: leaves.len(),
        siblings,
    })
}

/// Whether `leaf` (its bytes, not its hash) is at `proof.index` of a tree of
/// `proof.leaf_count` leaves whose root is `root`.
pub fn verify_inclusion(root: &Hash, leaf: &[u8], proof: &InclusionProof) -> bool {
    if proof.index >= proof.leaf_count {
        return false;
    }
    let mut hash = leaf_hash(leaf);
    let mut i = proof.index;
    let mut len = proof.leaf_count;
    let mut siblings = proof.siblings.iter();
    while len > 1 {
        if i % 2 == 1 {
            let Some(s) = siblings.next() else {
                return false;
            };
            hash = node_hash(s, &hash);
        } else if i + 1 < len {
            let Some(s) = siblings.next() else {
                return false;
            };
            hash = node_hash(&hash, s);
        }
        i /= 2;
        len = len.div_ceil(2);
    }
    siblings.next().is_none() && hash == *root
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_root_over_leaf_hashes_equals_the_root_over_the_leaves() {
        for n in 0..=17 {
            let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("leaf-{i}").into_bytes()).collect();
            let hashes: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l)).collect();
            assert_eq!(
                root_of_leaf_hashes(&hashes),
                merkle_root(&leaves),
                "{n} leaves"
            );
            assert_eq!(root_of_leaf_hashes(&hashes), rfc6962(&leaves), "{n} leaves");
        }
    }

    /// RFC 6962 §2.1 MTH, written recursively as the RFC states it.
    fn rfc6962(leaves: &[Vec<u8>]) -> Hash {
        match leaves.len() {
            0 => Sha256::digest(b"").into(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&rfc6962(&leaves[..k]), &rfc6962(&leaves[k..]))
            }
        }
    }

    #[test]
    fn matches_rfc6962_for_every_size_up_to_40() {
        let leaves: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; i as usize]).collect();
        for n in 0..=40 {
            assert_eq!(merkle_root(&leaves[..n]), rfc6962(&leaves[..n]), "n={n}");
        }
    }

    #[test]
    fn known_roots() {
        // SHA-256 of the empty string.
        assert_eq!(
            merkle_root_hex::<&[u8]>(&[]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 6962 test vector: the empty leaf hashes to SHA-256(0x00).
        assert_eq!(
            merkle_root_hex(&[b""]),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn odd_node_is_not_duplicated() {
        let three = merkle_root(&[b"a", b"b", b"c"]);
        let four = merkle_root(&[b"a", b"b", b"c", b"c"]);
        assert_ne!(three, four);
        assert_eq!(
            three,
            node_hash(
                &node_hash(&leaf_hash(b"a"), &leaf_hash(b"b")),
                &leaf_hash(b"c")
            )
        );
    }

    #[test]
    fn proofs_verify_and_are_bound_to_their_index() {
        for n in 1..=17usize {
            let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("event-{i}").into_bytes()).collect();
            let root = merkle_root(&leaves);
            for i in 0..n {
                let proof = inclusion_proof(&leaves, i).unwrap();
                assert!(verify_inclusion(&root, &leaves[i], &proof), "n={n} i={i}");
                assert!(!verify_inclusion(&root, b"forged", &proof));
                if n > 1 {
                    let moved = InclusionProof {
                        index: (i + 1) % n,
                        ..proof.clone()
                    };
                    assert!(!verify_inclusion(&root, &leaves[i], &moved), "n={n} i={i}");
                }
            }
        }
        assert_eq!(
            inclusion_proof(&[b"x"], 1).unwrap_err().to_string(),
            "index: expected a leaf index below 1, found 1"
        );
    }
}
