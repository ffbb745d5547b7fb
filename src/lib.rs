//! intentd: Chinese intent recognition and auto-reply decisions for chat bots.
//!
//! Layers, front to back: `server` (gRPC / HTTP front doors that only translate), `core`
//! (validation, tokenisation, batching, orchestration), `engine` (keyword layer + fusion) and
//! `policy` (the operator playbook) for decisions, `operator` (every operator file loaded into
//! one validated snapshot), `model` (the encoder behind a trait), and `store` (I/O: the durable
//! log, audit, stats).

/// Code generated from `proto/intentd/v1/intentd.proto`.
pub mod pb {
    tonic::include_proto!("intentd.v1");
    /// Encoded descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("intentd_descriptor");
}

pub mod clock;
pub mod core;
pub mod data;
pub mod engine;
pub mod loadgen;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod pii;
pub mod policy;
pub mod server;
pub mod store;
pub mod types;
