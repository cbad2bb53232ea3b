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
//! With `--file`, it verifies a proof file (from `ledgerd audit replay`) offline instead: the head's
//! signature, every event's leaf and inclusion proof, and scope, order and stream continuity (see
//! `proof_file`). If the state file holds a trusted head, the file's head must agree with it: equal
//! at the same size, or (with `--target`) consistent by a fetched proof. File mode never moves the
//! trusted head.
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
    /// The server's gRPC endpoint [default: http://127.0.0.1:50051, unless --file is given].
    #[arg(long)]
    pub target: Option<String>,
    /// The C2SP verifier key (from `ledgerd audit public-key`).
    #[arg(long, env = "LEDGER_VERIFIER_KEY")]
    pub verifier_key: String,
    /// The auditor's state file: the last trusted signed head. Created on first use.
    #[arg(long, default_value = "ledger-auditor-state.json")]
    pub state: PathBuf,
    /// Also rebuild the root from every event's leaf hash (reads the whole log).
    #[arg(long)]
    pub full: bool,
    /// Verify this proof file (from `ledgerd audit replay`) offline instead of the live log.
    #[arg(long, conflicts_with = "full")]
    pub file: Option<PathBuf>,
}

const DEFAULT_TARGET: &str = "http://127.0.0.1:50051";

/// Reads the trusted head from the state file, if there is one.
fn read_state(args: &VerifyArgs) -> anyhow::Result<Option<Checkpoint>> {
    match std::fs::read(&args.state) {
        Ok(bytes) => {
            let state: State = serde_json::from_slice(&bytes).with_context(|| format!("reading state {}", args.state.display()))?;
            anyhow::ensure!(
                state.verifier_key == args.verifier_key,
                "the state file {} was made with another verifier key",
                args.state.display()
            );
            Ok(Some(verify_checkpoint(&state.checkpoint, &args.verifier_key).context("the trusted head in the state file does not verify")?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading state {}", args.state.display())),
    }
}

/// Whether the tree of `old` is a prefix of the tree of `new` (`old.size < new.size`), by a
/// consistency proof from the server.
async fn is_extension(audit: &mut pb::audit_client::AuditClient<crate::cli::client::Conn>, old: &Checkpoint, new: &Checkpoint) -> anyhow::Result<bool> {
    let proof = audit
        .get_consistency_proof(pb::GetConsistencyProofRequest { first_size: old.size, second_size: new.size })
        .await?
        .into_inner();
    let hashes: Vec<Hash> = proof.hashes.iter().filter_map(|h| h.as_slice().try_into().ok()).collect();
    Ok(hashes.len() == proof.hashes.len() && verify_consistency(old.size, new.size, &old.root, &new.root, &hashes))
}

/// `ledgerd verify --file`: the proof file offline, then its head against the trusted one.
async fn run_file(args: &VerifyArgs, path: &std::path::Path) -> anyhow::Result<bool> {
    let report = proof::verify_file(path, &args.verifier_key)?;
    let mut failures = report.failures.clone();
    let rate = report.events as f64 / report.seconds.max(1e-9);
    if let Some(head) = &report.head {
        println!("ok: tree head signed by {} (size {})", head.origin, head.size);
        println!("checked {} events in {:.2} s ({rate:.0} events/s)", report.events, report.seconds);
        if let Some(trusted) = read_state(args)? {
            if trusted.size == head.size {
                if trusted.root == head.root {
                    println!("ok: the file's head is the trusted head (size {})", head.size);
                } else {
                    failures.push(format!("log rewritten: the file's head and the trusted head have size {} but different roots", head.size));
                }
            } else if let Some(target) = &args.target {
                let mut audit = pb::audit_client::AuditClient::new(crate::cli::client::connect(target).await?);
                let (old, new) = if trusted.size < head.size { (&trusted, head) } else { (head, &trusted) };
                if is_extension(&mut audit, old, new).await? {
                    println!("ok: the file's head (size {}) and the trusted head (size {}) are consistent", head.size, trusted.size);
                } else {
                    failures.push(format!(
                        "log rewritten or forked: the file's head (size {}) and the trusted head (size {}) are not consistent",
                        head.size, trusted.size
                    ));
                }
            } else {
                println!(
                    "note: the file's head (size {}) was not compared with the trusted head (size {}); pass --target to fetch a consistency proof",
                    head.size, trusted.size
                );
            }
        }
    }
    if failures.is_empty() {
        println!("verified: {} events in {} are proven in the signed log", report.events, path.display());
        return Ok(true);
    }
    for f in &failures {
        println!("FAIL: {f}");
    }
    if report.more_failures > 0 {
        println!("FAIL: ... and {} more", report.more_failures);
    }
    println!("NOT VERIFIED: {} check(s) failed in {}", failures.len() as u64 + report.more_failures, path.display());
    Ok(false)
}

#[derive(Serialize, Deserialize)]
struct State {
    verifier_key: String,
    /// The last trusted signed note, kept whole so it can be re-verified.
    checkpoint: String,
}

/// Runs the checks; returns whether everything verified. Prints a line per check.
pub async fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    if let Some(path) = args.file.clone() {
        return run_file(&args, &path).await;
    }
    let channel = crate::cli::client::connect(args.target.as_deref().unwrap_or(DEFAULT_TARGET)).await?;
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

    let trusted = read_state(&args)?;
    if trusted.is_none() {
        println!("ok: no trusted head yet; this head becomes the first");
    }

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
            if is_extension(&mut audit, old, &new).await? {
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
        // Leaf hashes only: the server recomputes each from its stored header and ciphertext and
        // decrypts nothing, so this needs no access to personal data.
        let mut stream = audit
            .list_leaf_hashes(pb::ListLeafHashesRequest { from_position: 0, to_position: new.size })
            .await?
            .into_inner();
        let mut leaves: Vec<Hash> = Vec::with_capacity(new.size as usize);
        let mut read_error = None;
        loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    if msg.first_position != leaves.len() as u64 {
                        read_error = Some(format!("leaf hashes arrived out of order (at {})", msg.first_position));
                        break;
                    }
                    leaves.extend(msg.leaf_hashes.iter().filter_map(|h| <Hash>::try_from(h.as_slice()).ok()));
                }
                Ok(None) => break,
                Err(status) => {
                    read_error = Some(status.message().to_owned());
                    break;
                }
            }
        }
        if let Some(e) = read_error {
            failures.push(format!("reading the leaf hashes failed: {e}"));
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
        ledger::files::write_private(&args.state, &serde_json::to_vec_pretty(&state)?).with_context(|| format!("replacing {}", args.state.display()))?;
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
