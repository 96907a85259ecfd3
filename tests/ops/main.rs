//! Operations tests that need a process of their own: the metrics recorder is process-wide, so
//! the one test that counts uploads lives here, apart from the api tests running in parallel;
//! and the shutdown test runs the real binary and signals it.

use fupload_testkit::helpers;

mod metrics;
mod shutdown;
