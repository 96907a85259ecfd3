//! Callbacks to https business servers, verified against the built-in roots and `callback.caFile`
//! (a CA made by the test).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use fupload::config::{BusinessServer, Settings};
use fupload_testkit::tls::TestCa;

use crate::helpers::*;

/// Callbacks go to `url`, trusting `ca_file`'s CA besides the built-in roots.
fn notify(url: String, ca_file: PathBuf) -> impl FnOnce(&mut Settings) {
    move |s| {
        s.business_servers =
            HashMap::from([(TOKEN.to_owned(), BusinessServer { name: "cp1".into(), notify_url: url })]);
        s.callback.ca_file = ca_file;
        s.callback.max_attempts = 3;
        s.callback.timeout = 2;
    }
}

async fn finish_one(app: &TestApp) {
    let task = app.new_task("a.bin", b"abc").await;
    app.send_block(&task, b"abc", 0, 2).await.expect(200, "0");
}

/// (status, attempts, last_error) of the one callback, once it is no longer pending.
async fn settled_callback(app: &TestApp) -> Vec<String> {
    for _ in 0..300 {
        let rows = query(app, "SELECT status, attempts, last_error FROM callback_outbox").await;
        if rows.len() == 1 && rows[0][0] != "pending" {
            return rows[0].clone();
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the callback is still pending: {:?}", query(app, "SELECT * FROM callback_outbox").await);
}

#[actix_web::test]
async fn an_https_callback_is_delivered_to_a_certificate_of_the_ca_in_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "private");
    let business = CallbackReceiver::start_https(&ca.issue(dir.path(), "business")).await;
    assert!(business.url.starts_with("https://127.0.0.1:"), "{}", business.url);
    let app = spawn_app_with(notify(business.url.clone(), ca.cert_file.clone())).await;
    finish_one(&app).await;
    let callback = business.wait_for(1).await.remove(0);
    assert_eq!(callback.json["retCode"], "0");
    assert!(callback.signature_is_valid());
    assert_eq!(settled_callback(&app).await, ["delivered", "1", "NULL"]);
}

#[actix_web::test]
async fn an_https_callback_to_an_unknown_ca_is_refused_retried_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "private");
    let business = CallbackReceiver::start_https(&ca.issue(dir.path(), "business")).await;
    // caFile names another CA: trusting it does not trust the business server's.
    let other = TestCa::new(dir.path(), "other");
    let app = spawn_app_with(notify(business.url.clone(), other.cert_file.clone())).await;
    finish_one(&app).await;
    let row = settled_callback(&app).await;
    assert_eq!((row[0].as_str(), row[1].as_str()), ("failed", "3"), "retried up to callback.maxAttempts");
    assert!(row[2].contains("cannot reach the business server") && row[2].contains("certificate"), "{row:?}");
    assert!(business.callbacks().is_empty(), "nothing got through");

    // And without caFile at all, Mozilla's and the system's roots do not know the CA either.
    let app = spawn_app_with(notify(business.url.clone(), PathBuf::new())).await;
    finish_one(&app).await;
    let row = settled_callback(&app).await;
    assert_eq!(row[0], "failed");
    assert!(row[2].contains("UnknownIssuer"), "{row:?}");
}

#[actix_web::test]
async fn a_ca_file_that_cannot_be_read_stops_the_start() {
    let mut settings = Settings::from_yaml("{}", Vec::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.database.url = format!("sqlite://{}", dir.path().join("fupload.db").display());
    settings.tmp_dir = dir.path().join("tmp");
    settings.store_dir = dir.path().join("store");
    settings.callback.ca_file = dir.path().join("missing.pem");
    let error = fupload::startup::Application::build(settings).await.err().expect("the start fails");
    assert!(format!("{error:#}").contains("callback.caFile"), "{error:#}");
}
