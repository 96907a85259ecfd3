//! What fupload's integration tests share. A crate of its own (a dev-dependency of fupload) so
//! that each test binary takes what it needs and nothing here is dead code in the others.

pub mod acks;
pub mod helpers;
pub mod raw_http;
pub mod tls;
