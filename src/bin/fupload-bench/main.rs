//! fupload-bench: starts fupload-server as a child process and measures W1–W3 over loopback HTTP,
//! next to this machine's limits measured in the same run. See docs/PERFORMANCE.md.

mod client;
mod cpu;
mod limits;
mod nodes;
mod server;
mod tus;
mod workloads;

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;

use client::{BenchClient, Upload, Uploader};
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
    /// A rustus binary (a tus server) to run the same workloads against, after fupload's in each
    /// run: `cargo install rustus --version 0.5.10 --locked --features hashers` (it checks each block's md5).
    #[arg(long)]
    rustus: Option<PathBuf>,
    /// Leave out fupload's tus endpoint (by default the workloads also run through it, tus-style).
    #[arg(long)]
    no_tus: bool,
    /// A PostgreSQL server (postgres://user@host:port/database, a role that may create schemas
    /// there): instead of the workloads above, W2 on one node on SQLite, one on PostgreSQL and
    /// `--nodes` on PostgreSQL (docs/SCALING.md).
    #[arg(long)]
    postgres: Option<String>,
    /// The nodes of the last setup of `--postgres`.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
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
    w1_finish_ms: Vec<f64>,
    fupload: Workloads,
    /// fupload through its tus endpoint.
    tus: Workloads,
    rustus: Workloads,
}

/// One server's figures over the runs.
#[derive(Default)]
struct Workloads {
    w1: Vec<f64>,
    w2: Vec<f64>,
    w3: Vec<f64>,
    /// CPU used by W1, W2, W3 in each run.
    cpu: [Vec<CpuUse>; 3],
    peak_rss_mib: Vec<f64>,
}

/// The uploads of one run.
struct RunUploads {
    w1: Upload,
    w2: Vec<Upload>,
    w3: Vec<Upload>,
}

impl RunUploads {
    fn all(&self) -> impl Iterator<Item = &Upload> {
        std::iter::once(&self.w1).chain(&self.w2).chain(&self.w3)
    }
}

/// A fresh fupload server in `dir`.
fn start_fupload(bin: &Path, dir: &Path, sink: &CallbackSink, block: usize) -> anyhow::Result<ServerProcess> {
    // A new server numbers its tasks from 1 again.
    sink.forget_all();
    ServerProcess::start(bin, dir, &sink.url, (block + MIB) as u64)
}

impl Workloads {
    /// Runs W1, W2, W3 against `server` through `client`, checking every stored file. Returns
    /// what W1's upload came to.
    async fn run(
        &mut self,
        client: &impl Uploader,
        server: &ServerProcess,
        uploads: &RunUploads,
        w3_parallel: usize,
        dir: &std::path::Path,
    ) -> anyhow::Result<client::Uploaded> {
        limits::settle(dir)?;
        let mark = CpuMark::now(server.pid());
        let (w1_speed, w1_done) = workloads::w1(client, &uploads.w1).await.context("W1")?;
        self.cpu[0].push(mark.used());
        workloads::verify_stored(client, std::slice::from_ref(&w1_done), [&uploads.w1]).await?;
        limits::settle(dir)?;
        let mark = CpuMark::now(server.pid());
        let (w2_speed, w2_done) = workloads::w2(client, &uploads.w2).await.context("W2")?;
        self.cpu[1].push(mark.used());
        workloads::verify_stored(client, &w2_done, &uploads.w2).await?;
        limits::settle(dir)?;
        let mark = CpuMark::now(server.pid());
        let (w3_rate, w3_done) = workloads::w3(client, &uploads.w3, w3_parallel).await.context("W3")?;
        self.cpu[2].push(mark.used());
        workloads::verify_stored(client, &w3_done, &uploads.w3).await?;
        self.w1.push(w1_speed);
        self.w2.push(w2_speed);
        self.w3.push(w3_rate);
        self.peak_rss_mib.push(server.peak_rss_kib() as f64 / 1024.0);
        Ok(w1_done)
    }

