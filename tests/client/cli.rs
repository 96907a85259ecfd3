//! The `fupload-client` binary: Ctrl-C and resume, a paused task, and the task commands.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::helpers::TOKEN;
use crate::proxy::spawn_behind_proxy;
use crate::support::{assert_stored, client, creator, open, write_file, USER};

const BLOCK: u64 = 256 * 1024;

fn fupload_client(args: &[&str]) -> Command {
    #[expect(clippy::disallowed_methods, reason = "the test runs the fupload-client binary")]
    let mut command = Command::new(env!("CARGO_BIN_EXE_fupload-client"));
    command.args(args).env_remove("FUPLOAD_TOKEN").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// Runs the command to its end off the test's thread (the test's servers keep running).
async fn run(mut command: Command) -> Output {
    actix_web::rt::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The number that follows `before` in `text`.
fn number_after(text: &str, before: &str) -> u64 {
    let start = text.find(before).unwrap_or_else(|| panic!("no {before:?} in {text:?}")) + before.len();
    text[start..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn upload_args<'a>(path: &'a Path, server: &'a str) -> Vec<&'a str> {
    let path = path.to_str().unwrap();
    vec!["upload", path, "--server", server, "--token", TOKEN, "--user-id", USER, "--store-path", "up/"]
}

#[actix_web::test]
async fn ctrl_c_stops_the_upload_and_the_same_command_resumes_it() {
    let (app, proxy) = spawn_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "cli.bin", 12 * BLOCK as usize + 77);
    let mut args = upload_args(&path, &proxy.url);
    args.extend(["--block-size", "256KiB", "--parallel", "2", "--quiet"]);

    proxy.hold_after(4);
    let child = fupload_client(&args).spawn().unwrap();
    proxy.wait_until("4 blocks through and 2 held", |c| c.forwarded == 4 && c.held == 2).await;
    #[expect(clippy::disallowed_methods, reason = "Ctrl-C, as a shell sends it")]
    let interrupt = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(interrupt.success());
    let first = actix_web::rt::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    let stderr = text(&first.stderr);
    assert_eq!(first.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted") && stderr.contains("Run the same command again to resume"), "{stderr}");

    proxy.forward_new();
    let before = proxy.counts();
    let second = run(fupload_client(&args)).await;
    let stdout = text(&second.stdout);
    assert!(second.status.success(), "{stdout}{}", text(&second.stderr));
    let size = 12 * BLOCK + 77;
    let (sent, already) = (number_after(&stdout, "sent "), number_after(&stdout, "bytes in this run, "));
    assert_eq!((already, sent), (4 * BLOCK, size - 4 * BLOCK), "{stdout}");
    let after = proxy.counts();
    assert_eq!(after.forwarded - before.forwarded, 9, "the 9 missing blocks (the last one short), no more");
    assert!((sent..sent + 9 * 1024).contains(&(after.forwarded_bytes - before.forwarded_bytes)));
    assert_stored(&app, &path).await;
}

#[actix_web::test]
async fn a_paused_task_ends_the_upload_with_how_to_resume_it_and_the_task_commands_work() {
    let app = crate::helpers::spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "paused.bin", 1000);
    // The task the upload command will find again: same token, user, storePath, name, size, md5.
    let task = client().create_task(&creator(&app.base), &open(&path).await).await.unwrap();
    let key = task.state_url.split("key=").nth(1).unwrap();
    let id = task.task_id.to_string();
    let by_id =
        |command: &'static str| fupload_client(&[command, "--server", &app.base, "--task-id", &id, "--key", key]);

    let paused = run(by_id("pause")).await;
    assert_eq!(text(&paused.stdout), format!("task {id} is now pause\n"));
    let upload = run(fupload_client(&upload_args(&path, &app.base))).await;
    let stderr = text(&upload.stderr);
    assert_eq!(upload.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("task {id} is paused: resume it with `fupload-client resume --url")), "{stderr}");

    let status = run(fupload_client(&["status", "--url", &task.blocks_url])).await;
    assert_eq!(text(&status.stdout), format!("task {id}: pause\nreceived: 0 of 1000 bytes (0%)\nmissing: 0-999\n"));
    let resumed = run(fupload_client(&["resume", "--url", &task.state_url])).await;
    assert_eq!(text(&resumed.stdout), format!("task {id} is now upload\n"));

    let upload = run(fupload_client(&upload_args(&path, &app.base))).await;
    assert!(upload.status.success(), "{}", text(&upload.stderr));
    assert_eq!(number_after(&text(&upload.stdout), "finished task "), task.task_id as u64);
    assert_stored(&app, &path).await;
    let status = run(by_id("status")).await;
    assert!(text(&status.stdout).ends_with("received: 1000 of 1000 bytes (100%)\nmissing: nothing\n"));
    let cancel = run(fupload_client(&["cancel", "--url", &task.upload_url])).await;
    assert_eq!(cancel.status.code(), Some(1));
    assert!(text(&cancel.stderr).contains("retCode 11"), "{}", text(&cancel.stderr));
}

#[actix_web::test]
async fn fupload_client_uploads_over_https_with_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = fupload_testkit::tls::TestCa::new(dir.path(), "private");
    let issued = ca.issue(dir.path(), "fupload");
    let app = crate::helpers::spawn_app_with(move |s| {
        s.server.tls = fupload::config::TlsFiles { cert: issued.cert_file, key: issued.key_file };
        s.server.addr = "https://127.0.0.1".into();
    })
    .await;
    assert!(app.base.starts_with("https://"), "{}", app.base);
    let path = write_file(dir.path(), "secure.bin", 3 * BLOCK as usize + 5);
    let mut args = upload_args(&path, &app.base);
    args.extend(["--block-size", "256KiB", "--quiet"]);

    // The private CA is not among the built-in roots: refused, and the error says so.
    let mut refused = args.clone();
    refused.extend(["--retries", "0"]);
    let first = run(fupload_client(&refused)).await;
    let stderr = text(&first.stderr);
    assert!(!first.status.success(), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");

    let ca_file = ca.cert_file.to_str().unwrap();
    args.extend(["--ca-file", ca_file]);
    let second = run(fupload_client(&args)).await;
    assert!(second.status.success(), "{}{}", text(&second.stdout), text(&second.stderr));
    assert_stored(&app, &path).await;

    // The library with the same roots: a new task for the file, and its state, over https.
    let tls = fupload::client::TlsRoots::with_ca_file(&ca.cert_file).unwrap();
    let options = fupload::client::ClientOptions { tls, ..Default::default() };
    let library = fupload::client::Client::new(options, std::rc::Rc::new(fupload::client::Silent));
    let task = library.create_task(&creator(&app.base), &open(&path).await).await.unwrap();
    assert!(task.upload_url.starts_with("https://127.0.0.1:"), "{}", task.upload_url);
    assert_eq!(library.blocks_info(&task).await.unwrap().received_size, 0);
    let error = fupload::client::TlsRoots::with_ca_file(&path).expect_err("a file without certificates");
    assert!(error.to_string().contains("no CERTIFICATE"), "{error}");
}
