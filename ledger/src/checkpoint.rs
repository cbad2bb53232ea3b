//! Signed tree heads as C2SP checkpoints in C2SP signed notes, so standard transparency-log tooling
//! can check them.
//!
//! The checkpoint text is `<origin>\n<tree size>\n<base64 root>\n` followed by one extension line,
//! `timestamp <unix ms>\n`. The note appends an empty line and one signature line per signer:
//! `— <key name> <base64(key id || Ed25519 signature over the text)>\n`, where the key id is the
//! first four bytes of SHA-256(key name || "\n" || 0x01 || public key). A verifier key is written
//! `<name>+<hex key id>+<base64(0x01 || public key)>`.

use base64::Engine as _;
use ed25519_dalek::{Signer, Verifier};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

const ALG_ED25519: u8 = 0x01;
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a signed note or checkpoint did not verify or parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    /// The verifier key is not `<name>+<hex id>+<base64>` of an Ed25519 key.
    #[error("malformed verifier key")]
    BadVerifierKey,
    /// The note is not text, an empty line, and signature lines.
    #[error("malformed signed note")]
    Malformed,
    /// No signature line of this key verifies over the text.
    #[error("no valid signature by {0}")]
    NoValidSignature(String),
    /// The checkpoint body is not origin, size, base64 root and the timestamp line.
    #[error("malformed checkpoint: {0}")]
    BadCheckpoint(&'static str),
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The 4-byte key id of an Ed25519 key named `name`.
pub fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The verifier key string of an Ed25519 key named `name`.
pub fn verifier_key(name: &str, public: &[u8; 32]) -> String {
    let mut typed = vec![ALG_ED25519];
    typed.extend_from_slice(public);
    format!("{name}+{}+{}", hex::encode(key_id(name, public)), b64().encode(typed))
}

fn parse_verifier_key(vkey: &str) -> Result<(String, [u8; 4], ed25519_dalek::VerifyingKey), NoteError> {
    let mut parts = vkey.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::BadVerifierKey);
    };
    let id: [u8; 4] = hex::decode(id).ok().and_then(|v| v.try_into().ok()).ok_or(NoteError::BadVerifierKey)?;
    let typed = b64().decode(key).map_err(|_| NoteError::BadVerifierKey)?;
    if typed.len() != 33 || typed[0] != ALG_ED25519 {
        return Err(NoteError::BadVerifierKey);
    }
    let public: [u8; 32] = typed[1..].try_into().expect("32 bytes");
    if key_id(name, &public) != id || name.is_empty() || name.contains(char::is_whitespace) {
        return Err(NoteError::BadVerifierKey);
    }
    let key = ed25519_dalek::VerifyingKey::from_bytes(&public).map_err(|_| NoteError::BadVerifierKey)?;
    Ok((name.to_owned(), id, key))
}

/// Signs `text` (which must end in a newline) as a signed note by the key named `name`.
pub fn sign_note(text: &str, name: &str, key: &ed25519_dalek::SigningKey) -> String {
    assert!(text.ends_with('\n'), "note text ends with a newline");
    let signature = key.sign(text.as_bytes());
    let mut blob = key_id(name, key.verifying_key().as_bytes()).to_vec();
    blob.extend_from_slice(&signature.to_bytes());
    format!("{text}\n{SIG_PREFIX}{name} {}\n", b64().encode(blob))
}

/// Verifies a signed note against one verifier key and returns its text.
pub fn open_note(note: &str, vkey: &str) -> Result<String, NoteError> {
    let (name, id, key) = parse_verifier_key(vkey)?;
    let split = note.rfind("\n\n").ok_or(NoteError::Malformed)?;
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err(NoteError::Malformed);
    }
    for line in sigs.lines() {
        let rest = line.strip_prefix(SIG_PREFIX).ok_or(NoteError::Malformed)?;
        let (line_name, blob) = rest.split_once(' ').ok_or(NoteError::Malformed)?;
        if line_name != name {
            continue;
        }
        let Ok(blob) = b64().decode(blob) else { continue };
        if blob.len() != 4 + 64 || blob[..4] != id {
            continue;
        }
        let signature = ed25519_dalek::Signature::from_slice(&blob[4..]).map_err(|_| NoteError::Malformed)?;
        if key.verify(text.as_bytes(), &signature).is_ok() {
            return Ok(text.to_owned());
        }
    }
    Err(NoteError::NoValidSignature(name))
}

