//! Operations tests that need a process of their own: the metrics recorder is process-wide, so
//! the one test that counts uploads lives here, apart from the api tests running in parallel;
//! and the shutdown test runs the real binary and signals it.

// The api tests' helpers; this binary uses only some of them.
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
mod metrics;
mod shutdown;
