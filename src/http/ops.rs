//! Operations endpoints: liveness, readiness, Prometheus metrics and the OpenAPI document.

use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::health::{Check, Readiness};
use crate::service::Uploads;
use crate::telemetry::metrics;

#[derive(Serialize, utoipa::ToSchema)]
pub struct HealthJson {
    #[schema(example = "ok")]
    status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReadyJson {
    /// `ready` or `not ready`.
    #[schema(example = "ready")]
    status: &'static str,
    checks: Vec<Check>,
}

/// Liveness: the process serves HTTP. Touches nothing else, so it stays cheap.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = HealthJson)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(HealthJson { status: "ok" })
}

/// Readiness: the database answers and takes writes, tmpDir and storeDir are writable, free disk
/// is above `readiness.minFreeDisk`. 503 lists what is wrong.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready for uploads", body = ReadyJson),
        (status = 503, description = "Not ready; the failing checks say why", body = ReadyJson)
    )
)]
pub async fn readyz(uploads: web::Data<Uploads>) -> HttpResponse {
    let settings = uploads.settings();
    let checks = Readiness {
        store: uploads.store(),
        tmp_dir: &settings.tmp_dir,
        store_dir: settings.store_root(),
        min_free_disk: settings.readiness.min_free_disk,
    }
    .check()
    .await;
    if checks.iter().all(|check| check.ok) {
        HttpResponse::Ok().json(ReadyJson { status: "ready", checks })
    } else {
        HttpResponse::ServiceUnavailable().json(ReadyJson { status: "not ready", checks })
    }
}

/// Prometheus text exposition format. The task and outbox gauges are read from the database now.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"))
)]
pub async fn metrics(uploads: web::Data<Uploads>, handle: web::Data<PrometheusHandle>) -> HttpResponse {
    let store = uploads.store();
    match (store.open_task_counts().await, store.pending_callbacks().await) {
        (Ok(active), Ok(pending)) => metrics::set_store_gauges(&active, pending),
        // The counters are still worth serving; the gauges keep their last values.
        (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "metrics: cannot read the database gauges"),
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(metrics::render(&handle))
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", body = Object))
)]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().insert_header(ContentType::json()).body(super::openapi::document_json())
}
