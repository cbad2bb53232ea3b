//! Erasure certificates: what was erased, when, under which key, and the signed tree head at that
//! moment, as a C2SP signed note under the ledger's key (the same verifier key as tree heads).
//!
//! ```text
//! ledgerd erasure certificate v1
//! origin <log origin>
//! request <request id>
//! customer <uuid>
//! region <region>
//! legal-basis <text>
//! requested-by <text>
//! key-fingerprint sha256:<hex of the destroyed key row>
//! erased-at <RFC 3339>
//! tree-size <n>
//! tree-root <base64 root>
//! ```

use base64::Engine as _;
use ledger::types::CustomerId;

/// The system stream erasure requests are recorded in.
pub const REQUEST_STREAM: &str = "erasure.requests";
/// The system stream erasure certificates are appended to.
pub const CERTIFICATE_STREAM: &str = "erasure.certificates";
const HEADER: &str = "ledgerd erasure certificate v1";

/// The content of an erasure certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    /// The log's origin.
    pub origin: String,
    /// The request id.
    pub request_id: String,
    /// The erased customer.
    pub customer: CustomerId,
    /// The customer's region.
    pub region: String,
    /// The legal basis given.
    pub legal_basis: String,
    /// Who asked.
    pub requested_by: String,
    /// SHA-256 of the destroyed key row, hex; `none` if the key was already gone.
    pub key_fingerprint: String,
    /// When the key was destroyed, unix ms.
    pub erased_at_ms: i64,
    /// Tree size of the head signed with it.
    pub tree_size: u64,
    /// Root of that tree.
    pub tree_root: [u8; 32],
}

impl Certificate {
    /// The text that is signed.
    pub fn to_text(&self) -> String {
        format!(
            "{HEADER}\norigin {}\nrequest {}\ncustomer {}\nregion {}\nlegal-basis {}\nrequested-by {}\nkey-fingerprint sha256:{}\nerased-at {}\ntree-size {}\ntree-root {}\n",
            self.origin,
            self.request_id,
            self.customer,
            self.region,
            self.legal_basis,
            self.requested_by,
            self.key_fingerprint,
            ledger::time::rfc3339_millis(self.erased_at_ms),
            self.tree_size,
            base64::engine::general_purpose::STANDARD.encode(self.tree_root),
        )
    }

    /// Verifies a signed certificate with the ledger's verifier key and returns its fields as
    /// (name, value) pairs in order.
    pub fn verify(note: &str, verifier_key: &str) -> Result<Vec<(String, String)>, String> {
        let text = ledger::checkpoint::open_note(note, verifier_key).map_err(|e| e.to_string())?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err("not an erasure certificate".into());
        }
        Ok(lines.filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }
}
