//! The standard gRPC health service: NOT_SERVING until the model is loaded and again from the
//! moment shutdown starts, so a balancer routes around this replica.

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The overall status ("") and each of our services.
pub const SERVICE_NAMES: &[&str] = &["", "intentd.v1.IntentService", "intentd.v1.AdminService"];

pub async fn mark_serving(health: &HealthReporter) {
    set_all(health, ServingStatus::Serving).await;
}

pub async fn mark_not_serving(health: &HealthReporter) {
    set_all(health, ServingStatus::NotServing).await;
}

async fn set_all(health: &HealthReporter, status: ServingStatus) {
    for name in SERVICE_NAMES {
        health.set_service_status(*name, status).await;
    }
}
