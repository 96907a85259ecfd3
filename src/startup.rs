//! Builds the application: directories, database, recovery, HTTP server and background workers.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::callback;
use crate::config::Settings;
use crate::http;
use crate::service::Uploads;
use crate::store::Store;
use crate::telemetry::metrics;
use crate::tls::{self, ServerCert};

pub struct Application {
    port: u16,
    server: Server,
    uploads: Uploads,
    metrics: PrometheusHandle,
    /// What callbacks trust (the built-in roots and `callback.caFile`).
    callback_tls: Arc<rustls::ClientConfig>,
    /// `server.tls`'s certificate, when fupload serves https.
    server_cert: Option<Arc<ServerCert>>,
}

impl Application {
    /// Prepares everything and binds the listener (`server.port: 0` picks a free port).
    pub async fn build(mut settings: Settings) -> anyhow::Result<Self> {
        prepare_dirs(&mut settings)?;
        let callback_tls = tls::client_config(settings.callback.ca_file()).context("callback.caFile")?;
        let server_cert = match settings.server.tls.files() {
            Some((cert, key)) => Some(ServerCert::load(cert, key).context("server.tls")?),
            None => None,
        };
        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .with_context(|| format!("binding {}:{}", settings.server.host, settings.server.port))?;
        settings.server.port = listener.local_addr()?.port();
        // One reader connection per core: reads are short, and more of them only means more
        // threads to wake.
        let readers = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        let store = Store::open(&settings.database.url, settings.durability, readers)
            .await
            .with_context(|| format!("opening the database {}", settings.database.url))?;
        let uploads = Uploads::new(store, Arc::new(settings)).context("starting the background hashing threads")?;
        uploads.recover().await.map_err(|e| anyhow::anyhow!("recovering after restart: {e:?}"))?;
        let metrics = metrics::handle();
        let data = web::Data::new(uploads.clone());
        let metrics_data = web::Data::new(metrics.clone());
        let cors = uploads.settings().cors.clone();
        let limits = &uploads.settings().server;
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let http_server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(http::body_guard::fail_idle_bodies))
                .wrap(http::cors(&cors))
                .wrap(from_fn(http::cors::expose_tus_headers))
                .wrap(from_fn(http::observe::observe))
                .app_data(data.clone())
                .app_data(metrics_data.clone())
                .configure(http::configure)
        })
        // Signals are the binary's business (`stop_on_signals`): a library, or a test, that
        // builds an Application must not take over SIGINT for its whole process.
        .disable_signals()
        .shutdown_timeout(uploads.settings().shutdown_grace)
        .workers(workers)
        // actix counts connections per worker thread.
        .max_connections(limits.max_connections.div_ceil(workers))
        .client_request_timeout(Duration::from_secs_f64(limits.client_request_timeout))
        .keep_alive(Duration::from_secs_f64(limits.keep_alive));
        let server = match &server_cert {
            Some(cert) => http_server.listen_rustls_0_23(listener, cert.server_config()?)?,
            None => http_server.listen(listener)?,
        }
        .run();
        let port = uploads.settings().server.port;
        Ok(Self { port, server, uploads, metrics, callback_tls, server_cert })
    }

    /// `server.tls`'s certificate, to reload (on SIGHUP: `reload_on_sighup`).
    pub fn server_cert(&self) -> Option<Arc<ServerCert>> {
        self.server_cert.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (and so `run_until_stopped`) from elsewhere.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the server stops (signal or handle), with the callback outbox worker, the
    /// expiry sweeper and the metrics upkeep running beside it; then stops them and closes the
    /// database (the last connection to close checkpoints the WAL into the database file).
    ///
    /// A graceful stop lets requests in flight finish for `shutdownGrace` seconds; a block still
    /// arriving then is dropped unrecorded (its range is committed only after its whole body).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let settings = self.uploads.settings();
        let outbox = actix_web::rt::spawn(callback::run_outbox(
            self.uploads.store().clone(),
            settings.callback.clone(),
            self.callback_tls.clone(),
            self.uploads.outbox_wakeup(),
        ));
        let sweeper = actix_web::rt::spawn(sweep_expired(self.uploads.clone()));
        let upkeep = actix_web::rt::spawn(metrics::keep_up(self.metrics.clone()));
        let checkpoints = actix_web::rt::spawn(checkpoint_wal(self.uploads.store().clone()));
        let served = self.server.await;
        outbox.abort();
        sweeper.abort();
        upkeep.abort();
        checkpoints.abort();
        self.uploads.store().close().await;
        tracing::info!("stopped; the database is closed");
        served.context("HTTP server")
    }
}

/// Stops the server gracefully on the first SIGTERM or SIGINT, and at once on a second one.
pub fn stop_on_signals(server: ServerHandle) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    actix_web::rt::spawn(async move {
        let mut graceful = true;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if graceful {
                tracing::info!(signal = name, "shutting down: no new connections, requests in flight may finish");
            } else {
                tracing::warn!(signal = name, "second signal: stopping now");
            }
            // Not awaited: the server's own future reports when it has stopped.
            drop(server.stop(graceful));
            graceful = false;
        }
    });
    Ok(())
}

/// Reads `server.tls`'s files again on each SIGHUP; new connections get the new certificate, and
/// a pair that does not load leaves the old one in place (logged).
pub fn reload_on_sighup(cert: Arc<ServerCert>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    actix_web::rt::spawn(async move {
        while hup.recv().await.is_some() {
            match cert.reload() {
                Ok(()) => tracing::info!("SIGHUP: server.tls reloaded"),
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "SIGHUP: server.tls not reloaded, the old certificate stays"
                ),
            }
        }
    });
    Ok(())
}

/// Creates tmpDir and storeDir and makes them absolute, so stored paths do not depend on the
/// working directory of a later start.
fn prepare_dirs(settings: &mut Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.tmp_dir)
        .with_context(|| format!("creating tmpDir {}", settings.tmp_dir.display()))?;
    settings.tmp_dir = settings.tmp_dir.canonicalize()?;
    if settings.store_dir.as_os_str().is_empty() {
        tracing::warn!("storeDir is empty: business servers may store files at any absolute path");
    } else {
        std::fs::create_dir_all(&settings.store_dir)
            .with_context(|| format!("creating storeDir {}", settings.store_dir.display()))?;
        settings.store_dir = settings.store_dir.canonicalize()?;
    }
    Ok(())
}

/// Checkpoints SQLite's WAL four times a second, off the writer (see `store`), and shows its size.
async fn checkpoint_wal(store: Store) {
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.checkpoint().await {
            // PostgreSQL checkpoints by itself.
            None => return,
            Some(Ok(wal)) => metrics::set_wal_size(wal.wal_bytes),
            Some(Err(e)) => tracing::warn!(error = %e, "WAL checkpoint failed; the writer checkpoints by itself later"),
        }
    }
}

/// Expires idle tasks, looking a few times per `taskTimeout`; on a shared database, also takes on
/// the finishes of nodes that died.
async fn sweep_expired(uploads: Uploads) {
    let every = Duration::from_millis(uploads.settings().task_timeout.saturating_mul(250))
        .clamp(Duration::from_millis(250), Duration::from_secs(30));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match uploads.expire_idle_tasks().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired idle tasks"),
            Err(e) => tracing::error!(error = ?e, "expiry sweep failed"),
        }
        if let Err(e) = uploads.take_over_finishes().await {
            tracing::error!(error = ?e, "the sweep for finishes no node holds failed");
        }
    }
}
