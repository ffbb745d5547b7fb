//! intentd: Chinese intent recognition and auto-reply decisions for chat bots.
//!
//! Layers, top to bottom (a module uses only the ones below it; docs/architecture.md):
//! `app` (wiring, signals, background tasks), `server` (the gRPC front door: protobuf lives
//! only there), `service` (plain requests in, plain outcomes out: validation, admission,
//! batching, orchestration), `operator` (every operator file loaded into one
//! validated snapshot), `engine` (keyword layer + fusion) and `policy` (the operator playbook)
//! for decisions, `model` (the encoder behind a trait), and `store` (I/O: the durable
//! log, audit, stats). `config` reads `config/intentd.yml` for the wiring. `durable` is the
//! seam between state held in memory (playbook, outbox) and the store that persists it. `connectors` holds
//! platform formats (WeChat callback crypto and XML) for front doors to translate with.

/// Code generated from `proto/intentd/v1/intentd.proto`.
pub mod pb {
    tonic::include_proto!("intentd.v1");
    /// Encoded descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("intentd_descriptor");
}

pub mod app;
pub mod clock;
pub mod config;
pub mod connectors;
pub mod data;
pub mod durable;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod pii;
pub mod policy;
pub mod server;
pub mod service;
pub mod store;
pub mod types;
