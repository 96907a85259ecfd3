//! `--postgres`: W2 on one node on SQLite, one node on PostgreSQL and `--nodes` nodes on one
//! PostgreSQL database and one directory, each upload's blocks sent to the nodes in turn as a
//! round-robin load balancer would. On one machine the figures say what the design costs, not
//! what it scales to: the database's transactions and statements per block, and the CPU seconds
//! per GB of the nodes and of PostgreSQL, from which the cost on other machines can be worked out.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::Connection;

use crate::client::{BenchClient, Upload};
use crate::cpu::{cpu_seconds_named, CpuMark};
use crate::server::{CallbackSink, ServerProcess};
use crate::{median, workloads, MIB};

/// A way to run fupload: how many nodes, on which database.
struct Setup {
    name: String,
    nodes: usize,
    postgres: bool,
}

/// A setup's figures over the runs.
#[derive(Default)]
struct Figures {
    w2_mb_s: Vec<f64>,
    server_cpu_s_per_gb: Vec<f64>,
    database_cpu_s_per_gb: Vec<f64>,
    transactions_per_block: Vec<f64>,
    statements_per_block: Vec<f64>,
}

/// The database's counters: transactions, and statements when pg_stat_statements is loaded.
async fn database_counters(url: &str) -> anyhow::Result<(f64, Option<f64>)> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let transactions: f64 = sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::FLOAT8 FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await?;
    let statements: Option<f64> = sqlx::query_scalar(
        "SELECT SUM(calls)::FLOAT8 FROM public.pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut conn)
    .await
    .ok()
    .flatten();
    conn.close().await?;
    Ok((transactions, statements))
}

/// What the comparison runs on.
pub struct Comparison<'a> {
    pub bin: &'a Path,
    pub scratch: &'a Path,
    pub sink: &'a CallbackSink,
    /// The PostgreSQL server's URL.
    pub postgres: &'a str,
    pub nodes: usize,
    pub runs: usize,
    pub block: usize,
}

/// Runs the comparison `runs` times, with the uploads `uploads_of_run` gives for each run, and
/// prints its table.
pub async fn compare(on: Comparison<'_>, uploads_of_run: impl Fn(usize) -> Vec<Upload>) -> anyhow::Result<()> {
    let Comparison { bin, scratch, sink, postgres, nodes, runs, block } = on;
    let setups = [
        Setup { name: "1 node, SQLite".into(), nodes: 1, postgres: false },
        Setup { name: "1 node, PostgreSQL".into(), nodes: 1, postgres: true },
        Setup { name: format!("{nodes} nodes, PostgreSQL, blocks in turn"), nodes, postgres: true },
    ];
    let mut figures: Vec<Figures> = setups.iter().map(|_| Figures::default()).collect();
    for run in 0..runs {
        let uploads = uploads_of_run(run);
        let bytes: usize = uploads.iter().map(|u| u.data.len()).sum();
        let blocks: usize = uploads.iter().map(|u| u.part_md5s.len()).sum();
        let gb = bytes as f64 / 1e9;
        // What ran just before changes the figures on this VM: the order turns with each run.
        for offset in 0..setups.len() {
            let which = (run + offset) % setups.len();
            let (setup, figures) = (&setups[which], &mut figures[which]);
            let dir = scratch.join(format!("nodes-{run}-{which}"));
            let database = match setup.postgres {
                true => Some(fupload::store::TempDatabase::create(postgres).await.context("a bench database")?),
                false => None,
            };
            sink.forget_all();
            let mut servers = Vec::new();
            for node in 0..setup.nodes {
                let max_block = (block + MIB) as u64;
                servers.push(match &database {
                    Some(database) => ServerProcess::start_node(
                        bin,
                        &dir.join(format!("node-{node}")),
                        &dir.join("shared"),
                        &database.url,
                        &sink.url,
                        max_block,
                    )?,
                    None => ServerProcess::start(bin, &dir, &sink.url, max_block)?,
                });
            }
            let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
            let client = BenchClient::spread_over(&bases, sink);
            let pids: Vec<u32> = servers.iter().map(ServerProcess::pid).collect();
            let counted = match &database {
                Some(database) => Some(database_counters(&database.url).await?),
                None => None,
            };
            let (mark, database_cpu) = (CpuMark::of_all(&pids), cpu_seconds_named("postgres"));
            let (w2_mb_s, done) = workloads::w2(&client, &uploads).await.context(setup.name.clone())?;
            let used = mark.used();
            figures.w2_mb_s.push(w2_mb_s);
            figures.server_cpu_s_per_gb.push(used.server_s / gb);
            if database.is_some() {
                figures.database_cpu_s_per_gb.push((cpu_seconds_named("postgres") - database_cpu) / gb);
            }
            workloads::verify_stored(&client, &done, &uploads).await?;
            println!(
                "  run {}: {}: W2 {w2_mb_s:.0} MB/s, server CPU {:.2} s, cores busy {:.2}",
                run + 1,
                setup.name,
                used.server_s,
                used.cores_busy
            );
            // The nodes gone, their database sessions end and PostgreSQL counts what they did.
            drop(servers);
            if let (Some(database), Some((transactions, statements))) = (&database, counted) {
                actix_web::rt::time::sleep(Duration::from_millis(500)).await;
                let (transactions_after, statements_after) = database_counters(&database.url).await?;
                figures.transactions_per_block.push((transactions_after - transactions) / blocks as f64);
                if let (Some(before), Some(after)) = (statements, statements_after) {
                    figures.statements_per_block.push((after - before) / blocks as f64);
                }
            }
            drop(database);
            std::fs::remove_dir_all(&dir).ok();
        }
    }
    println!("\nmedians of {runs} runs (MB = 10^6 bytes; blocks of {} MiB)\n", block / MIB);
    println!(
        "| setup | W2 | ÷ 1 node on SQLite | nodes' CPU s per GB | PostgreSQL's CPU s per GB | database transactions per block | statements per block |"
    );
    println!("|---|---|---|---|---|---|---|");
    let baseline = median(&mut figures[0].w2_mb_s.clone());
    for (setup, f) in setups.iter().zip(&mut figures) {
        let cell = |values: &mut Vec<f64>, decimals: usize| match values.is_empty() {
            true => "–".to_owned(),
            false => format!("{:.decimals$}", median(values)),
        };
        let w2 = median(&mut f.w2_mb_s);
        println!(
            "| {} | {w2:.0} MB/s | {:.2} | {} | {} | {} | {} |",
            setup.name,
            w2 / baseline,
            cell(&mut f.server_cpu_s_per_gb, 2),
            cell(&mut f.database_cpu_s_per_gb, 2),
            cell(&mut f.transactions_per_block, 1),
            cell(&mut f.statements_per_block, 1),
        );
    }
    Ok(())
}
