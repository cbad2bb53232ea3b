//! Generated protobuf messages and gRPC services of `ledger.v1`. This is the only crate that derives
//! prost; everything else converts to and from these types at the gRPC edge.
#![allow(missing_docs, clippy::all)]

pub mod codec;
pub mod codes;

/// `ledger.v1`: the ledger's public API.
pub mod ledger {
    /// Version 1 of the API.
    pub mod v1 {
        tonic::include_proto!("ledger.v1");

        /// Encoded file descriptor set of every `ledger.v1` file, for gRPC server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            tonic::include_file_descriptor_set!("ledger_v1_descriptor");
    }
}

pub use ledger::v1;
