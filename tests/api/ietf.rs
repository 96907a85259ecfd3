//! The IETF resumable-upload draft on the tus URLs, at the interop versions real clients send:
//! creation, offset retrieval, appends and completion, the problem details of each refusal, and
//! `Repr-Digest` naming the whole file's md5.

use awc::http::header::HeaderMap;
use awc::http::Method;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use md5::Digest;

use crate::helpers::*;
use crate::tus::{grant, header, text};

const PARTIAL: (&str, &str) = ("content-type", "application/partial-upload");
const MISMATCHING_OFFSET: &str = "https://iana.org/assignments/http-problem-types#mismatching-upload-offset";
const COMPLETED_UPLOAD: &str = "https://iana.org/assignments/http-problem-types#completed-upload";
const INCONSISTENT_LENGTH: &str = "https://iana.org/assignments/http-problem-types#inconsistent-upload-length";

/// The request headers of `version` saying whether the request completes the upload: version 3
/// says `Upload-Incomplete`, the others `Upload-Complete`.
fn completeness(version: &'static str, complete: bool) -> [(&'static str, &'static str); 2] {
    let flag = |set: bool| if set { "?1" } else { "?0" };
    let completeness = match version {
        "3" => ("upload-incomplete", flag(!complete)),
        _ => ("upload-complete", flag(complete)),
    };
    [("upload-draft-interop-version", version), completeness]
}

async fn create(app: &TestApp, version: &'static str, complete: bool, extra: &[(&str, &str)], body: &[u8]) -> Answer {
    let signed = grant("draft.bin", None).sign(TOKEN);
    create_with(app, &signed, version, complete, extra, body).await
}

type Answer = (u16, HeaderMap, Vec<u8>);

async fn create_with(
    app: &TestApp,
    signed: &str,
    version: &'static str,
    complete: bool,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let bearer = format!("Bearer {signed}");
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend_from_slice(&completeness(version, complete));
    headers.extend_from_slice(extra);
    app.request_with_body(Method::POST, "/api/upload/tus", &headers, body.to_vec()).await
}

async fn append(app: &TestApp, url: &str, version: &'static str, complete: bool, offset: usize, body: &[u8]) -> Answer {
    let offset = offset.to_string();
    let mut headers = vec![PARTIAL, ("upload-offset", offset.as_str())];
    headers.extend_from_slice(&completeness(version, complete));
    app.request_with_body(Method::PATCH, url, &headers, body.to_vec()).await
}

fn problem(reply: &Answer) -> serde_json::Value {
    assert_eq!(header(&reply.1, "content-type"), "application/problem+json", "{}", text(&reply.2));
    serde_json::from_slice(&reply.2).unwrap_or_default()
}

fn md5_digest(data: &[u8]) -> String {
    format!("md5=:{}:", STANDARD.encode(md5::Md5::digest(data)))
}

#[actix_web::test]
async fn an_upload_is_created_resumed_and_completed_at_each_interop_version() {
    let app = spawn_app().await;
    for (round, version) in ["3", "5", "6", "8"].into_iter().enumerate() {
        let data = content(90_000, round as u8);
        let (status, headers, body) = create(&app, version, false, &[], &data[..30_000]).await;
        assert_eq!(status, 201, "version {version}: {}", text(&body));
        assert_eq!(header(&headers, "upload-draft-interop-version"), version);
        assert_eq!(header(&headers, "upload-offset"), "30000");
        assert!(header(&headers, "upload-limit").contains("max-size="), "{headers:?}");
        let location = header(&headers, "location").to_owned();
        assert!(location.starts_with(&app.base) && location.contains("?key="), "{location}");

        let (status, headers, _) = app.request(Method::HEAD, &location, &completeness(version, false)[..1]).await;
        assert_eq!((status, header(&headers, "upload-offset")), (204, "30000"), "version {version}");
        let incomplete = if version == "3" { ("upload-incomplete", "?1") } else { ("upload-complete", "?0") };
        assert_eq!(header(&headers, incomplete.0), incomplete.1, "version {version}");
        assert_eq!(header(&headers, "cache-control"), "no-store");

        let (status, headers, body) = append(&app, &location, version, false, 30_000, &data[30_000..60_000]).await;
        assert_eq!((status, header(&headers, "upload-offset")), (204, "60000"), "{}", text(&body));
        let (status, headers, body) = append(&app, &location, version, true, 60_000, &data[60_000..]).await;
        assert_eq!(status, 200, "version {version}: {}", text(&body));
        assert_eq!(header(&headers, "upload-offset"), "90000");
        assert_eq!(header(&headers, "repr-digest"), md5_digest(&data));

        let callbacks = app.callbacks.wait_for(round + 1).await;
        let callback = &callbacks[round].json;
        assert_eq!((callback["retCode"].as_str(), callback["protocol"].as_str()), (Some("0"), Some("ietf")));
        assert_eq!(callback["fileMd5"].as_str(), Some(md5_hex(&data).as_str()));
        assert_eq!(TestApp::stored_file(&callbacks[round]), data);
    }
    let rows = query(&app, "SELECT DISTINCT protocol, status FROM upload_tasks").await;
    assert_eq!(rows, vec![vec!["ietf".to_string(), "finish".into()]]);
}

