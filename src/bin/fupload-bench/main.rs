//! fupload-bench: starts fupload-server as a child process and measures W1–W3 over loopback HTTP,
//! next to this machine's limits measured in the same run. See docs/PERFORMANCE.md.

mod client;
mod cpu;
mod limits;
mod server;
mod workloads;

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;

use client::{BenchClient, Upload};
use cpu::{CpuMark, CpuUse};
use server::{CallbackSink, ServerProcess};

const MIB: usize = 1 << 20;

#[derive(Parser)]
#[command(name = "fupload-bench")]
struct Args {
    /// Runs per workload; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// W1 file size in MiB.
    #[arg(long, default_value_t = 1024)]
    w1_mib: usize,
    /// W2 uploads at once, and the size of each in MiB.
    #[arg(long, default_value_t = 8)]
    w2_count: usize,
    #[arg(long, default_value_t = 128)]
    w2_mib: usize,
    /// W3 uploads, their size in KiB, and how many at once.
    #[arg(long, default_value_t = 500)]
    w3_count: usize,
    #[arg(long, default_value_t = 64)]
    w3_kib: usize,
    #[arg(long, default_value_t = 8)]
    w3_parallel: usize,
    /// Block size in MiB.
    #[arg(long, default_value_t = 8)]
    block_mib: usize,
    /// Received ranges for the expectBlocks timing.
    #[arg(long, default_value_t = 10_000)]
    ranges: usize,
    /// Scratch directory (on the file system under test).
    #[arg(long, default_value = "target/fupload-bench")]
    dir: PathBuf,
    /// The server binary; by default the one next to this binary.
    #[arg(long)]
    server: Option<PathBuf>,
    /// Empty the machine's page cache before each run (needs root; see docs/PERFORMANCE.md).
    #[arg(long)]
    drop_caches: bool,
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Deterministic bytes that do not compress.
fn generate(len: usize) -> Bytes {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    Bytes::from(data)
}

struct Figures {
    md5: Vec<f64>,
    md5_twice: Vec<f64>,
    write_fsync: Vec<f64>,
    w1: Vec<f64>,
    w1_finish_ms: Vec<f64>,
    w2: Vec<f64>,
    w3: Vec<f64>,
    /// CPU used by W1, W2, W3 in each run.
    cpu: [Vec<CpuUse>; 3],
    peak_rss_mib: Vec<f64>,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server_bin = server::server_binary(args.server.as_deref())?;
    // A directory of its own per invocation, away from files an earlier one deleted.
    let scratch = args.dir.join(std::process::id().to_string());
    std::fs::create_dir_all(&scratch)?;
    let block = args.block_mib * MIB;
    println!("{}", machine());
    println!("generating data and md5s ...");
    let w2_total = args.w2_count * args.w2_mib * MIB;
    let w3_total = args.w3_count * args.w3_kib * 1024;
    let pool = generate((args.w1_mib * MIB).max(w2_total).max(w3_total));
    let w1_data = pool.slice(..args.w1_mib * MIB);

    let mut figures = Figures {
        md5: vec![],
        md5_twice: vec![],
        write_fsync: vec![],
        w1: vec![],
        w1_finish_ms: vec![],
        w2: vec![],
        w3: vec![],
        cpu: [vec![], vec![], vec![]],
        peak_rss_mib: vec![],
    };
    let sink = CallbackSink::start()?;
    for run in 0..args.runs {
        // Names differ per run so that no create resumes an earlier task.
        let w1 = Upload::new(format!("w1-{run}.bin"), w1_data.clone(), block);
        let w2: Vec<Upload> = (0..args.w2_count)
            .map(|i| {
                Upload::new(
                    format!("w2-{run}-{i}.bin"),
                    pool.slice(i * args.w2_mib * MIB..(i + 1) * args.w2_mib * MIB),
                    block,
                )
            })
            .collect();
        let w3_size = args.w3_kib * 1024;
        let w3: Vec<Upload> = (0..args.w3_count)
            .map(|i| Upload::new(format!("w3-{run}-{i}.bin"), pool.slice(i * w3_size..(i + 1) * w3_size), block))
            .collect();

        if args.drop_caches {
            limits::drop_caches()?;
        }
        figures.md5.push(limits::md5_mb_s(&w1_data));
        figures.md5_twice.push(limits::md5_twice_mb_s(&w1_data));
        let run_dir = scratch.join(format!("run-{run}"));
        let server = ServerProcess::start(&server_bin, &run_dir, &sink.url, (block + MIB) as u64)?;
        limits::settle(&run_dir)?;
        figures.write_fsync.push(limits::write_fsync_mb_s(&run_dir.join("limit-write.bin"), &w1_data)?);
        let client = BenchClient::new(&server.base);
        limits::settle(&run_dir)?;
        let mark = CpuMark::now(server.pid());
        let one = workloads::w1(&client, &server, &w1).await.context("W1")?;
        figures.cpu[0].push(mark.used());
        workloads::verify_stored(&sink, &[one.task_id], &[&w1]).await?;
        limits::settle(&run_dir)?;
        let mark = CpuMark::now(server.pid());
        let (w2_speed, w2_tasks) = workloads::w2(&client, &w2).await.context("W2")?;
        figures.cpu[1].push(mark.used());
        workloads::verify_stored(&sink, &w2_tasks, &w2.iter().collect::<Vec<_>>()).await?;
        limits::settle(&run_dir)?;
        let mark = CpuMark::now(server.pid());
        let (w3_rate, w3_tasks) = workloads::w3(&client, &w3, args.w3_parallel).await.context("W3")?;
        figures.cpu[2].push(mark.used());
        workloads::verify_stored(&sink, &w3_tasks, &w3.iter().collect::<Vec<_>>()).await?;
        let peak = server.peak_rss_kib() as f64 / 1024.0;
        drop(server);
        limits::settle(&run_dir)?;
        limits::release_page_cache(&run_dir)?;
        println!(
            "run {}: W1 {:.0} MB/s (finish {:.1} ms), W2 {:.0} MB/s, W3 {:.0} uploads/s, peak RSS {:.1} MiB; md5 {:.0} MB/s (two states {:.0}), write+fsync {:.0} MB/s",
            run + 1, one.mb_s, one.finish_ms, w2_speed, w3_rate, peak, figures.md5[run], figures.md5_twice[run], figures.write_fsync[run]
        );
        for (name, used) in ["W1", "W2", "W3"].iter().zip(&figures.cpu) {
            let used = used[run];
            println!(
                "  {name} CPU: server {:.2} s, benchmark client {:.2} s, cores busy {:.2}",
                used.server_s, used.client_s, used.cores_busy
            );
        }
        figures.w1.push(one.mb_s);
        figures.w1_finish_ms.push(one.finish_ms);
        figures.w2.push(w2_speed);
        figures.w3.push(w3_rate);
        figures.peak_rss_mib.push(peak);
    }

