//! intentd: Chinese intent recognition and auto-reply decisions for chat bots.

/// Code generated from `proto/intentd/v1/intentd.proto`.
pub mod pb {
    tonic::include_proto!("intentd.v1");
    /// Encoded descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("intentd_descriptor");
}

pub mod clock;
pub mod types;
pub mod model;
pub mod data;
pub mod loadgen;
