//! Security at the edges: who may call what (`methods`), bearer tokens (`tokens`), the gRPC
//! layer that enforces both on every call (`layer`), TLS and client certificates (`tls`), and
//! per-principal quotas (`quota`).

mod layer;
mod methods;
pub mod quota;
pub mod tls;
mod tokens;

pub use layer::*;
pub use methods::*;
pub use tokens::*;