    /// The run's figures and CPU use, as one line each.
    fn print_run(&self, name: &str, run: usize) {
        println!(
            "  {name}: W1 {:.0} MB/s, W2 {:.0} MB/s, W3 {:.0} uploads/s, peak RSS {:.1} MiB",
            self.w1[run], self.w2[run], self.w3[run], self.peak_rss_mib[run]
        );
        for (workload, used) in ["W1", "W2", "W3"].iter().zip(&self.cpu) {
            let used = used[run];
            println!(
                "    {workload} CPU: server {:.2} s, benchmark client {:.2} s, cores busy {:.2}; \
                 machine: iowait {:.2} s, stolen by the host {:.2} s",
                used.server_s, used.client_s, used.cores_busy, used.iowait_s, used.stolen_s
            );
        }
    }
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
    let w2_uploads = |run: usize| -> Vec<Upload> {
        (0..args.w2_count)
            .map(|i| {
                let data = pool.slice(i * args.w2_mib * MIB..(i + 1) * args.w2_mib * MIB);
                Upload::new(format!("w2-{run}-{i}.bin"), data, block)
            })
            .collect()
    };
    if let Some(postgres) = &args.postgres {
        let sink = CallbackSink::start()?;
        let on = nodes::Comparison {
            bin: &server_bin,
            scratch: &scratch,
            sink: &sink,
            postgres,
            nodes: args.nodes,
            runs: args.runs,
            block,
        };
        nodes::compare(on, w2_uploads).await?;
        sink.stop().await;
        std::fs::remove_dir_all(&scratch).ok();
        return Ok(());
    }

    let mut figures = Figures {
        md5: vec![],
        md5_twice: vec![],
        write_fsync: vec![],
        w1_finish_ms: vec![],
        fupload: Workloads::default(),
        tus: Workloads::default(),
        rustus: Workloads::default(),
    };
    let sink = CallbackSink::start()?;
    for run in 0..args.runs {
        // Names differ per run so that no create resumes an earlier task.
        let w3_size = args.w3_kib * 1024;
        let uploads = RunUploads {
            w1: Upload::new(format!("w1-{run}.bin"), w1_data.clone(), block),
            w2: w2_uploads(run),
            w3: (0..args.w3_count)
                .map(|i| Upload::new(format!("w3-{run}-{i}.bin"), pool.slice(i * w3_size..(i + 1) * w3_size), block))
                .collect(),
        };

        if args.drop_caches {
            limits::drop_caches()?;
        }
        figures.md5.push(limits::md5_mb_s(&w1_data));
        figures.md5_twice.push(limits::md5_twice_mb_s(&w1_data));
        let run_dir = scratch.join(format!("run-{run}"));
        std::fs::create_dir_all(&run_dir)?;
        limits::settle(&run_dir)?;
        figures.write_fsync.push(limits::write_fsync_mb_s(&run_dir.join("limit-write.bin"), &w1_data)?);
        limits::release_page_cache(&run_dir)?;
        // Each on a server of its own, which of the two goes first alternating: on this VM what
        // ran just before changes the figures.
        let mut via_tus_order = vec![false];
        if !args.no_tus {
            via_tus_order.insert(run % 2, true);
        }
        for via_tus in via_tus_order {
            let dir = run_dir.join(if via_tus { "tus" } else { "fupload" });
            let server = start_fupload(&server_bin, &dir, &sink, block)?;
            if via_tus {
                let client = tus::TusClient::fupload(&server.base, &sink, uploads.all())?;
                client.check_it_verifies_checksums().await?;
                let running = figures.tus.run(&client, &server, &uploads, args.w3_parallel, &run_dir);
                running.await.context("fupload via tus")?;
            } else {
                let client = BenchClient::new(&server.base, &sink);
                let w1_done = figures.fupload.run(&client, &server, &uploads, args.w3_parallel, &run_dir).await?;
                let finish_ms = server.finish_ms(&w1_done.id).context("no finish_ms in the server log")?;
                figures.w1_finish_ms.push(finish_ms);
            }
            // The next server starts with the same free memory: the last one's files left in the
            // page cache change how much server CPU its W1 takes.
            drop(server);
            limits::settle(&dir)?;
            limits::release_page_cache(&dir)?;
        }
        println!(
            "run {}: md5 {:.0} MB/s (two states {:.0}), write+fsync {:.0} MB/s; W1 last block → finish {:.1} ms",
            run + 1,
            figures.md5[run],
            figures.md5_twice[run],
            figures.write_fsync[run],
            figures.w1_finish_ms[run]
        );
        figures.fupload.print_run("fupload", run);
        if !args.no_tus {
            figures.tus.print_run("fupload via tus", run);
        }
        if let Some(rustus) = &args.rustus {
            let dir = run_dir.join("rustus");
            // As the issue ran it: `--max-body-size 16777216` (or a whole block, if larger).
            let server = tus::start_rustus(rustus, &dir, (block + MIB).max(16 << 20) as u64)?;
            let client = tus::TusClient::rustus(&server.base, &dir);
            client.check_it_verifies_checksums().await?;
            figures.rustus.run(&client, &server, &uploads, args.w3_parallel, &dir).await.context("rustus")?;
            figures.rustus.print_run("rustus", run);
            limits::settle(&dir)?;
            limits::release_page_cache(&dir)?;
        }
    }

