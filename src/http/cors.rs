//! CORS for browsers that upload straight to fupload, from `cors` in the config.

use actix_cors::Cors;

use crate::config::CorsSettings;

/// With no allowed origin (the default) preflights are refused and no response carries CORS
/// headers, so browsers on other origins cannot read any reply. Requests from a disallowed origin
/// are still served (without CORS headers): non-browser clients that send `Origin` keep working,
/// and browsers enforce the rest.
pub fn cors(settings: &CorsSettings) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(settings.allowed_methods.iter().map(String::as_str))
        .allowed_headers(settings.allowed_headers.iter().map(String::as_str))
        .max_age(usize::try_from(settings.max_age).ok());
    if settings.allowed_origins.iter().any(|origin| origin == "*") {
        return cors.allow_any_origin();
    }
    for origin in &settings.allowed_origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}