/// A tree head: what a checkpoint commits to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line (also the signing key's name).
    pub origin: String,
    /// Number of events.
    pub size: u64,
    /// Merkle root at `size`.
    pub root: Hash,
    /// When the head was signed, unix milliseconds.
    pub timestamp_ms: i64,
}

impl Checkpoint {
    /// The checkpoint's note text.
    pub fn to_text(&self) -> String {
        format!("{}\n{}\n{}\ntimestamp {}\n", self.origin, self.size, b64().encode(self.root), self.timestamp_ms)
    }

    /// Parses a checkpoint's note text.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.strip_suffix('\n').ok_or(NoteError::BadCheckpoint("no final newline"))?.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or(NoteError::BadCheckpoint("origin"))?;
        let size = lines.next().and_then(|s| s.parse().ok()).ok_or(NoteError::BadCheckpoint("tree size"))?;
        let root: Hash = lines
            .next()
            .and_then(|r| b64().decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or(NoteError::BadCheckpoint("root hash"))?;
        let timestamp_ms = lines
            .next()
            .and_then(|l| l.strip_prefix("timestamp "))
            .and_then(|t| t.parse().ok())
            .ok_or(NoteError::BadCheckpoint("timestamp line"))?;
        if lines.next().is_some() {
            return Err(NoteError::BadCheckpoint("unexpected extra lines"));
        }
        Ok(Checkpoint { origin: origin.to_owned(), size, root, timestamp_ms })
    }
}

/// Verifies a signed checkpoint against a verifier key and parses it; the key's name must be the
/// checkpoint's origin.
pub fn verify_checkpoint(note: &str, vkey: &str) -> Result<Checkpoint, NoteError> {
    let text = open_note(note, vkey)?;
    let cp = Checkpoint::parse(&text)?;
    let (name, _, _) = parse_verifier_key(vkey)?;
    if cp.origin != name {
        return Err(NoteError::BadCheckpoint("origin is not the key's name"));
    }
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of golang.org/x/mod/sumdb/note (note.go documentation and example_test.go):
    /// its private key, verifier key, text and signed note, reproduced byte for byte.
    #[test]
    fn matches_the_go_sumdb_note_vector() {
        let skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
        let note = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let typed = b64().decode(skey.splitn(5, '+').nth(4).unwrap()).unwrap();
        assert_eq!(typed[0], ALG_ED25519);
        let key = ed25519_dalek::SigningKey::from_bytes(&typed[1..].try_into().unwrap());
        assert_eq!(verifier_key("PeterNeumann", key.verifying_key().as_bytes()), vkey);
        assert_eq!(sign_note(text, "PeterNeumann", &key), note);
        assert_eq!(open_note(note, vkey).unwrap(), text);
        // One changed character of the text, or another key, fails.
        assert!(open_note(&note.replacen("cryptography", "cryptographY", 1), vkey).is_err());
        let other = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let other_vkey = verifier_key("PeterNeumann", other.verifying_key().as_bytes());
        assert!(open_note(note, &other_vkey).is_err());
    }

    #[test]
    fn checkpoints_round_trip_and_tampering_fails() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        let cp = Checkpoint { origin: "ledgerd.test/log".into(), size: 42, root: [9u8; 32], timestamp_ms: 1_700_000_000_000 };
        let vkey = verifier_key(&cp.origin, key.verifying_key().as_bytes());
        let note = sign_note(&cp.to_text(), &cp.origin, &key);
        assert_eq!(verify_checkpoint(&note, &vkey).unwrap(), cp);
        assert!(verify_checkpoint(&note.replacen("\n42\n", "\n43\n", 1), &vkey).is_err(), "size changed");
        let wrong_name = verifier_key("someone.else/log", key.verifying_key().as_bytes());
        assert!(verify_checkpoint(&note, &wrong_name).is_err());
        assert!(Checkpoint::parse("origin\n12\nnot-base64\ntimestamp 1\n").is_err());
    }
}
