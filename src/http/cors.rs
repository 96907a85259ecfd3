//! CORS for browsers that upload straight to fupload, from `cors` in the config.

use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS};
use actix_web::middleware::Next;

use crate::config::CorsSettings;

/// What a browser's tus or IETF client (Uppy, tus-js-client) sends and reads, on top of the
/// configured methods and headers.
const TUS_METHODS: [&str; 4] = ["HEAD", "PATCH", "DELETE", "OPTIONS"];
const TUS_REQUEST_HEADERS: [&str; 13] = [
    "authorization",
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-checksum",
    "upload-defer-length",
    "upload-concat",
    "upload-complete",
    "upload-incomplete",
    "upload-draft-interop-version",
    "content-digest",
    "repr-digest",
];
/// What such a client reads of the replies. Set here rather than by actix-cors, which sends its
/// list on every reply (even with CORS closed) in an order that differs between workers.
const TUS_RESPONSE_HEADERS: &str = "location, tus-resumable, tus-version, tus-extension, tus-max-size, \
    tus-checksum-algorithm, upload-offset, upload-length, upload-expires, upload-concat, upload-complete, upload-incomplete, upload-limit, upload-draft-interop-version, \
    accept-patch, repr-digest";

/// Middleware, outside `cors`: a reply the browser may read (it allows the origin) may also show
/// the tus and IETF headers.
pub async fn expose_tus_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut response = next.call(req).await?;
    let headers = response.headers_mut();
    if headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(TUS_RESPONSE_HEADERS));
    }
    Ok(response)
}

/// With no allowed origin (the default) preflights are refused and no response carries CORS
/// headers, so browsers on other origins cannot read any reply. Requests from a disallowed origin
/// are still served (without CORS headers): non-browser clients that send `Origin` keep working,
/// and browsers enforce the rest.
pub fn cors(settings: &CorsSettings) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(settings.allowed_methods.iter().map(String::as_str).chain(TUS_METHODS))
        .allowed_headers(settings.allowed_headers.iter().map(String::as_str).chain(TUS_REQUEST_HEADERS))
        .max_age(usize::try_from(settings.max_age).ok());
    if settings.allowed_origins.iter().any(|origin| origin == "*") {
        return cors.allow_any_origin();
    }
    for origin in &settings.allowed_origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}
