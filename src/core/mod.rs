//! The service core: what every front door shares (validation, tokenisation, batching,
//! orchestration of engine, policy and store).

pub mod batcher;
pub mod outbox;
pub mod service;
pub mod validate;