#[actix_web::test]
async fn a_creation_that_completes_the_upload_stores_it_in_one_request() {
    let app = spawn_app().await;
    let data = content(40_000, 20);
    let digest = md5_digest(&data);
    let (status, headers, body) = create(&app, "8", true, &[("repr-digest", &digest)], &data).await;
    assert_eq!(status, 200, "{}", text(&body));
    assert_eq!((header(&headers, "upload-complete"), header(&headers, "repr-digest")), ("?1", digest.as_str()));
    let location = header(&headers, "location").to_owned();
    // The client did not hear the reply and completes again with no content: the same answer.
    let (status, headers, _) = append(&app, &location, "8", true, 40_000, &[]).await;
    assert_eq!((status, header(&headers, "upload-offset")), (200, "40000"));
    // More content for a completed upload is a problem of its own type.
    let more = append(&app, &location, "8", false, 40_000, b"more").await;
    assert_eq!(more.0, 400);
    assert_eq!(problem(&more)["type"], COMPLETED_UPLOAD);
    let callbacks = app.callbacks.wait_for(1).await;
    assert_eq!(callbacks[0].json["fileMd5"].as_str(), Some(md5_hex(&data).as_str()));
}

#[actix_web::test]
async fn a_repr_digest_the_file_does_not_match_fails_the_upload() {
    let app = spawn_app().await;
    let data = content(20_000, 21);
    let wrong = md5_digest(b"another file");
    let (status, headers, body) = create(&app, "6", false, &[("repr-digest", &wrong)], &data[..10_000]).await;
    assert_eq!(status, 201, "{}", text(&body));
    let location = header(&headers, "location").to_owned();
    let last = append(&app, &location, "6", true, 10_000, &data[10_000..]).await;
    assert_eq!(last.0, 410, "{}", text(&last.2));
    assert!(problem(&last)["detail"].as_str().unwrap_or("").contains("md5 differed"), "{}", text(&last.2));
    assert_eq!(app.callbacks.wait_for(1).await[0].json["retCode"], "-2");
    // A grant that names the md5 and a digest that names another are refused at creation.
    let mut claims = grant("named.bin", Some(data.len() as u64));
    claims.file_md5 = Some(md5_hex(&data));
    let refused = create_with(&app, &claims.sign(TOKEN), "6", true, &[("repr-digest", &wrong)], &data).await;
    assert_eq!(refused.0, 400, "{}", text(&refused.2));
    assert!(problem(&refused)["detail"].as_str().unwrap_or("").contains("Repr-Digest"), "{}", text(&refused.2));
}

