//! Answering a retry: the first answer stored under a key is returned again (marked
//! `replayed`), a reused key with other content is refused, and a new key is decided. Classify
//! and HandleEvent share this; they differ only in what their key names.

use serde::de::DeserializeOwned;

use super::idempotency::{AnswerKey, Seen};
use super::validate::InvalidField;
use super::{Service, ServiceError};

/// An outcome that can be stored as a first answer and returned again.
pub trait Replayable: DeserializeOwned {
    fn mark_replayed(&mut self);
}

/// What a request's idempotency key is, for the errors that name it.
pub struct KeyedBy {
    /// "message", "event": what the lookup was about.
    pub what: &'static str,
    /// The request field holding the key.
    pub field: &'static str,
    /// Why a key answered before for other content is refused, and what to do.
    pub reused: &'static str,
}

impl Service {
    /// The first answer stored under `key`, replayed, when its content (`digest`) matches;
    /// `None` when the key is new. The caller holds the key's turn until it has decided.
    pub(super) async fn first_answer<T: Replayable>(
        &self,
        key: &AnswerKey,
        digest: &str,
        by: &KeyedBy,
    ) -> Result<Option<T>, ServiceError> {
        let seen = self
            .idempotency
            .lookup(key, digest, self.now_ms(), self.storage.as_ref())
            .await
            .map_err(|e| {
                ServiceError::Unavailable(format!(
                    "cannot check whether this {} was answered before ({e}); retry",
                    by.what
                ))
            })?;
        match seen {
            Seen::Same(body) => {
                let mut first: T = serde_json::from_str(&body).map_err(|e| {
                    ServiceError::Internal(format!("stored first answer cannot be read: {e}"))
                })?;
                first.mark_replayed();
                self.metrics.replayed.inc();
                Ok(Some(first))
            }
            Seen::Different => Err(InvalidField {
                field: by.field.into(),
                problem: by.reused.into(),
            }
            .into()),
            Seen::New => Ok(None),
        }
    }
}
