//! The standard gRPC health service: SERVING exactly when the service says it is ready
//! ([`Service::not_ready_reason`]): NOT_SERVING until the model is loaded, while the store fails
//! every commit, and from the moment shutdown starts, so a balancer routes around this replica.

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::service::Service;

/// Sets every service's status from the service's readiness; call it whenever an input of
/// readiness changed (model loaded, store health, shutdown).
pub async fn sync(health: &HealthReporter, service: &Service) {
    match service.not_ready_reason() {
        None => set_all(health, ServingStatus::Serving).await,
        Some(_) => set_all(health, ServingStatus::NotServing).await,
    }
}

/// The overall status ("") and each of our services.
pub const SERVICE_NAMES: &[&str] = &["", "intentd.v1.IntentService", "intentd.v1.AdminService"];

pub async fn mark_not_serving(health: &HealthReporter) {
    set_all(health, ServingStatus::NotServing).await;
}

async fn set_all(health: &HealthReporter, status: ServingStatus) {
    for name in SERVICE_NAMES {
        health.set_service_status(*name, status).await;
    }
}
