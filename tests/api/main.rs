//! Black-box tests: the real server over loopback HTTP, one temp dir and database each.

use fupload_testkit::helpers;

mod bad_input;
mod blocks;
mod callbacks;
mod create;
mod database;
mod ietf;
mod instant;
mod lifecycle;
mod ops;
mod state;
mod texts;
mod tls;
mod tus;
