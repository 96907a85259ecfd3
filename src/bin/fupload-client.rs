//! fupload-client: uploads a file to fupload — resumable, in parallel blocks — and shows,
//! pauses, resumes or cancels a task. The work is done by `fupload::client`.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use fupload::client::{
    upload, Client, ClientError, ClientOptions, DisplayMode, LocalFile, Reporter, RetryPolicy, Silent, TaskCreator,
    TaskUrls, TlsRoots, UploadOptions, WantedState,
};

/// Uploads files to fupload, resumably and in parallel blocks.
///
/// Run an interrupted upload again with the same arguments: the same task is found again and
/// only the bytes the server is missing are sent.
#[derive(Parser)]
#[command(name = "fupload-client", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload FILE: create (or find again) its task, send what the server is missing, wait until
    /// the task is `finish`. Exit status 0 only then; 1 on failure, 2 for bad arguments, 130 when
    /// interrupted.
    Upload(UploadArgs),
    /// Show a task's status, how much is received and what is missing.
    Status(TaskArgs),
    /// Pause a task: its blocks are refused until it is resumed.
    Pause(TaskArgs),
    /// Resume a paused task.
    Resume(TaskArgs),
    /// Cancel a task: the server deletes what it received.
    Cancel(TaskArgs),
}

#[derive(Args)]
#[command(group(ArgGroup::new("creator").required(true).args(["create_url", "server"])))]
struct UploadArgs {
    file: PathBuf,
    /// A business server's create URL; it is POSTed {userId, fileName, fileSize, fileMd5}.
    #[arg(long, value_name = "URL")]
    create_url: Option<String>,
    /// fupload's base URL, to create the task there directly (with --token).
    #[arg(long, value_name = "URL", requires = "token")]
    server: Option<String>,
    /// A business server's token from fupload's config (with --server).
    #[arg(long, env = "FUPLOAD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where fupload stores the file: a directory under its storeDir (with --server).
    #[arg(long, value_name = "DIR", default_value = "")]
    store_path: String,
    #[arg(long, value_name = "ID", default_value = "fupload-client")]
    user_id: String,
    /// The name to store the file under [default: FILE's name].
    #[arg(long, value_name = "NAME")]
    file_name: Option<String>,
    /// Bytes per block: a number, or with K, KiB, M, MiB, G or GiB.
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_size)]
    block_size: u64,
    /// Blocks in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    parallel: u16,
    /// No progress display.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    network: NetworkArgs,
}

#[derive(Args)]
#[command(group(ArgGroup::new("task").required(true).args(["url", "server"])))]
struct TaskArgs {
    /// Any one of the task's URLs: uploadUrl, blocksUrl or stateUrl.
    #[arg(long, conflicts_with_all = ["server", "task_id", "key"])]
    url: Option<String>,
    /// fupload's base URL (with --task-id and --key).
    #[arg(long, value_name = "URL", requires = "task_id")]
    server: Option<String>,
    #[arg(long, value_name = "ID", requires = "server")]
    task_id: Option<i64>,
    /// The task's upload key, from its URLs (not needed where fupload has requireUploadKey: false).
    #[arg(long, requires = "server")]
    key: Option<String>,
    #[command(flatten)]
    network: NetworkArgs,
}

#[derive(Args)]
struct NetworkArgs {
    /// Tries after the first one on network errors and 5xx, waiting 0.5 s, 1 s, 2 s, … (at most 30 s).
    #[arg(long, value_name = "N", default_value_t = 7)]
    retries: u32,
    /// Seconds one request may take, its block included.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    timeout: u64,
    /// A PEM file of CA certificates to trust for https besides Mozilla's and the system's (a private CA).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
}

impl NetworkArgs {
    fn options(&self) -> Result<ClientOptions, ClientError> {
        let retry = RetryPolicy { attempts: self.retries.saturating_add(1), ..RetryPolicy::default() };
        let tls = match &self.ca_file {
            Some(path) => TlsRoots::with_ca_file(path)?,
            None => TlsRoots::default(),
        };
        Ok(ClientOptions { retry, timeout: Duration::from_secs(self.timeout), tls })
    }
}

