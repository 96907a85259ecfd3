//! The three roles in one command: `cargo run --release --example demo`.
//!
//! Starts fupload on temp dirs and the example business server on loopback, makes a 256 MiB
//! file, uploads it with the client library through the business server, interrupts the upload
//! half-way, resumes it (only the missing bytes are sent), and prints the callback the business
//! server received, the stored file's path and its md5 beside the source's.

// The example business server, as its own example builds it; its main() is not used here.
#[allow(dead_code)]
#[path = "business_server.rs"]
mod business_server;

use std::io::{BufWriter, IsTerminal, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use business_server::{serve, Business, CALLBACK_ROUTE, NEW_TASK_ROUTE};
use fupload::client::{
    upload, Client, ClientOptions, DisplayMode, LocalFile, Reporter, Silent, TaskCreator, UploadOptions, Uploaded,
};
use fupload::config::Settings;
use fupload::startup::Application;
use futures_util::future::{select, Either};
use serde_json::Value;

const TOKEN: &str = "demo-secret";
const DEMO_SIZE: u64 = 256 << 20;

fn main() -> anyhow::Result<()> {
    let display = if std::io::stderr().is_terminal() { DisplayMode::Bar } else { DisplayMode::Lines };
    let dir = tempfile::tempdir()?;
    let options = UploadOptions::default();
    actix_web::rt::System::new().block_on(async {
        let demo = run(dir.path(), DEMO_SIZE, options, display).await?;
        demo.print();
        anyhow::ensure!(demo.source_md5 == demo.stored_md5, "the stored file differs from the source");
        Ok(())
    })
}

/// What the demo saw.
struct Demo {
    interrupted_after: u64,
    resumed: Uploaded,
    /// The same file uploaded once more, by another user: finished by a proof.
    instant: Uploaded,
    instant_callback: Value,
    callback: Value,
    stored: PathBuf,
    source_md5: String,
    stored_md5: String,
}

impl Demo {
    fn print(&self) {
        let size = self.resumed.file_size;
        println!();
        println!("first run:  interrupted after sending {} of {size} bytes", self.interrupted_after);
        println!(
            "second run: found {} bytes on the server, sent {} bytes (the missing {}), task {} finished",
            self.resumed.already_received,
            self.resumed.sent_bytes,
            size - self.resumed.already_received,
            self.resumed.task.task_id
        );
        println!(
            "third run:  another user, the same file: task {} finished by an instant upload, sent {} bytes",
            self.instant.task.task_id, self.instant.sent_bytes
        );
        println!(
            "            its callback: \"instant\": {}, storePath {}",
            self.instant_callback["instant"], self.instant_callback["storePath"]
        );
        println!();
        println!("callback received by the business server (signature checked):");
        println!("{}", serde_json::to_string_pretty(&self.callback).unwrap_or_default());
        println!();
        println!("stored file: {}", self.stored.display());
        println!("md5 source:  {}", self.source_md5);
        println!("md5 stored:  {}", self.stored_md5);
        println!("{}", if self.source_md5 == self.stored_md5 { "equal" } else { "DIFFERENT" });
    }
}

/// The whole flow with a file of `size` bytes in `dir`.
async fn run(dir: &Path, size: u64, options: UploadOptions, display: DisplayMode) -> anyhow::Result<Demo> {
    let business_listener = TcpListener::bind("127.0.0.1:0")?;
    let business_address = business_listener.local_addr()?;
    let fupload = start_fupload(dir, &format!("http://{business_address}{CALLBACK_ROUTE}")).await?;
    let fupload_url = format!("http://127.0.0.1:{}", fupload.port());
    let fupload_handle = fupload.handle();
    let fupload_running = actix_web::rt::spawn(fupload.run_until_stopped());
    let business = Business::new(&fupload_url, TOKEN);
    let business_server = serve(business_listener, business.clone())?;
    let business_handle = business_server.handle();
    actix_web::rt::spawn(business_server);
    println!("fupload on {fupload_url}, data in {}", dir.display());
    println!("business server on http://{business_address}");

    let path = dir.join("demo.bin");
    make_file(&path, size)?;
    println!("made {} ({size} bytes)", path.display());
    let creator = TaskCreator::BusinessServer {
        create_url: format!("http://{business_address}{NEW_TASK_ROUTE}"),
        user_id: "demo".into(),
    };

    println!("\nfirst run: uploading, to be interrupted half-way");
    let (interrupted_after, task) = {
        let reporter = Rc::new(Reporter::new(display));
        let client = Client::new(ClientOptions::default(), reporter.clone());
        let file = LocalFile::open(&path, None, reporter.as_ref()).await?;
        let task = client.create_task(&creator, &file).await?;
        let half_sent = async {
            while client.sent_bytes() < size / 2 {
                actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let uploading = upload(&client, &task, &file, &options);
        if let Either::Left((outcome, _)) = select(std::pin::pin!(uploading), std::pin::pin!(half_sent)).await {
            anyhow::bail!("the upload ended before it was interrupted: {outcome:?}");
        }
        reporter.clear();
        (client.sent_bytes(), task)
    };
    println!("interrupted after sending {interrupted_after} bytes of task {}", task.task_id);

    println!("\nsecond run: the same upload again");
    let reporter = Rc::new(Reporter::new(display));
    let client = Client::new(ClientOptions::default(), reporter.clone());
    let file = LocalFile::open(&path, None, reporter.as_ref()).await?;
    let again = client.create_task(&creator, &file).await?;
    anyhow::ensure!(again == task, "the business server should hand back the same task");
    let resumed = upload(&client, &again, &file, &options).await?;
    reporter.clear();

    let callback = actix_web::rt::time::timeout(Duration::from_secs(30), business.callbacks.nth(0))
        .await
        .context("no callback within 30 s")?;
    let stored = PathBuf::from(callback["storePath"].as_str().context("the callback has no storePath")?);

    println!("\nthird run: the same file by another user, which the server holds already");
    let other_user = TaskCreator::BusinessServer {
        create_url: format!("http://{business_address}{NEW_TASK_ROUTE}"),
        user_id: "demo2".into(),
    };
    let task = client.create_task(&other_user, &file).await?;
    let instant = upload(&client, &task, &file, &options).await?;
    reporter.clear();
    let instant_callback = actix_web::rt::time::timeout(Duration::from_secs(30), business.callbacks.nth(1))
        .await
        .context("no second callback within 30 s")?;
    let stored_md5 = LocalFile::open(&stored, None, &Silent).await?.md5.to_string();
    business_handle.stop(true).await;
    fupload_handle.stop(true).await;
    fupload_running.await??;
    Ok(Demo {
        interrupted_after,
        resumed,
        instant,
        instant_callback,
        callback,
        stored,
        source_md5: file.md5.to_string(),
        stored_md5,
    })
}

/// fupload on a free loopback port, its database and files in `dir`, knowing one business server.
async fn start_fupload(dir: &Path, notify_url: &str) -> anyhow::Result<Application> {
    let yaml = format!(
        r#"
server: {{host: "127.0.0.1", port: 0, addr: "http://127.0.0.1"}}
database: {{url: "sqlite://{dir}/fupload.db"}}
tmpDir: "{dir}/tmp"
storeDir: "{dir}/store"
callback: {{initialBackoff: 0.2, maxBackoff: 2}}
bServer:
  {TOKEN}: {{name: "demo business server", notifyUrl: "{notify_url}"}}
"#,
        dir = dir.display()
    );
    Application::build(Settings::from_yaml(&yaml, std::iter::empty())?).await
}

/// `size` bytes that do not compress (xorshift), written in 1 MiB pieces.
fn make_file(path: &Path, size: u64) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = size;
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        let n = left.min(8) as usize;
        out.write_all(&bytes[..n])?;
        left -= n as u64;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn the_demo_stores_the_file_after_a_resume_and_calls_back() {
        let dir = tempfile::tempdir().unwrap();
        let size = 4 << 20;
        let demo = run(dir.path(), size, UploadOptions { block_size: 256 << 10, parallel: 4 }, DisplayMode::Quiet)
            .await
            .unwrap();
        assert_eq!(demo.stored_md5, demo.source_md5);
        assert!(demo.stored.ends_with("store/users/demo/demo.bin"), "{}", demo.stored.display());
        assert_eq!(demo.callback["retCode"], "0");
        assert_eq!(demo.callback["data"]["userId"], "demo");
        // Half was handed to the connections and at most 4 blocks of it were still in flight.
        assert!(demo.interrupted_after >= size / 2);
        let resumed = &demo.resumed;
        assert!(resumed.already_received >= size / 4);
        assert!(resumed.already_received + resumed.sent_bytes >= size);
        assert!(resumed.sent_bytes < size, "the second run did not send the whole file again");
        assert!(!resumed.instant);
        assert!(demo.instant.instant, "the third run is an instant upload");
        assert_eq!(demo.instant.sent_bytes, 0);
        assert_eq!(demo.instant_callback["instant"], true);
        let linked = demo.instant_callback["storePath"].as_str().unwrap();
        assert!(linked.ends_with("store/users/demo2/demo.bin"), "{linked}");
    }
}
