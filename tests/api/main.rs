//! Black-box tests: the real server over loopback HTTP, one temp dir and database each.

mod bad_input;
mod blocks;
mod callbacks;
mod create;
mod database;
mod helpers;
mod lifecycle;
mod ops;
mod state;
