use std::path::PathBuf;

use clap::Parser;
use fupload::config::Settings;
use fupload::startup::Application;
use fupload::telemetry;

/// fupload: resumable large-file upload server.
#[derive(Parser)]
#[command(name = "fupload-server", version)]
struct Args {
    /// The config file (YAML); `FUPLOAD__…` environment variables override its values.
    #[arg(short = 'c', long = "config", default_value = "conf/fupload.yml")]
    config: PathBuf,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init();
    let settings = Settings::load(&args.config, std::env::vars())?;
    let app = Application::build(settings).await?;
    tracing::info!(port = app.port(), "fupload-server listening");
    app.run_until_stopped().await
}
