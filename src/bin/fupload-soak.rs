//! fupload-soak: a bounded load run. Starts fupload-server as a child process on loopback, runs
//! many clients at once for a while (mostly small uploads, some large ones), then checks every
//! stored file byte for byte and reports errors, lost bytes and the server's memory (VmRSS at the
//! start, VmHWM at the peak, VmRSS at the end). See docs/RELIABILITY.md.

#[path = "fupload-bench/client.rs"]
#[allow(dead_code)]
mod client;
#[path = "fupload-bench/server.rs"]
#[allow(dead_code)]
mod server;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use sha2::{Digest, Sha256};

use client::{hex_md5, BenchClient, Upload, Uploader};
use server::{CallbackSink, ServerProcess};

const MIB: usize = 1 << 20;

#[derive(Parser)]
#[command(name = "fupload-soak")]
struct Args {
    /// Clients uploading at once.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// How long the load runs, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// One upload in this many is large.
    #[arg(long, default_value_t = 50)]
    large_every: u64,
    /// Largest small upload in KiB, and the size of a large one in MiB.
    #[arg(long, default_value_t = 256)]
    small_kib: usize,
    #[arg(long, default_value_t = 16)]
    large_mib: usize,
    /// Block size in MiB.
    #[arg(long, default_value_t = 1)]
    block_mib: usize,
    /// Scratch directory.
    #[arg(long, default_value = "target/fupload-soak")]
    dir: PathBuf,
    /// The server binary; by default the one next to this binary.
    #[arg(long)]
    server: Option<PathBuf>,
}

/// Bytes that do not repeat or compress: SHA-256 in counter mode.
fn pool(len: usize) -> Bytes {
    let mut data = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while data.len() < len {
        data.extend_from_slice(&Sha256::digest(counter.to_le_bytes()));
        counter += 1;
    }
    data.truncate(len);
    Bytes::from(data)
}

/// What the clients did.
#[derive(Default)]
struct Tally {
    small: Cell<usize>,
    large: Cell<usize>,
    bytes: Cell<usize>,
    errors: RefCell<Vec<String>>,
    /// Finished uploads, to check once the load is over.
    finished: RefCell<Vec<(String, String, usize)>>,
}

/// One client: uploads one file after another until `until`, each a slice of `pool` at an offset
/// of its own (so every file differs).
async fn client_loop(id: usize, args: Rc<Args>, client: BenchClient, pool: Bytes, tally: Rc<Tally>, until: Instant) {
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let seed = u64::from_le_bytes(Sha256::digest(format!("{id}-{n}"))[..8].try_into().unwrap_or_default());
        let large = seed % args.large_every == 0;
        let size = if large { args.large_mib * MIB } else { 1 + (seed >> 8) as usize % (args.small_kib * 1024) };
        let offset = (seed >> 24) as usize % (pool.len() - size);
        let upload = Upload::new(format!("soak-{id}-{n}.bin"), pool.slice(offset..offset + size), args.block_mib * MIB);
        match client.upload(&upload).await {
            Ok(done) if done.complete => {
                let counter = if large { &tally.large } else { &tally.small };
                counter.set(counter.get() + 1);
                tally.bytes.set(tally.bytes.get() + size);
                tally.finished.borrow_mut().push((done.id, upload.md5.clone(), size));
            }
            Ok(done) => {
                tally.errors.borrow_mut().push(format!("{}: task {} ended {}", upload.name, done.id, done.status))
            }
            Err(e) => tally.errors.borrow_mut().push(format!("{}: {e:#}", upload.name)),
        }
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Rc::new(Args::parse());
    let server_bin = server::server_binary(args.server.as_deref())?;
    let pool = pool((args.large_mib * MIB).max(64 * MIB) + args.small_kib * 1024);
    let sink = CallbackSink::start()?;
    let dir = args.dir.join(std::process::id().to_string());
    let server = ServerProcess::start(&server_bin, &dir, &sink.url, (args.block_mib * MIB) as u64)?;
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    let rss_start = server.status_field("VmRSS:").unwrap_or(0);
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let tally = Rc::new(Tally::default());
    let clients: Vec<_> = (0..args.clients)
        .map(|id| {
            let client = BenchClient::new(&server.base, &sink);
            actix_web::rt::spawn(client_loop(id, args.clone(), client, pool.clone(), tally.clone(), until))
        })
        .collect();
    let mut rss_samples = Vec::new();
    while Instant::now() < until {
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        rss_samples.push(server.status_field("VmRSS:").unwrap_or(0));
    }
    for client in clients {
        client.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_peak = server.peak_rss_kib();
    // Every finished file, byte for byte (by md5), as the callback names it.
    let (mut verified, mut lost_bytes) = (0, 0);
    let finished = tally.finished.take();
    let checker = BenchClient::new(&server.base, &sink);
    for (task_id, md5, size) in &finished {
        match checker.stored_path_within(task_id, Duration::from_secs(30)).await.map(std::fs::read) {
            Ok(Ok(stored)) if hex_md5(&stored) == *md5 => verified += 1,
            _ => lost_bytes += size,
        }
    }
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    let rss_end = server.status_field("VmRSS:").unwrap_or(0);
    drop(server);
    sink.stop().await;
    std::fs::remove_dir_all(&dir).ok();

    let errors = tally.errors.borrow();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "{} clients for {elapsed:.0} s: {} small + {} large uploads finished ({:.0} MB, {:.1} MB/s, {:.0} uploads/s)",
        args.clients,
        tally.small.get(),
        tally.large.get(),
        tally.bytes.get() as f64 / 1e6,
        tally.bytes.get() as f64 / 1e6 / elapsed,
        (tally.small.get() + tally.large.get()) as f64 / elapsed,
    );
    println!("errors: {}; files verified: {verified}; lost bytes: {lost_bytes}", errors.len());
    println!(
        "server RSS: start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB (after 3 s idle); samples every second: min {:.1}, max {:.1} MiB",
        mib(rss_start),
        mib(rss_peak),
        mib(rss_end),
        mib(rss_samples.iter().copied().min().unwrap_or(0)),
        mib(rss_samples.iter().copied().max().unwrap_or(0)),
    );
    let every_10s: Vec<String> = rss_samples.iter().step_by(10).map(|kib| format!("{:.0}", mib(*kib))).collect();
    println!("server RSS every 10 s under load (MiB): {}", every_10s.join(" "));
    for error in errors.iter().take(10) {
        println!("  error: {error}");
    }
    anyhow::ensure!(errors.is_empty() && lost_bytes == 0, "the soak saw errors or lost bytes");
    Ok(())
}
