//! The client (library and `fupload-client` binary) against the real server on loopback,
//! through a proxy that counts, fails or holds block requests.

use fupload_testkit::helpers;

mod cli;
mod proxy;
mod support;
mod upload;
