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

/// The root of leaves `[start, end)`, from persisted complete subtrees. `start` must be a multiple of
/// the largest power of two not above `end - start`, as every range in an RFC 9162 proof is; then
/// the range splits into complete, aligned subtrees (largest first) that `node(level, index)`
/// returns, and their roots fold from the right.
pub fn range_root<E>(start: u64, end: u64, node: &mut impl FnMut(u8, u64) -> Result<Hash, E>) -> Result<Hash, E> {
    assert!(end > start, "a range root needs at least one leaf");
    let mut parts = Vec::new();
    let mut at = start;
    for level in (0..64u8).rev() {
        let width = 1u64 << level;
        if (end - start) & width != 0 {
            debug_assert_eq!(at % width, 0, "subtrees of a proof range are aligned");
            parts.push(node(level, at >> level)?);
            at += width;
        }
    }
    let mut acc = parts.pop().expect("non-empty range");
    while let Some(left) = parts.pop() {
        acc = node_hash(&left, &acc);
    }
    Ok(acc)
}

/// The RFC 9162 inclusion proof (audit path) of leaf `index` in the tree of the first `size`
/// leaves, from persisted complete subtrees. O(log n) node reads.
pub fn inclusion_proof<E>(index: u64, size: u64, node: &mut impl FnMut(u8, u64) -> Result<Hash, E>) -> Result<Vec<Hash>, E> {
    inclusion_proof_by_ranges(index, size, &mut |start, end| range_root(start, end, node))
}

/// `inclusion_proof`, with the roots of the proof's ranges `[start, end)` from `range`, so a caller
/// proving many leaves of one tree can memoize them (neighbouring leaves share most ranges).
pub fn inclusion_proof_by_ranges<E>(index: u64, size: u64, range: &mut impl FnMut(u64, u64) -> Result<Hash, E>) -> Result<Vec<Hash>, E> {
    assert!(index < size, "the leaf must be in the tree");
    fn path<E>(m: u64, start: u64, n: u64, range: &mut impl FnMut(u64, u64) -> Result<Hash, E>, out: &mut Vec<Hash>) -> Result<(), E> {
        if n == 1 {
            return Ok(());
        }
        let k = largest_power_of_two_below(n);
        if m < k {
            path(m, start, k, range, out)?;
            out.push(range(start + k, start + n)?);
        } else {
            path(m - k, start + k, n - k, range, out)?;
            out.push(range(start, start + k)?);
        }
        Ok(())
    }
    let mut out = Vec::with_capacity(64 - size.leading_zeros() as usize);
    path(index, 0, size, range, &mut out)?;
    Ok(out)
}

/// The RFC 9162 consistency proof between the trees of the first `first` and `second` leaves
/// (0 < first <= second), from persisted complete subtrees.
pub fn consistency_proof<E>(first: u64, second: u64, node: &mut impl FnMut(u8, u64) -> Result<Hash, E>) -> Result<Vec<Hash>, E> {
    assert!(0 < first && first <= second, "consistency needs 0 < first <= second");
    fn subproof<E>(
        m: u64,
        start: u64,
        n: u64,
        complete: bool,
        node: &mut impl FnMut(u8, u64) -> Result<Hash, E>,
        out: &mut Vec<Hash>,
    ) -> Result<(), E> {
        if m == n {
            if !complete {
                out.push(range_root(start, start + n, node)?);
            }
            return Ok(());
        }
        let k = largest_power_of_two_below(n);
        if m <= k {
            subproof(m, start, k, complete, node, out)?;
            out.push(range_root(start + k, start + n, node)?);
        } else {
            subproof(m - k, start + k, n - k, false, node, out)?;
            out.push(range_root(start, start + k, node)?);
        }
        Ok(())
    }
    let mut out = Vec::new();
    subproof(first, 0, second, true, node, &mut out)?;
    Ok(out)
}

