//! Files to upload and clients to upload them with.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use fupload::client::{Client, ClientOptions, LocalFile, RetryPolicy, Silent, TaskCreator, TaskUrls};

use crate::helpers::{content, md5_hex, Callback, TestApp, TOKEN};
use crate::proxy::{spawn_behind_proxy, Proxy};

pub const USER: &str = "tester";

/// A file of `len` bytes of test data in `dir`.
pub fn write_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content(len, 9)).unwrap();
    path
}

/// A client that tries 4 times, quickly.
pub fn client() -> Client {
    let retry =
        RetryPolicy { attempts: 4, first_delay: Duration::from_millis(10), max_delay: Duration::from_millis(40) };
    Client::new(ClientOptions { retry, timeout: Duration::from_secs(30), ..ClientOptions::default() }, Rc::new(Silent))
}

/// Creates tasks on fupload (behind `server`, the proxy) directly with the test token.
pub fn creator(server: &str) -> TaskCreator {
    TaskCreator::Fupload {
        server: server.to_owned(),
        token: TOKEN.into(),
        user_id: USER.into(),
        store_path: "up/".into(),
    }
}

pub async fn open(path: &Path) -> LocalFile {
    LocalFile::open(path, None, &Silent).await.unwrap()
}

/// Waits for the task's callback and checks it reports the file stored with the right bytes.
pub async fn assert_stored(app: &TestApp, path: &Path) -> Callback {
    let callback = app.callbacks.wait_for(1).await.remove(0);
    assert_eq!(callback.json["retCode"], "0", "{}", callback.json);
    assert!(callback.signature_is_valid());
    let stored = TestApp::stored_file(&callback);
    assert_eq!(md5_hex(&stored), md5_hex(&std::fs::read(path).unwrap()), "stored and source md5");
    callback
}

/// fupload behind the proxy, a file of `len` bytes, a client and the file's task.
pub struct Scene {
    pub app: TestApp,
    pub proxy: Proxy,
    pub path: PathBuf,
    pub client: Client,
    pub file: LocalFile,
    pub task: TaskUrls,
    _dir: tempfile::TempDir,
}

pub async fn scene(name: &str, len: usize) -> Scene {
    let (app, proxy) = spawn_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), name, len);
    let client = client();
    let file = open(&path).await;
    let task = client.create_task(&creator(&proxy.url), &file).await.unwrap();
    Scene { app, proxy, path, client, file, task, _dir: dir }
}
