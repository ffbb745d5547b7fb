//! Why a service call failed. Each front door maps these to its own status codes in one place
//! (gRPC: `server::convert`).

use super::validate::InvalidField;
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller's request is wrong (names the field and the limit).
    #[error("{0}")]
    Invalid(#[from] InvalidField),
    /// Back-pressure: retry later with backoff.
    #[error("{0}")]
    Busy(String),
    /// Going away (shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// The request is fine but the server's state refuses it (store off, broken reload).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request names something that does not exist (feedback for an unknown message).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

/// The playbook's state store failed or stayed contended: the caller may retry.
impl From<crate::policy::StateError> for ServiceError {
    fn from(e: crate::policy::StateError) -> Self {
        ServiceError::Unavailable(e.to_string())
    }
}

/// A full store queue is back-pressure (retry later); a closing store is going away.
impl From<store::SubmitError> for ServiceError {
    fn from(e: store::SubmitError) -> Self {
        match e {
            store::SubmitError::QueueFull { .. } => ServiceError::Busy(e.to_string()),
            store::SubmitError::Closed => ServiceError::Unavailable(e.to_string()),
        }
    }
}
