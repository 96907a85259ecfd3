//! Prometheus metrics through the `metrics` facade. Counters are moved where things happen
//! (one call each); the gauges of task and outbox state are read from SQLite when `/metrics`
//! is scraped, so they are right after a restart and never drift.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::TaskStatus;

pub const TASKS_CREATED: &str = "fupload_tasks_created_total";
pub const TASKS_ENDED: &str = "fupload_tasks_ended_total";
pub const RECEIVED_BYTES: &str = "fupload_received_bytes_total";
pub const BLOCKS: &str = "fupload_blocks_total";
pub const ACTIVE_TASKS: &str = "fupload_active_tasks";
pub const CALLBACKS_DELIVERED: &str = "fupload_callbacks_delivered_total";
pub const CALLBACK_FAILURES: &str = "fupload_callback_failures_total";
pub const CALLBACKS_GIVEN_UP: &str = "fupload_callbacks_given_up_total";
pub const OUTBOX_PENDING: &str = "fupload_callback_outbox_pending";
pub const REQUEST_DURATION: &str = "fupload_http_request_duration_seconds";
pub const WAL_SIZE: &str = "fupload_database_wal_bytes";

/// Latency buckets, seconds: JSON calls take milliseconds, a 64 MiB block seconds.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The statuses of tasks that are not over yet.
pub const OPEN_STATUSES: [TaskStatus; 3] = [TaskStatus::Upload, TaskStatus::Pause, TaskStatus::Verify];
const END_STATUSES: [TaskStatus; 4] = [TaskStatus::Finish, TaskStatus::Fail, TaskStatus::Cancel, TaskStatus::Expire];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use. The `metrics` facade has one global
/// recorder, so every `Application` in a process (tests start many) shares it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed: /metrics shows only the database gauges");
            }
            describe();
            handle
        })
        .clone()
}

/// HELP lines, and zero series for the counters a dashboard expects to exist from the start.
fn describe() {
    describe_counter!(TASKS_CREATED, "Upload tasks created (a create that resumes an unfinished task is not counted).");
    describe_counter!(TASKS_ENDED, "Upload tasks that ended, by final status (finish, fail, cancel, expire).");
    describe_counter!(RECEIVED_BYTES, Unit::Bytes, "Bytes of accepted blocks (repeats included).");
    describe_counter!(BLOCKS, "Block uploads answered, by retCode: 0 and 1 accepted, the others refused.");
    describe_gauge!(ACTIVE_TASKS, "Tasks not over yet, by status (upload, pause, verify); read from the database.");
    describe_counter!(CALLBACKS_DELIVERED, "Callbacks the business server answered with a 2xx.");
    describe_counter!(CALLBACK_FAILURES, "Callback attempts that failed (no answer, or not a 2xx).");
    describe_counter!(CALLBACKS_GIVEN_UP, "Callbacks marked failed after callback.maxAttempts attempts.");
    describe_gauge!(OUTBOX_PENDING, "Callbacks waiting in the outbox for delivery; read from the database.");
    describe_gauge!(WAL_SIZE, Unit::Bytes, "Size of the database's WAL file, as of the last checkpoint.");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "HTTP request latency by method, matched route and status.");
    counter!(TASKS_CREATED).absolute(0);
    counter!(RECEIVED_BYTES).absolute(0);
    counter!(CALLBACKS_DELIVERED).absolute(0);
    counter!(CALLBACK_FAILURES).absolute(0);
    counter!(CALLBACKS_GIVEN_UP).absolute(0);
    for status in END_STATUSES {
        counter!(TASKS_ENDED, "status" => status.as_str()).absolute(0);
    }
}

pub fn task_created() {
    counter!(TASKS_CREATED).increment(1);
}

pub fn task_ended(status: TaskStatus) {
    counter!(TASKS_ENDED, "status" => status.as_str()).increment(1);
}

/// A block request was answered with `ret_code`; `accepted_bytes` is its size when accepted.
pub fn block_answered(ret_code: &'static str, accepted_bytes: Option<u64>) {
    counter!(BLOCKS, "ret_code" => ret_code).increment(1);
    if let Some(bytes) = accepted_bytes {
        counter!(RECEIVED_BYTES).increment(bytes);
    }
}

pub fn callbacks_delivered(n: usize) {
    counter!(CALLBACKS_DELIVERED).increment(n as u64);
}

pub fn callback_failed(gave_up: bool) {
    counter!(CALLBACK_FAILURES).increment(1);
    if gave_up {
        counter!(CALLBACKS_GIVEN_UP).increment(1);
    }
}

pub fn request_finished(method: &'static str, route: String, status: u16, took: Duration) {
    histogram!(REQUEST_DURATION, "method" => method, "route" => route, "status" => status.to_string())
        .record(took.as_secs_f64());
}

/// The state read from the database at scrape time.
pub fn set_store_gauges(active: &[(TaskStatus, u64)], outbox_pending: u64) {
    for status in OPEN_STATUSES {
        let count = active.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
        gauge!(ACTIVE_TASKS, "status" => status.as_str()).set(count as f64);
    }
    gauge!(OUTBOX_PENDING).set(outbox_pending as f64);
}

pub fn set_wal_size(bytes: u64) {
    gauge!(WAL_SIZE).set(bytes as f64);
}

/// The exposition text; also drains histogram samples gathered since the last scrape.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

/// Drains histogram samples now and then, so they do not pile up between scrapes (or without any).
pub async fn keep_up(handle: PrometheusHandle) {
    let mut ticks = tokio::time::interval(Duration::from_secs(5));
    loop {
        ticks.tick().await;
        handle.run_upkeep();
    }
}