/// Verifies an inclusion proof (RFC 9162 section 2.1.3.2). Needs nothing but hashes.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Verifies a consistency proof (RFC 9162 section 2.1.4.2): the tree of `first` leaves with root
/// `first_root` is a prefix of the tree of `second` leaves with root `second_root`.
pub fn verify_consistency(first: u64, second: u64, first_root: &Hash, second_root: &Hash, proof: &[Hash]) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        // The empty tree is a prefix of every tree.
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((&seed, rest)) = path.split_first() else { return false };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *first_root && sr == *second_root && s == 0
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

    fn h(text: &str) -> Hash {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    /// The reference tree of the RFC 6962 vectors: its leaf hashes and the persisted subtrees.
    fn reference_tree() -> (Vec<Hash>, std::collections::BTreeMap<(u8, u64), Hash>) {
        let inputs: [&[u8]; 8] = [
            b"", &[0x00], &[0x10], &[0x20, 0x21], &[0x30, 0x31], &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f],
        ];
        let mut f = Frontier::default();
        let mut nodes = std::collections::BTreeMap::new();
        let mut leaves = Vec::new();
        for input in inputs {
            let mut hasher = Sha256::new();
            hasher.update([0x00]);
            hasher.update(input);
            let leaf: Hash = hasher.finalize().into();
            leaves.push(leaf);
            f.push(leaf, |l, i, hash| {
                nodes.insert((l, i), *hash);
            });
        }
        (leaves, nodes)
    }

    /// Inclusion and consistency proofs of the RFC 6962 reference tree, from google/trillian's
    /// `merkle/log_verifier_test.go` (`inclusionProofs`, `consistencyProofs`; leaf numbers there
    /// are 1-based).
    #[test]
    fn matches_published_proof_vectors() {
        let (leaves, nodes) = reference_tree();
        let mut node = |l: u8, i: u64| Ok::<_, ()>(nodes[&(l, i)]);
        let inclusion: [(u64, u64, Vec<&str>); 4] = [
            (0, 8, vec!["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
            (5, 8, vec!["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
            (2, 3, vec!["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
            (1, 5, vec!["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
        ];
        for (index, size, expected) in inclusion {
            let expected: Vec<Hash> = expected.into_iter().map(h).collect();
            assert_eq!(inclusion_proof(index, size, &mut node).unwrap(), expected, "inclusion of {index} in {size}");
            let root = root_of(&leaves[..size as usize]);
            assert!(verify_inclusion(index, size, &leaves[index as usize], &expected, &root));
        }
        let consistency: [(u64, u64, Vec<&str>); 4] = [
            (1, 1, vec![]),
            (1, 8, vec!["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
            (6, 8, vec!["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
            (2, 5, vec!["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
        ];
        for (first, second, expected) in consistency {
            let expected: Vec<Hash> = expected.into_iter().map(h).collect();
            assert_eq!(consistency_proof(first, second, &mut node).unwrap(), expected, "consistency {first} -> {second}");
            let (r1, r2) = (root_of(&leaves[..first as usize]), root_of(&leaves[..second as usize]));
            assert!(verify_consistency(first, second, &r1, &r2, &expected));
        }
    }

    fn flip(hash: &Hash, bit: usize) -> Hash {
        let mut out = *hash;
        out[bit / 8 % 32] ^= 1 << (bit % 8);
        out
    }

    proptest! {
        /// For random sizes, every inclusion and consistency proof built from the persisted
        /// subtrees verifies, and any flipped bit in a proof, leaf or root makes it fail.
        #[test]
        fn proofs_verify_and_any_flipped_bit_fails(n in 1u64..130, bit in 0usize..256, pick in any::<u64>()) {
            let leaves: Vec<Hash> = (0..n).map(leaf).collect();
            let mut nodes = std::collections::BTreeMap::new();
            let mut f = Frontier::default();
            for l in &leaves {
                f.push(*l, |level, index, hash| { nodes.insert((level, index), *hash); });
            }
            let mut node = |l: u8, i: u64| Ok::<_, ()>(nodes[&(l, i)]);
            let root = root_of(&leaves);
            for m in 0..n {
                let proof = inclusion_proof(m, n, &mut node).unwrap();
                prop_assert!(proof.len() <= 64 - (n - 1).leading_zeros() as usize, "proof grows with log2 n");
                prop_assert!(verify_inclusion(m, n, &leaves[m as usize], &proof, &root));
                prop_assert!(!verify_inclusion(m, n, &flip(&leaves[m as usize], bit), &proof, &root));
                prop_assert!(!verify_inclusion(m, n, &leaves[m as usize], &proof, &flip(&root, bit)));
                if !proof.is_empty() {
                    let mut bad = proof.clone();
                    let j = (pick as usize) % bad.len();
                    bad[j] = flip(&bad[j], bit);
                    prop_assert!(!verify_inclusion(m, n, &leaves[m as usize], &bad, &root));
                }
                if n > 1 {
                    prop_assert!(!verify_inclusion((m + 1) % n, n, &leaves[m as usize], &proof, &root), "wrong index");
                }
            }
            for m in 1..=n {
                let proof = consistency_proof(m, n, &mut node).unwrap();
                let old = root_of(&leaves[..m as usize]);
                prop_assert!(verify_consistency(m, n, &old, &root, &proof));
                if m < n {
                    prop_assert!(!verify_consistency(m, n, &flip(&old, bit), &root, &proof));
                    prop_assert!(!verify_consistency(m, n, &old, &flip(&root, bit), &proof));
                    let mut bad = proof.clone();
                    let j = (pick as usize) % bad.len();
                    bad[j] = flip(&bad[j], bit);
                    prop_assert!(!verify_consistency(m, n, &old, &root, &bad));
                }
            }
        }

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
