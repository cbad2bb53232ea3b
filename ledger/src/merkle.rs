//! The RFC 9162 Merkle tree over all events, by global position.
//!
//! Leaf hash = SHA-256(0x00 || committed header || SHA-256(sealed payload)); interior node =
//! SHA-256(0x01 || left || right). Leaves commit to the ciphertext, never the plaintext, so the tree
//! still verifies after a customer's key is destroyed. The writer keeps the *frontier* (the roots of
//! the complete subtrees that make up the tree, largest first), so appending costs O(1) amortized
//! hashes and the root is known after every commit. Every complete subtree is persisted as
//! (level, index) so that proofs need O(log n) reads.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// The leaf hash of an event.
pub fn leaf_hash(committed_header: &[u8], sealed_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(committed_header);
    h.update(sealed_hash);
    h.finalize().into()
}

/// The hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of the empty string (RFC 9162 section 2.1.1).
pub fn empty_root() -> Hash {
    sha256(b"")
}

/// The complete subtrees of a tree of `size` leaves, as (level, index), largest (leftmost) first.
pub fn frontier_coordinates(size: u64) -> impl Iterator<Item = (u8, u64)> {
    let mut start = 0u64;
    (0..64u8).rev().filter_map(move |level| {
        let width = 1u64 << level;
        if size & width != 0 {
            let index = start >> level;
            start += width;
            Some((level, index))
        } else {
            None
        }
    })
}

/// The right edge of the tree: enough to append leaves and compute the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the complete subtrees, largest first; one per set bit of `size`.
    nodes: Vec<Hash>,
}

impl Default for Frontier {
    fn default() -> Self {
        Frontier { size: 0, nodes: Vec::new() }
    }
}

impl Frontier {
    /// Rebuilds the frontier of a tree of `size` leaves from its persisted complete subtrees.
    pub fn from_nodes(size: u64, nodes: Vec<Hash>) -> Self {
        assert_eq!(nodes.len(), size.count_ones() as usize, "one frontier node per set bit of size");
        Frontier { size, nodes }
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The frontier nodes, largest subtree first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends a leaf. `on_complete(level, index, hash)` is called for the leaf itself (level 0)
    /// and for every subtree the leaf completes, so the caller can persist them.
    pub fn push(&mut self, leaf: Hash, mut on_complete: impl FnMut(u8, u64, &Hash)) {
        let n = self.size;
        on_complete(0, n, &leaf);
        let mut hash = leaf;
        let mut level = 0u8;
        while n & (1u64 << level) != 0 {
            let left = self.nodes.pop().expect("a set bit has a frontier node");
            hash = node_hash(&left, &hash);
            level += 1;
            on_complete(level, n >> level, &hash);
        }
        self.nodes.push(hash);
        self.size = n + 1;
        debug_assert_eq!(self.nodes.len(), self.size.count_ones() as usize);
    }

    /// The root hash of the tree.
    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        let Some(last) = iter.next() else { return empty_root() };
        let mut acc = *last;
        for node in iter {
            acc = node_hash(node, &acc);
        }
        acc
    }
}

/// The root of the tree over `leaves`, computed directly from the RFC 9162 definition (MTH). Used
/// as the oracle in tests and by the full startup check.
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = largest_power_of_two_below(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The largest power of two strictly less than `n` (n >= 2).
pub fn largest_power_of_two_below(n: u64) -> u64 {
    assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaf(i: u64) -> Hash {
        leaf_hash(&i.to_be_bytes(), &sha256(b"x"))
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            hex::encode(Frontier::default().root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// RFC 6962 reference vectors: the leaf inputs and the roots of trees of 1 to 8 of them, from
    /// the Certificate Transparency reference implementation (google/certificate-transparency,
    /// `python/ct/crypto/merkle_test.py`, `TreeHasherTest.test_vector_leaves` and
    /// `test_vector_hashes`; the same table is in certificate-transparency-go's merkle tests).
    #[test]
    fn matches_rfc6962_reference_roots() {
        let inputs: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f],
        ];
        let expected = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut f = Frontier::default();
        for (i, input) in inputs.iter().enumerate() {
            let mut h = Sha256::new();
            h.update([0x00]);
            h.update(input);
            f.push(h.finalize().into(), |_, _, _| {});
            assert_eq!(hex::encode(f.root()), expected[i], "root of the first {} leaves", i + 1);
        }
    }

    proptest! {
        #[test]
        fn frontier_root_equals_definition(n in 0u64..300) {
            let leaves: Vec<Hash> = (0..n).map(leaf).collect();
            let mut f = Frontier::default();
            let mut completed = std::collections::BTreeMap::new();
            for l in &leaves {
                f.push(*l, |level, index, h| { completed.insert((level, index), *h); });
            }
            prop_assert_eq!(f.root(), root_of(&leaves));
            // The frontier can be rebuilt from the persisted complete subtrees.
            let nodes: Vec<Hash> = frontier_coordinates(n).map(|c| completed[&c]).collect();
            prop_assert_eq!(Frontier::from_nodes(n, nodes), f);
            // Every persisted subtree is the root of exactly the leaves it covers.
            for (&(level, index), h) in &completed {
                let start = (index << level) as usize;
                let end = start + (1usize << level);
                prop_assert_eq!(*h, root_of(&leaves[start..end]));
            }
        }
    }
}