#[actix_web::test]
async fn refusals_are_problem_details_with_the_drafts_types() {
    let app = spawn_app().await;
    let data = content(10_000, 22);
    let (_, headers, _) = create(&app, "8", false, &[], &data[..4_000]).await;
    let location = header(&headers, "location").to_owned();

    let mismatch = append(&app, &location, "8", false, 1_000, &data[1_000..2_000]).await;
    assert_eq!((mismatch.0, header(&mismatch.1, "upload-offset")), (409, "4000"));
    let body = problem(&mismatch);
    assert_eq!((body["type"].as_str(), body["expected-offset"].as_u64()), (Some(MISMATCHING_OFFSET), Some(4_000)));
    assert_eq!(body["provided-offset"], 1_000);

    let untyped = app
        .request_with_body(
            Method::PATCH,
            &location,
            &[("upload-draft-interop-version", "6"), ("upload-complete", "?0"), ("upload-offset", "4000")],
            data[4_000..5_000].to_vec(),
        )
        .await;
    assert_eq!(untyped.0, 415);
    assert!(problem(&untyped)["detail"].as_str().unwrap_or("").contains("application/partial-upload"));

    let unknown = app.request(Method::HEAD, &location, &[("upload-draft-interop-version", "2")]).await;
    assert_eq!(unknown.0, 400);
    let no_flag = app
        .request_with_body(
            Method::PATCH,
            &location,
            &[PARTIAL, ("upload-draft-interop-version", "8"), ("upload-offset", "4000")],
            data[4_000..5_000].to_vec(),
        )
        .await;
    assert_eq!(no_flag.0, 400);
    assert!(problem(&no_flag)["detail"].as_str().unwrap_or("").contains("Upload-Complete"));

    let longer = [PARTIAL, ("upload-length", "10001")];
    let mut headers = completeness("8", true).to_vec();
    headers.extend_from_slice(&longer);
    headers.push(("upload-offset", "4000"));
    let inconsistent = app.request_with_body(Method::PATCH, &location, &headers, data[4_000..].to_vec()).await;
    assert_eq!(inconsistent.0, 400);
    assert_eq!(problem(&inconsistent)["type"], INCONSISTENT_LENGTH);

    // None of it was recorded.
    assert_eq!(query(&app, "SELECT received_bytes FROM upload_tasks").await, vec![vec!["4000".to_string()]]);
    let no_grant = app.request_with_body(Method::POST, "/api/upload/tus", &completeness("8", true), data.clone()).await;
    assert_eq!(no_grant.0, 401);
    assert!(problem(&no_grant)["detail"].as_str().unwrap_or("").contains("Authorization: Bearer"));
}

#[actix_web::test]
async fn cancellation_ends_the_task_and_options_tell_the_limits() {
    let app = spawn_app().await;
    let (status, headers, _) = app.request(Method::OPTIONS, "/api/upload/tus", &[]).await;
    assert_eq!((status, header(&headers, "accept-patch")), (204, "application/partial-upload"));
    let limit = header(&headers, "upload-limit");
    assert!(limit.contains(&format!("max-size={}", app.settings.max_file_size)), "{limit}");
    assert!(limit.contains(&format!("max-append-size={}", app.settings.max_block_size)), "{limit}");

    let (_, headers, _) = create(&app, "6", false, &[], b"first bytes").await;
    let location = header(&headers, "location").to_owned();
    let (status, _, _) = app.request(Method::DELETE, &location, &[("upload-draft-interop-version", "6")]).await;
    assert_eq!(status, 204);
    assert_eq!(app.callbacks.wait_for(1).await[0].json["retCode"], "-3");
    let gone = app.request(Method::HEAD, &location, &[("upload-draft-interop-version", "6")]).await;
    assert_eq!(gone.0, 410);
}

#[actix_web::test]
async fn a_creation_whose_content_has_no_length_is_refused_not_taken_for_empty() {
    let app = spawn_app().await;
    let (addr, _) = fupload_testkit::raw_http::split_url(&app.base);
    for (protocol_headers, status) in [
        ("Upload-Draft-Interop-Version: 8\r\nUpload-Complete: ?1\r\n", "411"),
        ("Tus-Resumable: 1.0.0\r\nUpload-Defer-Length: 1\r\nContent-Type: application/offset+octet-stream\r\n", "411"),
    ] {
        // The whole file, chunked: were it taken for no content, the upload would finish empty.
        let request = format!(
            "POST /api/upload/tus HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\
             {protocol_headers}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            grant("chunked.bin", None).sign(TOKEN)
        );
        let addr = addr.clone();
        let reply =
            actix_web::rt::task::spawn_blocking(move || fupload_testkit::raw_http::exchange(&addr, request.as_bytes()))
                .await
                .unwrap()
                .unwrap();
        assert!(reply.head.starts_with(&format!("HTTP/1.1 {status}")), "{}", reply.head);
    }
    assert_eq!(query(&app, "SELECT COUNT(*) FROM upload_tasks").await, vec![vec!["0".to_string()]]);
}