    let server = ServerProcess::start(&server_bin, &scratch.join("ranges"), &sink.url, (block + MIB) as u64)?;
    let ranges_ms = workloads::expect_blocks_ms(&BenchClient::new(&server.base, &sink), &server, args.ranges)
        .await
        .context("ranges")?;
    drop(server);
    sink.stop().await;
    std::fs::remove_dir_all(&scratch).ok();
    report(&args, &mut figures, ranges_ms);
    Ok(())
}

/// The columns beside fupload's own protocol: fupload via tus and rustus, those that ran.
struct Peers {
    tus: bool,
    rustus: bool,
}

impl Peers {
    fn head(&self) -> (String, String) {
        let mut head = String::new();
        if self.tus {
            head += " fupload via tus | tus ÷ fupload |";
        }
        if self.rustus {
            head += " rustus | fupload ÷ rustus |";
        }
        if self.tus && self.rustus {
            head += " tus ÷ rustus |";
        }
        let rule = "---|".repeat(head.matches('|').count());
        (head, rule)
    }

    /// Empty cells for a row of fupload's alone.
    fn blank(&self) -> String {
        " |".repeat(self.head().0.matches('|').count())
    }

    /// The peers' figures (with `decimals`) and the ratios between them and fupload's `ours`.
    fn cells(&self, ours: f64, tus: f64, rustus: f64, unit: &str, decimals: usize) -> String {
        let mut cells = String::new();
        if self.tus {
            cells += &format!(" {tus:.decimals$} {unit} | {:.2} |", tus / ours);
        }
        if self.rustus {
            cells += &format!(" {rustus:.decimals$} {unit} | {:.2} |", ours / rustus);
        }
        if self.tus && self.rustus {
            cells += &format!(" {:.2} |", tus / rustus);
        }
        cells
    }

    /// The peers' CPU seconds.
    fn cpu_cells(&self, tus: &[CpuUse], rustus: &[CpuUse]) -> String {
        let mut cells = String::new();
        let cpu = |used: &[CpuUse]| {
            let (server, client, busy) = cpu_medians(used);
            format!(" {server:.2} + {client:.2} s; {busy:.2} | |")
        };
        if self.tus {
            cells += &cpu(tus);
        }
        if self.rustus {
            cells += &cpu(rustus);
        }
        if self.tus && self.rustus {
            cells += " |";
        }
        cells
    }
}

