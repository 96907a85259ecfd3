//! Per-request telemetry: a `request` span (method, matched route, taskId, request bytes, status,
//! retCode) around the handler, one log line when it is answered, the latency histogram by
//! matched route, and the block counters by retCode.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use tracing::field::Empty;
use tracing::Instrument;

use super::block::AcceptedBytes;
use super::{RetCode, BLOCK_PATH, HEALTHZ_PATH, METRICS_PATH, READYZ_PATH};
use crate::telemetry::metrics;

/// The route label of a path no endpoint matched (never the raw URL: that would make a new
/// series per URL).
const UNMATCHED: &str = "unmatched";

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = req.match_pattern().unwrap_or_else(|| UNMATCHED.to_owned());
    let method = method_label(req.method());
    let span = tracing::info_span!(
        "request",
        method,
        route = %route,
        task_id = Empty,
        bytes = Empty,
        status = Empty,
        ret_code = Empty,
    );
    if let Some(task_id) = task_id(req.query_string()) {
        span.record("task_id", task_id);
    }
    if let Some(bytes) = content_length(&req) {
        span.record("bytes", bytes);
    }
    // Debug: a long upload shows up while it is still arriving.
    span.in_scope(|| tracing::debug!("request started"));
    let result = next.call(req).instrument(span.clone()).await;
    let took = started.elapsed();
    let (status, ret_code, accepted) = match &result {
        Ok(response) => {
            let extensions = response.response().extensions();
            (
                response.status(),
                extensions.get::<RetCode>().map(|code| code.0),
                extensions.get::<AcceptedBytes>().map(|bytes| bytes.0),
            )
        }
        Err(e) => (e.as_response_error().status_code(), None, None),
    };
    span.record("status", status.as_u16());
    if let Some(code) = ret_code {
        span.record("ret_code", code);
    }
    let duration_ms = took.as_secs_f64() * 1000.0;
    span.in_scope(|| match route.as_str() {
        // Probes and scrapes come every few seconds: keep them out of the info log.
        HEALTHZ_PATH | READYZ_PATH | METRICS_PATH => tracing::debug!(duration_ms, "request answered"),
        _ if status.is_server_error() => tracing::warn!(duration_ms, "request answered"),
        _ => tracing::info!(duration_ms, "request answered"),
    });
    if route == BLOCK_PATH {
        // A block cut off before its handler answered (client gone, shutdown) has no retCode.
        if let Some(code) = ret_code {
            metrics::block_answered(code, accepted.filter(|_| status == StatusCode::OK));
        }
    }
    metrics::request_finished(method, route, status.as_u16(), took);
    result
}

/// The standard methods by name; any other (clients may invent methods) as `other`, so that a
/// client cannot add series to the metrics at will.
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD.iter().find(|m| *m == method).map_or("other", |m| m.as_str())
}

fn task_id(query: &str) -> Option<i64> {
    query.split('&').find_map(|pair| pair.strip_prefix("taskId="))?.parse().ok()
}

fn content_length(req: &ServiceRequest) -> Option<u64> {
    req.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_comes_from_the_query() {
        assert_eq!(task_id("taskId=12&key=abc"), Some(12));
        assert_eq!(task_id("key=abc&taskId=7"), Some(7));
        assert_eq!(task_id("taskId=x"), None);
        assert_eq!(task_id(""), None);
    }

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
