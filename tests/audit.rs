//! The Audit service end to end: a signed tree head that verifies with the key `ledgerd audit
//! public-key` prints, inclusion proofs for every event and a consistency proof across later
//! appends that verify offline, tampered checkpoints rejected, and out-of-range arguments refused.

mod common;
use std::process::Command;

use common::*;
use ledger::checkpoint::verify_checkpoint;
use ledger::merkle::{verify_consistency, verify_inclusion, Hash};
use proto::v1 as pb;
use proto::v1::audit_client::AuditClient;

fn hash(bytes: &[u8]) -> Hash {
    bytes.try_into().expect("32-byte hash")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_heads_and_proofs_verify_offline() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    for i in 0..12 {
        let events = (0..1 + i % 3).map(|j| proposed(format!("{i}.{j}").as_bytes())).collect();
        c.append(append_req(&new_id(), "conv", events)).await.unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ledgerd"))
        .args(["audit", "public-key", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vkey = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let mut audit = AuditClient::new(server.channel().await);
    let head = audit.get_tree_head(pb::GetTreeHeadRequest {}).await.unwrap().into_inner().tree_head.unwrap();
    let cp = verify_checkpoint(&head.checkpoint, &vkey).expect("the signed head verifies with the printed key");
    assert_eq!((cp.size, cp.root.to_vec(), cp.origin.clone()), (head.tree_size, head.root_hash.clone(), head.origin.clone()));
    let events = read_all(&mut c).await;
    assert_eq!(events.len() as u64, cp.size);
    let leaves: Vec<Hash> = events.iter().map(|e| hash(&e.leaf_hash)).collect();
    assert_eq!(root_of(&leaves), cp.root, "the signed root is the root of the events read back");

    for e in &events {
        let p = audit
            .get_inclusion_proof(pb::GetInclusionProofRequest { position: e.position, tree_size: cp.size })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.leaf_hash, e.leaf_hash);
        let proof: Vec<Hash> = p.hashes.iter().map(|h| hash(h)).collect();
        assert!(verify_inclusion(e.position, cp.size, &hash(&e.leaf_hash), &proof, &cp.root), "position {}", e.position);
    }

    // The log grows; the old head is consistent with the new one.
    c.append(append_req(&new_id(), "later", vec![proposed(b"later")])).await.unwrap();
    let new_head = audit.get_tree_head(pb::GetTreeHeadRequest {}).await.unwrap().into_inner().tree_head.unwrap();
    let new_cp = verify_checkpoint(&new_head.checkpoint, &vkey).unwrap();
    let p = audit
        .get_consistency_proof(pb::GetConsistencyProofRequest { first_size: cp.size, second_size: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.second_size, new_cp.size);
    let proof: Vec<Hash> = p.hashes.iter().map(|h| hash(h)).collect();
    assert!(verify_consistency(cp.size, new_cp.size, &cp.root, &new_cp.root, &proof));
    assert!(!verify_consistency(cp.size, new_cp.size, &new_cp.root, &cp.root, &proof), "swapped roots fail");

    // A checkpoint with its size changed does not verify.
    let forged = head.checkpoint.replacen(&format!("\n{}\n", cp.size), &format!("\n{}\n", cp.size + 1), 1);
    assert!(verify_checkpoint(&forged, &vkey).is_err());

    // Out-of-range arguments.
    let err = audit
        .get_inclusion_proof(pb::GetInclusionProofRequest { position: new_cp.size, tree_size: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{}", err.message());
    let err = audit.get_consistency_proof(pb::GetConsistencyProofRequest { first_size: 0, second_size: 0 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{}", err.message());
    let err = audit
        .get_inclusion_proof(pb::GetInclusionProofRequest { position: 0, tree_size: new_cp.size + 5 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{}", err.message());
}