fn report(args: &Args, f: &mut Figures, (ranges_ms, ranges_server_ms): (f64, f64)) {
    let md5 = median(&mut f.md5);
    let write = median(&mut f.write_fsync);
    let twice = median(&mut f.md5_twice);
    let peers = Peers { tus: !f.tus.w1.is_empty(), rustus: !f.rustus.w1.is_empty() };
    println!("\nmedians of {} runs (MB = 10^6 bytes)\n", args.runs);
    let (peer_head, peer_rule) = peers.head();
    println!("| figure | fupload | ratio to md5 limit | ratio to write+fsync limit |{peer_head}");
    println!("|---|---|---|---|{peer_rule}");
    let blank = peers.blank();
    println!("| machine: md5 of the same bytes, one core | {md5:.0} MB/s | 1.00 | |{blank}");
    println!(
        "| machine: md5 of the same bytes into two states, a thread each | {twice:.0} MB/s | {:.2} | |{blank}",
        twice / md5
    );
    println!("| machine: write+fsync in 256 KiB pieces | {write:.0} MB/s | | 1.00 |{blank}");
    let workloads = [
        (format!("W1: one {} MiB file, sequential, to `finish`", args.w1_mib), "MB/s", true),
        (format!("W2: {} concurrent uploads of {} MiB", args.w2_count, args.w2_mib), "MB/s", true),
        (
            format!("W3: {} uploads of {} KiB, {} concurrent", args.w3_count, args.w3_kib, args.w3_parallel),
            "uploads/s",
            false,
        ),
    ];
    let ours = [&mut f.fupload.w1, &mut f.fupload.w2, &mut f.fupload.w3];
    let tus = [&mut f.tus.w1, &mut f.tus.w2, &mut f.tus.w3];
    let rustus = [&mut f.rustus.w1, &mut f.rustus.w2, &mut f.rustus.w3];
    for ((((name, unit, ratios), ours), tus), rustus) in workloads.iter().zip(ours).zip(tus).zip(rustus) {
        let value = median(ours);
        let limits = match ratios {
            true => format!("{:.2} | {:.2}", value / md5, value / write),
            false => " | ".to_owned(),
        };
        let peer = peers.cells(value, median(tus), median(rustus), unit, 0);
        println!("| {name} | {value:.0} {unit} | {limits} |{peer}");
    }
    for (i, name) in ["W1", "W2", "W3"].iter().enumerate() {
        let (server, client, busy) = cpu_medians(&f.fupload.cpu[i]);
        let peer = peers.cpu_cells(&f.tus.cpu[i], &f.rustus.cpu[i]);
        println!(
            "| {name}: CPU seconds, server + benchmark client; cores busy | {server:.2} + {client:.2} s; {busy:.2} | | |{peer}"
        );
    }
    println!("| W1: last block → `finish` | {:.1} ms | | |{blank}", median(&mut f.w1_finish_ms));
    let rss = median(&mut f.fupload.peak_rss_mib);
    let peer = peers.cells(rss, median(&mut f.tus.peak_rss_mib), median(&mut f.rustus.peak_rss_mib), "MiB", 1);
    println!("| server peak RSS through W1–W3 | {rss:.1} MiB | | |{peer}");
    println!("| expectBlocks with {} received ranges: HTTP round trip | {ranges_ms:.2} ms | | |{blank}", args.ranges);
    println!(
        "| expectBlocks with {} received ranges: server's own time | {ranges_server_ms:.2} ms | | |{blank}",
        args.ranges
    );
    for (name, w) in [("fupload", &f.fupload), ("fupload via tus", &f.tus), ("rustus", &f.rustus)] {
        if !w.w1.is_empty() {
            println!(
                "\n{name}, all runs: W1 {:?} MB/s, W2 {:?} MB/s, W3 {:?} uploads/s, peak RSS {:?} MiB",
                rounded(&w.w1),
                rounded(&w.w2),
                rounded(&w.w3),
                rounded(&w.peak_rss_mib)
            );
        }
    }
}

/// Medians of server CPU seconds, client CPU seconds and cores busy.
fn cpu_medians(used: &[CpuUse]) -> (f64, f64, f64) {
    let mut server: Vec<f64> = used.iter().map(|u| u.server_s).collect();
    let mut client: Vec<f64> = used.iter().map(|u| u.client_s).collect();
    let mut busy: Vec<f64> = used.iter().map(|u| u.cores_busy).collect();
    (median(&mut server), median(&mut client), median(&mut busy))
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
