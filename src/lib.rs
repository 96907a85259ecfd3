//! fupload: a resumable large-file upload server speaking the fuploadServer protocol.

pub mod blob;
pub mod callback;
pub mod client;
pub mod config;
pub mod domain;
pub mod hash;
pub mod health;
pub mod http;
pub mod prefix_hash;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
