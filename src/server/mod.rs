//! Front doors: the gRPC server (and the Prometheus HTTP endpoint from `metrics`).

pub mod auth;
pub mod config;
pub mod grpc;
pub mod run;
