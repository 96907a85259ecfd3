//! Logs and metrics. Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as
//! readable lines or JSON (`log.format`). Metrics: the Prometheus recorder behind `/metrics`.

pub mod metrics;

use std::io::{self, IsTerminal};

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the process-wide log subscriber.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colours = io::stderr().is_terminal();
    tracing::subscriber::set_global_default(subscriber(format, filter, colours, io::stderr))
        .expect("the log subscriber is installed once, at start-up");
}

/// A subscriber writing `format` lines to `writer`; `colours` only for a terminal.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    colours: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colours).with_writer(writer);
    match format {
        LogFormat::Pretty => Box::new(builder.finish()),
        // Span fields (route, taskId, …) go into every event's line, flattened for easy queries.
        LogFormat::Json => Box::new(builder.json().flatten_event(true).with_current_span(true).finish()),
    }
}

/// Runs `f` with what it logs at `info` and above captured, as `format` lines; returns its
/// result and the text.
#[cfg(test)]
pub(crate) fn capture_logs<T>(format: LogFormat, f: impl FnOnce() -> T) -> (T, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = subscriber(format, EnvFilter::new("info"), false, move || writer.clone());
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    (result, text)
}

#[cfg(test)]
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_lines(format: LogFormat) -> Vec<String> {
        let ((), text) = capture_logs(format, || {
            let span = tracing::info_span!("request", route = "/api/upload/files/block", task_id = 7);
            let _entered = span.enter();
            tracing::info!(ret_code = "0", bytes = 1000_u64, "request finished");
            tracing::debug!("filtered out");
        });
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn json_lines_parse_and_carry_the_span_fields() {
        let lines = log_lines(LogFormat::Json);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let event: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(event["level"], "INFO");
        assert_eq!(event["message"], "request finished");
        assert_eq!(event["ret_code"], "0");
        assert_eq!(event["bytes"], 1000);
        assert_eq!(event["span"]["route"], "/api/upload/files/block");
        assert_eq!(event["span"]["task_id"], 7);
    }

    #[test]
    fn pretty_lines_are_plain_text() {
        let lines = log_lines(LogFormat::Pretty);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("request finished") && lines[0].contains("task_id=7"), "{}", lines[0]);
        assert!(serde_json::from_str::<serde_json::Value>(&lines[0]).is_err());
    }
}
