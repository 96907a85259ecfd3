//! The client (library and `fupload-client` binary) against the real server on loopback,
//! through a proxy that counts, fails or holds block requests.

// The API tests' helpers: the real server on a random port with temp dirs, and its callbacks.
// Not every helper is used here.
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod cli;
mod proxy;
mod support;
mod upload;
