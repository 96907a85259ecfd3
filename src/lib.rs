//! fupload: a resumable large-file upload server speaking the fuploadServer protocol, tus 1.0 and
//! the IETF resumable-upload draft, all on one engine.
//!
//! A request goes from [`http`] (thin handlers, one front end per protocol; the one mapping of
//! errors to replies) to [`service`] (the use cases: create, receive a block, state, finish,
//! expire, recover, tus appends), which writes bytes through [`blob`] (temp files, the placement
//! into storeDir) or [`storage`] (an S3 bucket) and records them in [`store`] (the only SQL, on
//! sqlx: SQLite, or PostgreSQL for many nodes). [`domain`] holds the values and rules that need no
//! I/O; [`hash`] and [`prefix_hash`] the md5s; [`callback`] the
//! outbox worker that calls business servers back. [`config`], [`startup`], [`health`] and
//! [`telemetry`] set the server up and watch it; [`tls`] serves https; [`client`] is the client
//! library behind `fupload-client`.

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
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod tls;
