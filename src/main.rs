use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fupload::config::Settings;
use fupload::startup::{reload_on_sighup, stop_on_signals, Application};
use fupload::{health, telemetry};

/// fupload: resumable large-file upload server.
#[derive(Parser)]
#[command(name = "fupload-server", version)]
struct Args {
    /// The config file (YAML); `FUPLOAD__…` environment variables override its values.
    #[arg(short = 'c', long = "config", default_value = "conf/fupload.yml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Asks the server this config describes for `/healthz` and exits 0 if it answers 200
    /// (for container HEALTHCHECKs: the image needs no curl).
    Healthcheck,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let settings = Settings::load(&args.config, std::env::vars())?;
    match args.command {
        Some(Command::Healthcheck) => Ok(match health::probe(&settings.server, fupload::http::HEALTHZ_PATH) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unhealthy: {e:#}");
                ExitCode::FAILURE
            }
        }),
        None => {
            telemetry::init(settings.log.format);
            serve(settings)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[actix_web::main]
async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    stop_on_signals(app.handle())?;
    if let Some(cert) = app.server_cert() {
        reload_on_sighup(cert)?;
    }
    tracing::info!(port = app.port(), "fupload-server listening");
    app.run_until_stopped().await
}
