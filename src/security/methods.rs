//! Who may call what: roles, principals with their region scopes, and the method table.
//!
//! The method table is closed: a method the table does not name is refused, so a new RPC is
//! unreachable until someone decides who may call it.

use serde::{Deserialize, Serialize};

/// What a principal may do. A method needs one of its roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Append events, resolve and link customers, send messages, act on conversations.
    Appender,
    /// Read and subscribe (decrypting), and the views.
    Reader,
    /// Tree heads, proofs, replay, the audit trail.
    Auditor,
    /// Erase, export, erasure status.
    Dpo,
    /// Keys, downstream registrations, projections.
    Admin,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 5] = [Role::Appender, Role::Reader, Role::Auditor, Role::Dpo, Role::Admin];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Appender => "appender",
            Role::Reader => "reader",
            Role::Auditor => "auditor",
            Role::Dpo => "dpo",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| format!("unknown role {s:?} (expected one of appender, reader, auditor, dpo, admin)"))
    }
}

/// An authenticated caller: a name, its roles, and the regions it may touch (`None`: all).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The name access records carry (a token's principal, or a certificate's common name).
    pub name: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// The regions it is scoped to; `None` for every region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
}

impl Principal {
    /// Whether it holds one of `roles`.
    pub fn has_any(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.roles.contains(r))
    }

    /// Whether it may touch data of `region`.
    pub fn may(&self, region: &str) -> bool {
        self.regions.as_ref().is_none_or(|rs| rs.iter().any(|r| r == region))
    }

    /// Whether it is scoped to some regions only.
    pub fn scoped(&self) -> bool {
        self.regions.is_some()
    }
}

/// Who may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, unauthenticated (health checks).
    Open,
    /// Any authenticated principal (reflection).
    Authenticated,
    /// A principal with one of these roles.
    Roles(&'static [Role]),
}

/// Every gRPC method the server serves and who may call it.
pub const METHODS: &[(&str, Access)] = {
    use Access::{Authenticated, Open, Roles};
    use Role::{Admin, Appender, Auditor, Dpo, Reader};
    &[
        ("/grpc.health.v1.Health/Check", Open),
        ("/grpc.health.v1.Health/Watch", Open),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Authenticated),
        ("/ledger.v1.Ledger/Append", Roles(&[Appender])),
        ("/ledger.v1.Ledger/ResolveCustomer", Roles(&[Appender])),
        ("/ledger.v1.Ledger/LinkIdentifier", Roles(&[Appender])),
        ("/ledger.v1.Ledger/ReadStream", Roles(&[Reader])),
        ("/ledger.v1.Ledger/ReadAll", Roles(&[Reader])),
        ("/ledger.v1.Ledger/Subscribe", Roles(&[Reader])),
        ("/ledger.v1.Audit/GetTreeHead", Roles(&[Auditor])),
        ("/ledger.v1.Audit/GetInclusionProof", Roles(&[Auditor])),
        ("/ledger.v1.Audit/GetConsistencyProof", Roles(&[Auditor])),
        ("/ledger.v1.Audit/Replay", Roles(&[Auditor])),
        ("/ledger.v1.Audit/ListLeafHashes", Roles(&[Auditor])),
        ("/ledger.v1.Audit/GetCustomerAuditTrail", Roles(&[Auditor, Dpo])),
        ("/ledger.v1.Privacy/EraseCustomer", Roles(&[Dpo])),
        ("/ledger.v1.Privacy/GetErasureStatus", Roles(&[Dpo])),
        ("/ledger.v1.Privacy/ExportCustomer", Roles(&[Dpo])),
        ("/ledger.v1.Privacy/ExportRegion", Roles(&[Dpo])),
        ("/ledger.v1.Privacy/RetryDeadLetters", Roles(&[Admin])),
        ("/ledger.v1.Admin/RotateRegionKey", Roles(&[Admin])),
        ("/ledger.v1.Admin/DestroyRegionKey", Roles(&[Admin])),
        ("/ledger.v1.Admin/ListRegionKeys", Roles(&[Admin])),
        ("/ledger.v1.Admin/GetProjectionStatus", Roles(&[Admin])),
        ("/ledger.v1.Admin/RebuildProjection", Roles(&[Admin])),
        ("/ledger.v1.Admin/CreateToken", Roles(&[Admin])),
        ("/ledger.v1.Admin/RevokeToken", Roles(&[Admin])),
        ("/ledger.v1.Admin/ListTokens", Roles(&[Admin])),
        ("/ledger.v1.Messaging/SendMessage", Roles(&[Appender])),
        ("/ledger.v1.Views/GetCustomerContext", Roles(&[Reader])),
        ("/ledger.v1.Views/CrmSyncStatus", Roles(&[Reader, Admin])),
        ("/ledger.v1.Views/GetConversation", Roles(&[Reader])),
        ("/ledger.v1.Views/ListQueue", Roles(&[Reader])),
        ("/ledger.v1.Views/Reroute", Roles(&[Appender])),
        ("/ledger.v1.Views/SetConversationState", Roles(&[Appender])),
    ]
};

/// Who may call the method at `path`; `None` for a method the table does not name.
pub fn access_for(path: &str) -> Option<Access> {
    METHODS.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_named_once_and_region_scopes_hold() {
        let mut paths: Vec<&str> = METHODS.iter().map(|(p, _)| *p).collect();
        paths.sort_unstable();
        let n = paths.len();
        paths.dedup();
        assert_eq!(paths.len(), n);
        assert_eq!(access_for("/ledger.v1.Ledger/Nope"), None);
        let p = Principal { name: "x".into(), roles: vec![Role::Dpo], regions: Some(vec!["eu".into()]) };
        assert!(p.may("eu") && !p.may("us"));
    }
}
