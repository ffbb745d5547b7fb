//! Admin operations: reload the model or the operator files (SIGHUP and the Reload RPC), and
//! move the manual clock. Each is audited.

use std::sync::Arc;

use super::retire;
use super::validate::InvalidField;
use super::{Service, ServiceError};
use crate::model::classifier::IntentModel;
use crate::operator::OperatorSnapshot;
use crate::store::AuditAction;

impl Service {
    /// Loads the model folder off the runtime threads and swaps it in; a broken folder is
    /// rejected with the reason and the old model keeps serving. Returns once the old model is
    /// freed (when its last request finished), so the next reload never holds three.
    pub async fn reload_model(&self, actor: &str) -> Result<String, ServiceError> {
        let _g = self.reload_lock.lock().await;
        let dir = self.settings.model_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            // Memory that serving freed and malloc kept goes back first: the new model is
            // built on top of what is live, not of that (see `retire`).
            crate::model::allocator::release_free_memory();
            IntentModel::load(&dir)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("model loader crashed: {e}")))?;
        match loaded {
            Ok(m) => {
                let version = m.card.version.clone();
                self.replace_model(Arc::new(m)).await;
                self.audit(
                    actor,
                    AuditAction::ModelChange,
                    &format!("model {version} loaded"),
                );
                Ok(version)
            }
            Err(e) => {
                let msg = format!(
                    "model reload rejected, still serving {}: {e:#}",
                    self.model_version()
                );
                self.audit(actor, AuditAction::ModelChange, &msg);
                Err(ServiceError::FailedPrecondition(msg))
            }
        }
    }

    /// Reloads every operator file as one unit: all are validated into a new snapshot first,
    /// then one store swaps it in for the classifier and the playbook alike (whose live state
    /// is not part of it and stays). A broken file leaves everything as it was. Returns once
    /// the old snapshot is freed (like [`Self::reload_model`]).
    pub async fn reload_operator(&self, actor: &str) -> Result<String, ServiceError> {
        let _g = self.reload_lock.lock().await;
        let s = &self.settings;
        let (operator_dir, training_data, fusion) = (
            s.operator_dir.clone(),
            s.training_data.clone(),
            s.fusion.clone(),
        );
        let loaded = tokio::task::spawn_blocking(move || {
            crate::model::allocator::release_free_memory();
            OperatorSnapshot::load_dir(&operator_dir, &training_data, fusion)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("config loader crashed: {e}")))?;
        match loaded {
            Ok(snapshot) => {
                let hash = snapshot.config_hash.clone();
                let old = self.operator.swap(Arc::new(snapshot));
                self.audit(
                    actor,
                    AuditAction::ConfigChange,
                    &format!("operator files {hash} loaded"),
                );
                self.outbound_changed.notify_waiters();
                // Free the old snapshot before anything else loads (SIGHUP loads the model
                // next): its keyword layer is as large as a model.
                let what = format!("operator files {}", old.config_hash);
                retire::retire(old, what, self.retire_patience()).await;
                Ok(hash)
            }
            Err(e) => {
                let msg = format!(
                    "operator reload rejected, still serving {}: {e:#}",
                    self.config_hash()
                );
                self.audit(actor, AuditAction::ConfigChange, &msg);
                Err(ServiceError::FailedPrecondition(msg))
            }
        }
    }

    /// Moves the manual clock. Retention is applied at once for the new "now" (what the
    /// hourly purge would do once it ran), so a test or demo jumping months ahead sees the
    /// same database a real server would have. Audited as an admin call.
    pub async fn set_clock(&self, now_ms: i64, actor: &str) -> Result<i64, ServiceError> {
        let clock = self.manual_clock.as_ref().ok_or_else(|| {
            ServiceError::FailedPrecondition(
                "the server runs on the system clock (start it with --manual-clock)".into(),
            )
        })?;
        if now_ms <= 0 {
            return Err(InvalidField {
                field: "now_ms".into(),
                problem: "must be positive Unix milliseconds".into(),
            }
            .into());
        }
        let before = self.now_ms();
        clock.set_ms(now_ms);
        self.audit(
            actor,
            AuditAction::AdminCall,
            &format!("SetClock {before} -> {now_ms}"),
        );
        if let Some(storage) = self.storage.clone() {
            match tokio::task::spawn_blocking(move || storage.purge()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.metrics.store_errors.inc();
                    tracing::error!(error = %e, "retention purge after SetClock failed");
                }
                Err(e) => tracing::error!(error = %e, "retention purge task crashed"),
            }
        }
        self.outbound_changed.notify_waiters();
        Ok(now_ms)
    }
}
