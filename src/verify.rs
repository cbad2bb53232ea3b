//! `ledgerd verify`: an auditor's check of a running ledger that trusts nothing but the verifier
//! key and the auditor's own state file.
//!
//! 1. The served tree head must carry a valid signature by the verifier key.
//! 2. Against the last trusted head in the state file: a smaller tree is a truncation, and a larger
//!    one must come with a consistency proof that it extends the trusted one; anything else is a
//!    rewritten or forked log.
//! 3. With `--full`, the leaves of every event (ReadAll) must rebuild exactly the signed root.
//! 4. Only when everything passed is the new head saved as trusted (atomically).
//!
//! Exit status 0 only when everything verified.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ledger::checkpoint::{verify_checkpoint, Checkpoint};
use ledger::merkle::{root_of, verify_consistency, Hash};
use proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// Options of `ledgerd verify`.
#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// The C2SP verifier key (from `ledgerd audit public-key`).
    #[arg(long, env = "LEDGER_VERIFIER_KEY")]
    pub verifier_key: String,
    /// The auditor's state file: the last trusted signed head. Created on first use.
    #[arg(long, default_value = "ledger-auditor-state.json")]
    pub state: PathBuf,
    /// Also rebuild the root from every event's leaf hash (reads the whole log).
    #[arg(long)]
    pub full: bool,
}

#[derive(Serialize, Deserialize)]
struct State {
    verifier_key: String,
    /// The last trusted signed note, kept whole so it can be re-verified.
    checkpoint: String,
}

/// Runs the checks; returns whether everything verified. Prints a line per check.
pub async fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    let channel = tonic::transport::Channel::from_shared(args.target.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.target))?;
    let mut audit = pb::audit_client::AuditClient::new(channel.clone());
    let mut failures = Vec::new();

    let head = audit.get_tree_head(pb::GetTreeHeadRequest {}).await?.into_inner().tree_head.context("no tree head served")?;
    let new = match verify_checkpoint(&head.checkpoint, &args.verifier_key) {
        Ok(cp) => {
            println!("ok: tree head signed by {} (size {})", cp.origin, cp.size);
            cp
        }
        Err(e) => {
            println!("FAIL: the served tree head does not verify with the verifier key: {e}");
            return Ok(false);
        }
    };

    let trusted: Option<Checkpoint> = match std::fs::read(&args.state) {
        Ok(bytes) => {
            let state: State = serde_json::from_slice(&bytes).with_context(|| format!("reading state {}", args.state.display()))?;
            anyhow::ensure!(
                state.verifier_key == args.verifier_key,
                "the state file {} was made with another verifier key",
                args.state.display()
            );
            Some(verify_checkpoint(&state.checkpoint, &args.verifier_key).context("the trusted head in the state file does not verify")?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("ok: no trusted head yet; this head becomes the first");
            None
        }
        Err(e) => return Err(e).with_context(|| format!("reading state {}", args.state.display())),
    };

    if let Some(old) = &trusted {
        if new.size < old.size {
            failures.push(format!("log truncated: the trusted head has {} events, the served head {}", old.size, new.size));
        } else if new.size == old.size {
            if new.root != old.root {
                failures.push(format!("log rewritten: same size {} as the trusted head but a different root", new.size));
            } else {
                println!("ok: same tree as the trusted head (size {})", new.size);
            }
        } else {
            let proof = audit
                .get_consistency_proof(pb::GetConsistencyProofRequest { first_size: old.size, second_size: new.size })
                .await?
                .into_inner();
            let hashes: Vec<Hash> = proof.hashes.iter().filter_map(|h| h.as_slice().try_into().ok()).collect();
            if hashes.len() == proof.hashes.len() && verify_consistency(old.size, new.size, &old.root, &new.root, &hashes) {
                println!("ok: the served head (size {}) extends the trusted head (size {})", new.size, old.size);
            } else {
                failures.push(format!(
                    "log rewritten or forked: the served head at size {} is not an extension of the trusted head at size {}",
                    new.size, old.size
                ));
            }
        }
    }

    if args.full {
        let mut ledger_client = pb::ledger_client::LedgerClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let mut stream = ledger_client
            .read_all(pb::ReadAllRequest { from_position: 0, max_count: new.size, filter: None })
            .await?
            .into_inner();
        let mut leaves: Vec<Hash> = Vec::with_capacity(new.size as usize);
        let mut read_error = None;
        loop {
            match stream.message().await {
                Ok(Some(msg)) => leaves.extend(msg.events.iter().filter_map(|e| <Hash>::try_from(e.leaf_hash.as_slice()).ok())),
                Ok(None) => break,
                Err(status) => {
                    read_error = Some(status.message().to_owned());
                    break;
                }
            }
        }
        if let Some(e) = read_error {
            failures.push(format!("reading the log failed: {e}"));
        } else if leaves.len() as u64 != new.size {
            failures.push(format!("the log returned {} leaves for a signed size of {}", leaves.len(), new.size));
        } else if root_of(&leaves) != new.root {
            failures.push("the leaves of the events served do not rebuild the signed root: stored events were altered".into());
        } else {
            println!("ok: all {} leaves rebuild the signed root", new.size);
        }
    }

    if failures.is_empty() {
        let state = State { verifier_key: args.verifier_key.clone(), checkpoint: head.checkpoint };
        let tmp = args.state.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &args.state).with_context(|| format!("replacing {}", args.state.display()))?;
        println!("verified: trusted head is now size {} ({})", new.size, args.state.display());
        Ok(true)
    } else {
        for f in &failures {
            println!("FAIL: {f}");
        }
        println!("NOT VERIFIED: {} check(s) failed; the trusted head in {} is unchanged", failures.len(), args.state.display());
        Ok(false)
    }
}
