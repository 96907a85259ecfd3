//! Operations endpoints: health, readiness, CORS and the OpenAPI document.

use awc::http::Method;
use serde_json::Value;

use crate::helpers::*;

#[actix_web::test]
async fn healthz_answers_ok() {
    let app = spawn_app().await;
    let reply = app.get("/healthz").await;
    assert_eq!((reply.status, reply.json["status"].as_str()), (200, Some("ok")));
    // Wrong methods on the operations paths get the envelope like every other path.
    app.post_json("/healthz", &Value::Null).await.expect(405, "6");
}

fn failing_checks(json: &Value) -> Vec<&str> {
    let checks = json["checks"].as_array().unwrap();
    checks.iter().filter(|check| check["ok"] == false).map(|check| check["name"].as_str().unwrap()).collect()
}

#[actix_web::test]
async fn readyz_fails_when_the_store_dir_cannot_take_files() {
    let app = spawn_app_with(|s| s.readiness.min_free_disk = 0).await;
    let reply = app.get("/readyz").await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["status"], "ready");
    let names: Vec<&str> =
        reply.json["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["database", "tmpDir", "storeDir"]);
    // CI runs as root, which permission bits do not stop: put a file where the directory was.
    std::fs::remove_dir_all(app.path("store")).unwrap();
    std::fs::write(app.path("store"), b"not a directory").unwrap();
    let reply = app.get("/readyz").await;
    assert_eq!(reply.status, 503, "{}", reply.json);
    assert_eq!(reply.json["status"], "not ready");
    assert_eq!(failing_checks(&reply.json), ["storeDir"]);
    assert!(!reply.json.to_string().contains(app.dir.path().to_str().unwrap()), "no paths in the reply");
    // Liveness does not depend on it.
    assert_eq!(app.get("/healthz").await.status, 200);
}

#[actix_web::test]
async fn readyz_fails_below_the_free_disk_floor() {
    let app = spawn_app_with(|s| s.readiness.min_free_disk = u64::MAX).await;
    let reply = app.get("/readyz").await;
    assert_eq!(reply.status, 503, "{}", reply.json);
    assert_eq!(failing_checks(&reply.json), ["tmpDir", "storeDir"]);
}

const BLOCK_PATH: &str = "/api/upload/files/block";

async fn preflight(app: &TestApp, origin: &str) -> (u16, awc::http::header::HeaderMap) {
    let headers = [
        ("origin", origin),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type"),
    ];
    let (status, headers, _) = app.request(Method::OPTIONS, BLOCK_PATH, &headers).await;
    (status, headers)
}

fn header<'a>(headers: &'a awc::http::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

fn allowed_origin(headers: &awc::http::header::HeaderMap) -> Option<&str> {
    header(headers, "access-control-allow-origin")
}

#[actix_web::test]
async fn cors_allows_configured_origins_only() {
    let app = spawn_app_with(|s| {
        s.cors.allowed_origins = vec!["https://app.example".into()];
        s.cors.max_age = 600;
    })
    .await;
    let (status, headers) = preflight(&app, "https://app.example").await;
    assert_eq!(status, 200);
    assert_eq!(allowed_origin(&headers), Some("https://app.example"));
    assert!(header(&headers, "access-control-allow-methods").unwrap().contains("POST"));
    // The configured headers, and what a browser's tus or IETF client sends (docs/CONFIG.md).
    let allowed = header(&headers, "access-control-allow-headers").unwrap();
    for wanted in ["content-type", "tus-resumable", "upload-offset", "authorization", "upload-complete"] {
        assert!(allowed.split(", ").any(|h| h == wanted), "{wanted} in {allowed}");
    }
    assert_eq!(header(&headers, "access-control-max-age"), Some("600"));

    let (status, headers) = preflight(&app, "https://evil.example").await;
    assert_eq!((status, allowed_origin(&headers)), (400, None));

    // Actual requests: the allowed origin may read the reply; another origin is served without
    // CORS headers (its browser hides the reply; a non-browser client is not hindered).
    let info = "/api/upload/files/blocks/info?taskId=1";
    let (status, headers, _) = app.request(Method::GET, info, &[("origin", "https://app.example")]).await;
    assert_eq!((status, allowed_origin(&headers)), (404, Some("https://app.example")));
    let (status, headers, _) = app.request(Method::GET, info, &[("origin", "https://evil.example")]).await;
    assert_eq!((status, allowed_origin(&headers)), (404, None));
}

#[actix_web::test]
async fn cors_is_closed_by_default() {
    let app = spawn_app().await;
    let (status, headers) = preflight(&app, "https://app.example").await;
    assert_eq!((status, allowed_origin(&headers)), (400, None));
    let (status, headers, _) = app.request(Method::GET, "/healthz", &[("origin", "https://app.example")]).await;
    assert_eq!((status, allowed_origin(&headers)), (200, None));
    // An OPTIONS that is not a preflight is just a wrong method, answered with the envelope.
    let (status, _, body) = app.request(Method::OPTIONS, BLOCK_PATH, &[]).await;
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, json["retCode"].as_str()), (405, Some("6")));
}

#[actix_web::test]
async fn cors_can_allow_any_origin() {
    let app = spawn_app_with(|s| s.cors.allowed_origins = vec!["*".into()]).await;
    let (status, headers) = preflight(&app, "https://anywhere.example").await;
    assert_eq!((status, allowed_origin(&headers)), (200, Some("https://anywhere.example")));
}

#[actix_web::test]
async fn the_openapi_document_describes_the_api() {
    let app = spawn_app().await;
    let (status, headers, body) = app.request(Method::GET, "/api/openapi.json", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/upload/new/task",
        BLOCK_PATH,
        "/api/upload/files/blocks/info",
        "/api/upload/files/state",
        "/api/upload/files/instant",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} is not described");
    }
    let refusal = &doc["components"]["schemas"]["Refusal"];
    assert_eq!(refusal["properties"]["retCode"]["enum"].as_array().unwrap().len(), 13, "{refusal}");
}