    let server = ServerProcess::start(&server_bin, &scratch.join("ranges"), &sink.url, (block + MIB) as u64)?;
    let ranges_ms =
        workloads::expect_blocks_ms(&BenchClient::new(&server.base), &server, args.ranges).await.context("ranges")?;
    drop(server);
    sink.stop().await;
    std::fs::remove_dir_all(&scratch).ok();
    report(&args, &mut figures, ranges_ms);
    Ok(())
}

fn report(args: &Args, f: &mut Figures, (ranges_ms, ranges_server_ms): (f64, f64)) {
    let md5 = median(&mut f.md5);
    let write = median(&mut f.write_fsync);
    let (w1, w2, w3) = (median(&mut f.w1), median(&mut f.w2), median(&mut f.w3));
    println!("\nmedians of {} runs (MB = 10^6 bytes)\n", args.runs);
    println!("| figure | median | ratio to md5 limit | ratio to write+fsync limit |");
    println!("|---|---|---|---|");
    println!("| machine: md5 of the same bytes, one core | {md5:.0} MB/s | 1.00 | |");
    let twice = median(&mut f.md5_twice);
    println!(
        "| machine: md5 of the same bytes into two states at once, one core | {twice:.0} MB/s | {:.2} | |",
        twice / md5
    );
    println!("| machine: write+fsync in 256 KiB pieces | {write:.0} MB/s | | 1.00 |");
    println!(
        "| W1: one {} MiB file, sequential, to `finish` | {w1:.0} MB/s | {:.2} | {:.2} |",
        args.w1_mib,
        w1 / md5,
        w1 / write
    );
    println!(
        "| W2: {} concurrent uploads of {} MiB | {w2:.0} MB/s | {:.2} | {:.2} |",
        args.w2_count,
        args.w2_mib,
        w2 / md5,
        w2 / write
    );
    println!(
        "| W3: {} uploads of {} KiB, {} concurrent | {w3:.0} uploads/s | | |",
        args.w3_count, args.w3_kib, args.w3_parallel
    );
    for (name, used) in ["W1", "W2", "W3"].iter().zip(&f.cpu) {
        let mut server: Vec<f64> = used.iter().map(|u| u.server_s).collect();
        let mut client: Vec<f64> = used.iter().map(|u| u.client_s).collect();
        let mut busy: Vec<f64> = used.iter().map(|u| u.cores_busy).collect();
        println!(
            "| {name}: CPU seconds, server + benchmark client; cores busy | {:.2} + {:.2} s; {:.2} | | |",
            median(&mut server),
            median(&mut client),
            median(&mut busy)
        );
    }
    println!("| W1: last block → `finish` | {:.1} ms | | |", median(&mut f.w1_finish_ms));
    println!("| server peak RSS through W1–W3 | {:.1} MiB | | |", median(&mut f.peak_rss_mib));
    println!("| expectBlocks with {} received ranges: HTTP round trip | {ranges_ms:.2} ms | | |", args.ranges);
    println!("| expectBlocks with {} received ranges: server's own time | {ranges_server_ms:.2} ms | | |", args.ranges);
    println!(
        "\nall runs: W1 {:?} MB/s, W2 {:?} MB/s, W3 {:?} uploads/s, peak RSS {:?} MiB",
        rounded(&f.w1),
        rounded(&f.w2),
        rounded(&f.w3),
        rounded(&f.peak_rss_mib)
    );
}

fn rounded(values: &[f64]) -> Vec<u64> {
    values.iter().map(|v| v.round() as u64).collect()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("machine: {cores} cores, {cpu}, Linux {}", kernel.trim())
}
