//! `/metrics` after real uploads: the exposition parses, and the counters moved as they should.

use std::collections::HashMap;

use crate::helpers::*;

/// `name{labels}` → value, from the Prometheus text format; panics on a line that is not one.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines().filter(|line| !line.is_empty() && !line.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value = value.parse::<f64>().unwrap_or_else(|_| panic!("not a number: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        assert!(
            series[..name_end].chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line:?}"
        );
        assert!(name_end == series.len() || series.ends_with('}'), "bad labels: {line:?}");
        samples.insert(series.to_owned(), value);
    }
    samples
}

async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let (status, headers, body) = app.request(awc::http::Method::GET, "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("# TYPE fupload_tasks_created_total counter"), "{text}");
    parse(&text)
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("{series} is not exported; have {:?}", samples.keys()))
}

#[actix_web::test]
async fn metrics_count_tasks_blocks_bytes_callbacks_and_requests() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    assert_eq!(value(&before, "fupload_tasks_created_total"), 0.0);
    assert_eq!(value(&before, r#"fupload_tasks_ended_total{status="finish"}"#), 0.0);

    let data = content(3000, 60);
    let task = app.new_task("a.bin", &data).await;
    app.send_block(&task, &data, 0, 999).await.expect(200, "0");
    app.send_block(&task, &data, 0, 999).await.expect(200, "1");
    let bad_md5 = md5_hex(b"other");
    app.send_fields(
        &task.upload_url,
        &[("startByte", b"1000"), ("endByte", b"1999"), ("partMd5", bad_md5.as_bytes()), ("file", &data[1000..2000])],
    )
    .await
    .expect(400, "7");
    let paused = app.new_task("b.bin", &data).await;
    app.set_state(&paused, "pause").await.expect(200, "0");
    // The same fields again resume the unfinished task: not a new one.
    app.new_task("a.bin", &data).await;
    app.send_block(&task, &data, 1000, 2999).await.expect(200, "0");
    app.callbacks.wait_for(1).await;
    // The callback is recorded as delivered just after the business server answered it.
    let mut after = scrape(&app).await;
    for _ in 0..100 {
        if value(&after, "fupload_callbacks_delivered_total") == 1.0 {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
        after = scrape(&app).await;
    }

    assert_eq!(value(&after, "fupload_tasks_created_total"), 2.0);
    assert_eq!(value(&after, r#"fupload_tasks_ended_total{status="finish"}"#), 1.0);
    assert_eq!(value(&after, r#"fupload_tasks_ended_total{status="fail"}"#), 0.0);
    assert_eq!(value(&after, r#"fupload_blocks_total{ret_code="0"}"#), 2.0);
    assert_eq!(value(&after, r#"fupload_blocks_total{ret_code="1"}"#), 1.0);
    assert_eq!(value(&after, r#"fupload_blocks_total{ret_code="7"}"#), 1.0);
    // Accepted blocks: 1000 + 1000 (the repeat) + 2000 bytes.
    assert_eq!(value(&after, "fupload_received_bytes_total"), 4000.0);
    assert_eq!(value(&after, "fupload_callbacks_delivered_total"), 1.0);
    assert_eq!(value(&after, "fupload_callback_failures_total"), 0.0);
    // Gauges read from the database: the paused task is the only open one.
    assert_eq!(value(&after, r#"fupload_active_tasks{status="pause"}"#), 1.0);
    assert_eq!(value(&after, r#"fupload_active_tasks{status="upload"}"#), 0.0);
    assert_eq!(value(&after, r#"fupload_active_tasks{status="verify"}"#), 0.0);
    assert_eq!(value(&after, "fupload_callback_outbox_pending"), 0.0);
    // Latency by matched route: the block URLs' query strings do not make new series.
    let block_requests =
        r#"fupload_http_request_duration_seconds_count{method="POST",route="/api/upload/files/block",status="200"}"#;
    assert_eq!(value(&after, block_requests), 3.0);
    assert!(after.keys().all(|series| !series.contains("taskId")));
    let buckets = after.keys().filter(|s| s.starts_with("fupload_http_request_duration_seconds_bucket{")).count();
    assert!(buckets > 10, "the histogram has buckets");
    // The WAL's size, as the checkpoint (four times a second) found it: the uploads wrote to it.
    // PostgreSQL keeps its own WAL.
    if !on_sqlite() {
        return;
    }
    let wal_bytes = value(&after, "fupload_database_wal_bytes");
    let wal_file = std::fs::metadata(app.path("fupload.db-wal")).unwrap().len() as f64;
    assert!(wal_bytes > 0.0 && wal_bytes <= wal_file, "gauge {wal_bytes}, file {wal_file}");
}