impl TaskArgs {
    fn task(&self) -> Result<TaskUrls, ClientError> {
        match (&self.url, &self.server, self.task_id) {
            (Some(url), _, _) => TaskUrls::from_url(url),
            (None, Some(server), Some(task_id)) => TaskUrls::from_parts(server, task_id, self.key.as_deref()),
            // clap's argument groups leave no other case.
            _ => Err(ClientError::Usage("give --url, or --server with --task-id".into())),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    actix_web::rt::System::new().block_on(async move {
        match cli.command {
            Command::Upload(args) => upload_file(args).await,
            Command::Status(args) => status(args).await,
            Command::Pause(args) => change_state(args, WantedState::Pause).await,
            Command::Resume(args) => change_state(args, WantedState::Resume).await,
            Command::Cancel(args) => change_state(args, WantedState::Cancel).await,
        }
    })
}

async fn upload_file(args: UploadArgs) -> ExitCode {
    let display = match (args.quiet, std::io::stderr().is_terminal()) {
        (true, _) => DisplayMode::Quiet,
        (false, true) => DisplayMode::Bar,
        (false, false) => DisplayMode::Lines,
    };
    let reporter = Rc::new(Reporter::new(display));
    let client = match args.network.options() {
        Ok(options) => Client::new(options, reporter.clone()),
        Err(error) => return failed(&error),
    };
    let creator = match (args.create_url, args.server, args.token) {
        (Some(create_url), _, _) => TaskCreator::BusinessServer { create_url, user_id: args.user_id },
        (None, Some(server), Some(token)) => {
            TaskCreator::Fupload { server, token, user_id: args.user_id, store_path: args.store_path }
        }
        // clap requires --create-url, or --server with --token.
        _ => return failed(&ClientError::Usage("give --create-url, or --server with --token".into())),
    };
    let options = UploadOptions { block_size: args.block_size, parallel: usize::from(args.parallel) };
    let task = RefCell::new(None);
    let work = async {
        let file = LocalFile::open(&args.file, args.file_name, reporter.as_ref()).await?;
        let created = client.create_task(&creator, &file).await?;
        task.replace(Some(created.clone()));
        upload(&client, &created, &file, &options).await
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        _ = tokio::signal::ctrl_c() => {
            reporter.clear();
            match task.borrow().as_ref() {
                Some(task) => eprintln!(
                    "interrupted: sent {} bytes in this run; task {} keeps every block the server acknowledged. \
                     Run the same command again to resume it.",
                    client.sent_bytes(),
                    task.task_id
                ),
                None => eprintln!("interrupted before the task was created; nothing was sent"),
            }
            return ExitCode::from(130);
        }
    };
    reporter.clear();
    match outcome {
        Ok(uploaded) if uploaded.instant => {
            println!(
                "finished task {} ({} bytes) by an instant upload: the server holds the file, sent {} bytes of it",
                uploaded.task.task_id, uploaded.file_size, uploaded.sent_bytes
            );
            ExitCode::SUCCESS
        }
        Ok(uploaded) => {
            println!(
                "finished task {} ({} bytes): sent {} bytes in this run, {} bytes were already on the server",
                uploaded.task.task_id, uploaded.file_size, uploaded.sent_bytes, uploaded.already_received
            );
            ExitCode::SUCCESS
        }
        Err(error) => failed(&error),
    }
}

async fn status(args: TaskArgs) -> ExitCode {
    let client = match args.network.options() {
        Ok(options) => Client::new(options, Rc::new(Silent)),
        Err(error) => return failed(&error),
    };
    let info = match args.task() {
        Ok(task) => client.blocks_info(&task).await,
        Err(error) => Err(error),
    };
    match info {
        Ok(info) => {
            let percent = info.received_size.saturating_mul(100).checked_div(info.total_size).unwrap_or(100);
            println!("task {}: {}", info.task_id, info.status);
            println!("received: {} of {} bytes ({percent}%)", info.received_size, info.total_size);
            let missing: Vec<String> = info.expect_blocks.iter().map(ToString::to_string).collect();
            println!("missing: {}", if missing.is_empty() { "nothing".to_owned() } else { missing.join(", ") });
            ExitCode::SUCCESS
        }
        Err(error) => failed(&error),
    }
}

async fn change_state(args: TaskArgs, wanted: WantedState) -> ExitCode {
    let client = match args.network.options() {
        Ok(options) => Client::new(options, Rc::new(Silent)),
        Err(error) => return failed(&error),
    };
    let task = match args.task() {
        Ok(task) => task,
        Err(error) => return failed(&error),
    };
    match client.change_state(&task, wanted).await {
        Ok(changed) if changed.already => println!("task {} was already {}", task.task_id, changed.status),
        Ok(changed) => println!("task {} is now {}", task.task_id, changed.status),
        Err(error) => return failed(&error),
    }
    ExitCode::SUCCESS
}

/// Prints why, and exits with 2 for unusable arguments (as for those clap refuses), else 1.
fn failed(error: &ClientError) -> ExitCode {
    eprintln!("fupload-client: {error}");
    match error {
        ClientError::Usage(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// `8MiB`, `256K`, `1048576`: a byte count, with an optional binary unit (K = KiB).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a size like 8MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        other => return Err(format!("unknown unit {other:?}: use K, KiB, M, MiB, G or GiB")),
    };
    match number.checked_mul(1 << shift) {
        Some(0) => Err("must be at least 1 byte".into()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("{text:?} is too large")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("256k"), Ok(256 << 10));
        assert_eq!(parse_size("1 G"), Ok(1 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "0", "MiB", "8MB", "-1", "99999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let parse = |args: &[&str]| Cli::try_parse_from([&["fupload-client"], args].concat());
        assert!(parse(&["upload", "f", "--create-url", "http://b/new"]).is_ok());
        assert!(parse(&["upload", "f", "--server", "http://f", "--token", "t"]).is_ok());
        assert!(parse(&["upload", "f"]).is_err(), "a way to create the task is required");
        assert!(parse(&["upload", "f", "--create-url", "http://b", "--server", "http://f", "--token", "t"]).is_err());
        assert!(parse(&["upload", "f", "--create-url", "http://b", "--parallel", "0"]).is_err());
        assert!(parse(&["status", "--url", "http://f/api/upload/files/state?taskId=1"]).is_ok());
        assert!(parse(&["pause", "--server", "http://f", "--task-id", "1", "--key", "k"]).is_ok());
        assert!(parse(&["resume", "--server", "http://f"]).is_err(), "--server needs --task-id");
        assert!(parse(&["cancel"]).is_err());
    }
}
