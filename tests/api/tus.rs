//! tus 1.0.0 on the same engine: a task made by the business server resumed through its tusUrl,
//! creations with an upload grant, each extension, and the refusals with their status codes.

use std::time::{SystemTime, UNIX_EPOCH};

use awc::http::header::HeaderMap;
use awc::http::Method;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use fupload::domain::grant::GrantClaims;
use sha1::Digest;

use crate::helpers::*;

const TUS: (&str, &str) = ("tus-resumable", "1.0.0");
const OCTETS: (&str, &str) = ("content-type", "application/offset+octet-stream");

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A grant for `user 7`'s file `name` of `size` bytes (`None`: deferred), as a business server makes it.
pub(crate) fn grant(name: &str, size: Option<u64>) -> GrantClaims {
    let mut claims = GrantClaims::new("7", name, size, now_secs(), 600).unwrap();
    claims.store_path = "users/7/".into();
    claims.feed_back_parameter = Some(serde_json::value::RawValue::from_string(r#"{"album":3}"#.into()).unwrap());
    claims
}

pub(crate) fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

pub(crate) fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// The PATCH of `data[offset..end]`, with extra headers.
async fn patch(
    app: &TestApp,
    url: &str,
    data: &[u8],
    offset: usize,
    end: usize,
    extra: &[(&str, &str)],
) -> (u16, HeaderMap, Vec<u8>) {
    let offset_text = offset.to_string();
    let mut headers = vec![TUS, OCTETS, ("upload-offset", offset_text.as_str())];
    headers.extend_from_slice(extra);
    app.request_with_body(Method::PATCH, url, &headers, data[offset..end].to_vec()).await
}

async fn head(app: &TestApp, url: &str) -> (u16, HeaderMap, Vec<u8>) {
    app.request(Method::HEAD, url, &[TUS]).await
}

/// Creates an upload with `grant` (signed with the test token) and extra headers; returns the reply.
async fn create(app: &TestApp, grant: &str, extra: &[(&str, &str)], body: Vec<u8>) -> (u16, HeaderMap, Vec<u8>) {
    let bearer = format!("Bearer {grant}");
    let mut headers = vec![TUS, ("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    app.request_with_body(Method::POST, "/api/upload/tus", &headers, body).await
}

fn sha1_header(part: &[u8]) -> String {
    format!("sha1 {}", STANDARD.encode(sha1::Sha1::digest(part)))
}

#[actix_web::test]
async fn options_tell_the_version_extensions_limit_and_checksums() {
    let app = spawn_app().await;
    let (status, headers, _) = app.request(Method::OPTIONS, "/api/upload/tus", &[]).await;
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "tus-version"), "1.0.0");
    for extension in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "checksum",
        "expiration",
        "concatenation",
    ] {
        assert!(header(&headers, "tus-extension").split(',').any(|e| e == extension), "{extension}");
    }
    assert_eq!(header(&headers, "tus-max-size"), app.settings.max_file_size.to_string());
    assert_eq!(header(&headers, "tus-checksum-algorithm"), "md5,sha1,sha256,sha512");
}

#[actix_web::test]
async fn a_task_of_the_business_server_is_resumed_through_its_tus_url() {
    let app = spawn_app().await;
    let data = content(300_000, 5);
    let task = app.new_task("clip.mp4", &data).await;
    assert!(task.tus_url.contains(&format!("/api/upload/tus/{}?key=", task.task_id)), "{}", task.tus_url);
    let (status, headers, _) = head(&app, &task.tus_url).await;
    assert_eq!((status, header(&headers, "upload-offset"), header(&headers, "upload-length")), (200, "0", "300000"));
    assert_eq!(header(&headers, "cache-control"), "no-store");
    assert!(!header(&headers, "upload-expires").is_empty());
    // The first 100 000 bytes with a sha1 checksum, as tuspy sends them.
    let sha1 = sha1_header(&data[..100_000]);
    let (status, headers, body) = patch(&app, &task.tus_url, &data, 0, 100_000, &[("upload-checksum", &sha1)]).await;
    assert_eq!((status, header(&headers, "upload-offset")), (204, "100000"), "{}", text(&body));
    // A PATCH at another offset is refused and changes nothing.
    let (status, _, body) = patch(&app, &task.tus_url, &data, 50_000, 60_000, &[]).await;
    assert_eq!(status, 409);
    assert!(text(&body).contains("Upload-Offset 50000 is not the upload's offset 100000"), "{}", text(&body));
    // The rest, with an md5 checksum: the file is finished and stored.
    let md5 = format!("md5 {}", STANDARD.encode(<md5::Md5 as md5::Digest>::digest(&data[100_000..])));
    let (status, headers, _) =
        patch(&app, &task.tus_url, &data, 100_000, data.len(), &[("upload-checksum", &md5)]).await;
    assert_eq!((status, header(&headers, "upload-offset")), (204, "300000"));
    let callbacks = app.callbacks.wait_for(1).await;
    assert_eq!(callbacks[0].json["retCode"], "0");
    assert_eq!(callbacks[0].json["protocol"], "tus");
    assert_eq!(TestApp::stored_file(&callbacks[0]), data);
    assert_eq!(
        query(&app, "SELECT protocol, status FROM upload_tasks").await,
        vec![vec!["tus".to_string(), "finish".into()]]
    );
}

#[actix_web::test]
async fn a_checksum_mismatch_is_460_and_records_nothing() {
    let app = spawn_app().await;
    let data = content(10_000, 6);
    let task = app.new_task("a.bin", &data).await;
    let wrong = sha1_header(b"other bytes");
    let (status, headers, body) = patch(&app, &task.tus_url, &data, 0, 5_000, &[("upload-checksum", &wrong)]).await;
    assert_eq!(status, 460, "{}", text(&body));
    assert_eq!(header(&headers, "tus-resumable"), "1.0.0");
    assert!(text(&body).contains("sha1 checksum sent does not match bytes 0-4999"), "{}", text(&body));
    let (_, headers, _) = head(&app, &task.tus_url).await;
    assert_eq!(header(&headers, "upload-offset"), "0");
    assert_eq!(query(&app, "SELECT COUNT(*) FROM received_ranges").await, vec![vec!["0".to_string()]]);
    let unknown = patch(&app, &task.tus_url, &data, 0, 5_000, &[("upload-checksum", "crc32 AAAAAA==")]).await;
    assert_eq!(unknown.0, 400);
    assert!(text(&unknown.2).contains("md5,sha1,sha256"), "{}", text(&unknown.2));
}

#[actix_web::test]
async fn a_creation_with_a_grant_and_its_first_bytes_finishes_with_the_md5_it_computed() {
    let app = spawn_app().await;
    let data = content(70_000, 7);
    let claims = grant("photo.jpg", Some(data.len() as u64));
    let signed = claims.sign(TOKEN);
    let (status, headers, body) =
        create(&app, &signed, &[("upload-length", "70000"), OCTETS], data[..40_000].to_vec()).await;
    assert_eq!(status, 201, "{}", text(&body));
    assert_eq!(header(&headers, "upload-offset"), "40000");
    let location = header(&headers, "location").to_owned();
    assert!(location.starts_with(&app.base) && location.contains("?key="), "{location}");
    // The grant made one upload: a second creation with it is refused.
    let again = create(&app, &signed, &[("upload-length", "70000")], Vec::new()).await;
    assert_eq!(again.0, 401);
    assert!(text(&again.2).contains("was used for an upload already"), "{}", text(&again.2));
    let (status, headers, _) = patch(&app, &location, &data, 40_000, data.len(), &[]).await;
    assert_eq!((status, header(&headers, "upload-offset")), (204, "70000"));
    let callbacks = app.callbacks.wait_for(1).await;
    let callback = &callbacks[0].json;
    assert_eq!(
        (callback["retCode"].as_str(), callback["fileMd5"].as_str()),
        (Some("0"), Some(md5_hex(&data).as_str()))
    );
    assert_eq!((callback["userId"].as_str(), callback["data"]["album"].as_i64()), (Some("7"), Some(3)));
    assert!(callback["storePath"].as_str().unwrap().ends_with("/store/users/7/photo.jpg"), "{callback}");
    // Nor once that upload is finished, and the refused creation leaves no task.
    let after = create(&app, &signed, &[("upload-length", "70000")], Vec::new()).await;
    assert_eq!(after.0, 401);
    assert!(text(&after.2).contains("was used for an upload already"), "{}", text(&after.2));
    assert_eq!(
        query(&app, "SELECT file_md5, grant_id IS NOT NULL FROM upload_tasks").await,
        vec![vec![md5_hex(&data), "1".into()]]
    );
}

#[actix_web::test]
async fn creations_without_a_valid_grant_are_refused_and_record_nothing() {
    let app = spawn_app().await;
    let missing = app.request(Method::POST, "/api/upload/tus", &[TUS, ("upload-length", "10")]).await;
    assert_eq!(missing.0, 401);
    assert!(text(&missing.2).contains("Authorization: Bearer"), "{}", text(&missing.2));
    let foreign =
        create(&app, &grant("a.bin", Some(10)).sign("not-our-token"), &[("upload-length", "10")], Vec::new()).await;
    assert_eq!(foreign.0, 401);
    let mut expired = grant("a.bin", Some(10));
    expired.expires_at = now_secs() - 1;
    assert_eq!(create(&app, &expired.sign(TOKEN), &[("upload-length", "10")], Vec::new()).await.0, 401);
    let other_length =
        create(&app, &grant("a.bin", Some(10)).sign(TOKEN), &[("upload-length", "11")], Vec::new()).await;
    assert_eq!(other_length.0, 400);
    assert!(text(&other_length.2).contains("is not the 10 bytes the grant names"), "{}", text(&other_length.2));
    let mut escaping = grant("a.bin", Some(10));
    escaping.store_path = "../../etc/".into();
    assert_eq!(create(&app, &escaping.sign(TOKEN), &[("upload-length", "10")], Vec::new()).await.0, 403);
    let too_large = app.settings.max_file_size + 1;
    let huge =
        create(&app, &grant("a.bin", None).sign(TOKEN), &[("upload-length", &too_large.to_string())], Vec::new()).await;
    assert_eq!(huge.0, 413);
    assert_eq!(query(&app, "SELECT COUNT(*) FROM upload_tasks").await, vec![vec!["0".to_string()]]);
}

#[actix_web::test]
async fn a_deferred_length_is_declared_by_a_later_patch() {
    let app = spawn_app().await;
    let data = content(50_000, 8);
    let (status, headers, _) =
        create(&app, &grant("stream.log", None).sign(TOKEN), &[("upload-defer-length", "1")], Vec::new()).await;
    assert_eq!(status, 201);
    let location = header(&headers, "location").to_owned();
    let (_, headers, _) = head(&app, &location).await;
    assert_eq!((header(&headers, "upload-defer-length"), header(&headers, "upload-length")), ("1", ""));
    assert_eq!(patch(&app, &location, &data, 0, 20_000, &[]).await.0, 204);
    let (status, headers, _) = patch(&app, &location, &data, 20_000, data.len(), &[("upload-length", "50000")]).await;
    assert_eq!((status, header(&headers, "upload-offset")), (204, "50000"));
    let callbacks = app.callbacks.wait_for(1).await;
    assert_eq!(callbacks[0].json["fileSize"], 50_000);
    assert_eq!(TestApp::stored_file(&callbacks[0]), data);
}

#[actix_web::test]
async fn partial_uploads_sent_in_parallel_are_joined_by_the_final_one() {
    let app = spawn_app().await;
    let data = content(90_000, 9);
    let signed = grant("joined.bin", Some(data.len() as u64)).sign(TOKEN);
    let mut partials = Vec::new();
    for part in data.chunks(30_000) {
        let length = part.len().to_string();
        let (status, headers, body) =
            create(&app, &signed, &[("upload-concat", "partial"), ("upload-length", &length)], Vec::new()).await;
        assert_eq!(status, 201, "{}", text(&body));
        partials.push((header(&headers, "location").to_owned(), part.to_vec()));
    }
    // Sent in parallel, in any order.
    let sends = partials.iter().rev().map(|(url, part)| patch(&app, url, part, 0, part.len(), &[]));
    for (status, _, _) in futures_util::future::join_all(sends).await {
        assert_eq!(status, 204);
    }
    let (_, headers, _) = head(&app, &partials[0].0).await;
    assert_eq!(header(&headers, "upload-concat"), "partial");
    assert!(app.callbacks.callbacks().is_empty(), "a partial upload has no callback of its own");
    let urls: Vec<&str> = partials.iter().map(|(url, _)| url.as_str()).collect();
    let concat = format!("final;{}", urls.join(" "));
    let (status, headers, body) = create(&app, &signed, &[("upload-concat", &concat)], Vec::new()).await;
    assert_eq!(status, 201, "{}", text(&body));
    let (_, final_head, _) = head(&app, header(&headers, "location")).await;
    assert_eq!((header(&final_head, "upload-offset"), header(&final_head, "upload-concat")), ("90000", "final"));
    let callbacks = app.callbacks.wait_for(1).await;
    assert_eq!(TestApp::stored_file(&callbacks[0]), data);
    assert_eq!(callbacks.len(), 1);
    let partial_rows =
        query(&app, "SELECT status, joined_into IS NOT NULL FROM upload_tasks WHERE concat_role = 'partial'").await;
    assert_eq!(partial_rows, vec![vec!["finish".to_string(), "1".into()]; 3]);
    app.wait_for_empty_tmp_dir().await;
    // The grant is used: no more partials, and no second final.
    let late = create(&app, &signed, &[("upload-concat", "partial"), ("upload-length", "5")], Vec::new()).await;
    assert_eq!(late.0, 401);
}

#[actix_web::test]
async fn a_final_upload_of_unfinished_partials_is_refused() {
    let app = spawn_app().await;
    let signed = grant("j.bin", Some(20)).sign(TOKEN);
    let (_, headers, _) =
        create(&app, &signed, &[("upload-concat", "partial"), ("upload-length", "20")], Vec::new()).await;
    let concat = format!("final;{}", header(&headers, "location"));
    let (status, _, body) = create(&app, &signed, &[("upload-concat", &concat)], Vec::new()).await;
    assert_eq!(status, 400);
    assert!(text(&body).contains("has not received all its bytes"), "{}", text(&body));
}

#[actix_web::test]
async fn termination_cancels_the_task_and_its_url_is_gone() {
    let app = spawn_app().await;
    let data = content(1_000, 10);
    let task = app.new_task("a.bin", &data).await;
    let (status, _, _) = app.request(Method::DELETE, &task.tus_url, &[TUS]).await;
    assert_eq!(status, 204);
    assert_eq!(head(&app, &task.tus_url).await.0, 410);
    let (status, _, body) = patch(&app, &task.tus_url, &data, 0, 10, &[]).await;
    assert_eq!(status, 410, "{}", text(&body));
    assert_eq!(app.callbacks.wait_for(1).await[0].json["retCode"], "-3");
}

#[actix_web::test]
async fn protocol_refusals_get_their_tus_status_codes() {
    let app = spawn_app().await;
    let data = content(1_000, 11);
    let task = app.new_task("a.bin", &data).await;
    let no_version =
        app.request_with_body(Method::PATCH, &task.tus_url, &[OCTETS, ("upload-offset", "0")], data.clone()).await;
    assert_eq!((no_version.0, header(&no_version.1, "tus-version")), (412, "1.0.0"));
    let wrong_type = app
        .request_with_body(
            Method::PATCH,
            &task.tus_url,
            &[TUS, ("content-type", "text/plain"), ("upload-offset", "0")],
            data.clone(),
        )
        .await;
    assert_eq!(wrong_type.0, 415);
    assert!(text(&wrong_type.2).contains("application/offset+octet-stream"));
    let past_end = patch(&app, &task.tus_url, &[data.clone(), data.clone()].concat(), 0, 2_000, &[]).await;
    assert_eq!(past_end.0, 413);
    let wrong_key = task.tus_url.replace("key=", "key=0");
    assert_eq!(head(&app, &wrong_key).await.0, 404);
    app.set_state(&task, "pause").await.expect(200, "0");
    let paused = patch(&app, &task.tus_url, &data, 0, 1_000, &[]).await;
    assert_eq!(paused.0, 423);
    assert!(text(&paused.2).contains("paused"), "{}", text(&paused.2));
    assert_eq!(query(&app, "SELECT received_bytes FROM upload_tasks").await, vec![vec!["0".to_string()]]);
}

#[actix_web::test]
async fn with_check_tmp_md5_a_patch_needs_a_checksum() {
    let app = spawn_app_with(|s| s.check_tmp_md5 = true).await;
    let data = content(1_000, 12);
    let task = app.new_task("a.bin", &data).await;
    let (status, _, body) = patch(&app, &task.tus_url, &data, 0, 1_000, &[]).await;
    assert_eq!(status, 400);
    assert!(text(&body).contains("Upload-Checksum") && text(&body).contains("checkTmpMd5"), "{}", text(&body));
    let sha1 = sha1_header(&data);
    assert_eq!(patch(&app, &task.tus_url, &data, 0, 1_000, &[("upload-checksum", &sha1)]).await.0, 204);
}

#[actix_web::test]
async fn a_patch_cut_off_midway_keeps_the_bytes_that_came() {
    use std::io::Write;
    let app = spawn_app().await;
    let data = content(200_000, 13);
    let task = app.new_task("a.bin", &data).await;
    let (addr, path) = fupload_testkit::raw_http::split_url(&task.tus_url);
    let head_bytes = format!(
        "PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n\
         Upload-Offset: 0\r\nContent-Length: 200000\r\n\r\n"
    );
    let sent = data[..80_000].to_vec();
    actix_web::rt::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(head_bytes.as_bytes()).unwrap();
        stream.write_all(&sent).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
    })
    .await
    .unwrap();
    let mut offset = String::new();
    for _ in 0..100 {
        let (_, headers, _) = head(&app, &task.tus_url).await;
        offset = header(&headers, "upload-offset").to_owned();
        if offset == "80000" {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(offset, "80000", "the bytes before the break are kept");
    let (status, headers, _) = patch(&app, &task.tus_url, &data, 80_000, data.len(), &[]).await;
    assert_eq!((status, header(&headers, "upload-offset")), (204, "200000"));
    assert_eq!(TestApp::stored_file(&app.callbacks.wait_for(1).await[0]), data);
}

#[actix_web::test]
async fn a_content_length_past_any_file_is_refused_without_harm() {
    let app = spawn_app().await;
    let data = content(100, 14);
    let task = app.new_task("a.bin", &data).await;
    assert_eq!(patch(&app, &task.tus_url, &data, 0, 10, &[]).await.0, 204);
    let (addr, path) = fupload_testkit::raw_http::split_url(&task.tus_url);
    let request = format!(
        "PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n\
         Upload-Offset: 10\r\nContent-Length: {}\r\n\r\n",
        u64::MAX
    );
    let reply =
        actix_web::rt::task::spawn_blocking(move || fupload_testkit::raw_http::exchange(&addr, request.as_bytes()))
            .await
            .unwrap()
            .unwrap();
    assert!(reply.head_without_date().starts_with("HTTP/1.1 413"), "{}", reply.head_without_date());
    let (status, headers, _) = head(&app, &task.tus_url).await;
    assert_eq!((status, header(&headers, "upload-offset")), (200, "10"));
}

#[actix_web::test]
async fn the_patch_that_completes_a_file_with_another_md5_is_refused() {
    let app = spawn_app().await;
    let data = content(20_000, 15);
    let mut claims = grant("named.bin", Some(data.len() as u64));
    claims.file_md5 = Some(md5_hex(b"another file"));
    let (status, headers, _) = create(&app, &claims.sign(TOKEN), &[("upload-length", "20000")], Vec::new()).await;
    assert_eq!(status, 201);
    let location = header(&headers, "location").to_owned();
    let (status, _, body) = patch(&app, &location, &data, 0, data.len(), &[]).await;
    assert_eq!(status, 410, "{}", text(&body));
    assert!(text(&body).contains("md5 differed"), "{}", text(&body));
    assert_eq!(app.callbacks.wait_for(1).await[0].json["retCode"], "-2");
}
