//! What an upload tells while it runs, and the reporter that shows it on stderr: an indicatif
//! bar on a terminal, plain lines every few seconds elsewhere, or nothing.

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{BinaryBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::task::TaskUrls;

/// Told about an upload as it happens. Every method does nothing unless implemented.
pub trait Progress {
    /// Hashing the file starts.
    fn hashing(&self, _path: &Path, _size: u64) {}
    fn hashed(&self, _bytes: u64) {}
    /// Sending starts, or starts another round: `received` of `total` bytes are on the server.
    fn uploading(&self, _task: &TaskUrls, _received: u64, _total: u64) {}
    /// Bytes of the file handed to the connection.
    fn sent(&self, _bytes: u64) {}
    /// Bytes of a failed try, which will be sent again.
    fn unsent(&self, _bytes: u64) {}
    /// `what` failed for the `failed`th time with `cause`; the next try follows in `delay`.
    fn retrying(&self, _what: &str, _failed: u32, _delay: Duration, _cause: &str) {}
    /// `what` was accepted, but the server asks for it again in `delay`, for `why` (another
    /// block in flight holds some of its bytes).
    fn waiting(&self, _what: &str, _delay: Duration, _why: &str) {}
    /// Every byte is in; the server is checking the md5 and storing the file.
    fn verifying(&self) {}
    /// An instant upload: the server took the proof (`refused: None`) or refused it, and the
    /// bytes are uploaded instead.
    fn instant(&self, _task: &TaskUrls, _refused: Option<&str>) {}
}

/// Shows nothing.
pub struct Silent;

impl Progress for Silent {}

/// How a [`Reporter`] shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayMode {
    /// A progress bar with bytes, rate and ETA (for a terminal).
    Bar,
    /// A line every few seconds (for logs).
    Lines,
    Quiet,
}

/// Seconds between two progress lines in [`DisplayMode::Lines`].
const LINE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Hashing,
    Sending,
    Verifying,
}

/// Shows progress on stderr. The bar's state (position, rate, ETA) serves the plain lines too.
pub struct Reporter {
    display: DisplayMode,
    bar: ProgressBar,
    phase: Cell<Phase>,
    last_line: Cell<Instant>,
}

impl Reporter {
    pub fn new(display: DisplayMode) -> Self {
        // Hidden until a phase has set its style and length; only DisplayMode::Bar ever draws it.
        let bar = ProgressBar::hidden();
        Self { display, bar, phase: Cell::new(Phase::Start), last_line: Cell::new(Instant::now()) }
    }

    /// Removes the bar, before the final message is printed.
    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }

    /// A message between progress updates (not in [`DisplayMode::Quiet`]).
    pub fn note(&self, message: &str) {
        match self.display {
            DisplayMode::Bar => self.bar.println(message),
            DisplayMode::Lines => eprintln!("{message}"),
            DisplayMode::Quiet => {}
        }
    }

    fn start_phase(&self, phase: Phase, template: &str, length: u64, position: u64) {
        self.phase.set(phase);
        self.bar.reset();
        self.bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
        self.bar.set_length(length);
        self.bar.set_position(position);
        self.bar.reset_eta();
        self.last_line.set(Instant::now());
        if self.display == DisplayMode::Bar && self.bar.is_hidden() {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    /// In [`DisplayMode::Lines`], a line every `LINE_EVERY`.
    fn tick(&self, verb: &str) {
        if self.display != DisplayMode::Lines || self.last_line.get().elapsed() < LINE_EVERY {
            return;
        }
        self.last_line.set(Instant::now());
        let (position, length) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let percent = position.saturating_mul(100).checked_div(length).unwrap_or(100);
        eprintln!(
            "{verb} {} of {} ({percent}%), {}/s, about {} left",
            BinaryBytes(position),
            BinaryBytes(length),
            BinaryBytes(self.bar.per_sec() as u64),
            HumanDuration(self.bar.eta())
        );
    }
}

impl Progress for Reporter {
    fn hashing(&self, path: &Path, size: u64) {
        self.start_phase(
            Phase::Hashing,
            "hashing {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
            size,
            0,
        );
        self.note(&format!("hashing {} ({})", path.display(), BinaryBytes(size)));
    }

    fn hashed(&self, bytes: u64) {
        self.bar.inc(bytes);
        self.tick("hashed");
    }

    fn uploading(&self, task: &TaskUrls, received: u64, total: u64) {
        if self.phase.get() == Phase::Sending {
            self.bar.set_position(received);
            return;
        }
        self.start_phase(
            Phase::Sending,
            "task {prefix} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta} {msg}",
            total,
            received,
        );
        self.bar.set_prefix(task.task_id.to_string());
        self.note(&format!(
            "task {}: {} of {} already on the server, sending the rest",
            task.task_id,
            BinaryBytes(received),
            BinaryBytes(total)
        ));
    }

    fn sent(&self, bytes: u64) {
        self.bar.inc(bytes);
        self.tick("sent");
    }

    fn unsent(&self, bytes: u64) {
        self.bar.dec(bytes);
    }

    fn retrying(&self, what: &str, failed: u32, delay: Duration, cause: &str) {
        self.note(&format!("{what} failed ({cause}); try {} in {}", failed + 1, HumanDuration(delay)));
    }

    fn waiting(&self, what: &str, delay: Duration, why: &str) {
        self.note(&format!("{what}: {why}; sending it again in {}", HumanDuration(delay)));
    }

    fn instant(&self, task: &TaskUrls, refused: Option<&str>) {
        match refused {
            None => {
                self.note(&format!("task {}: the server holds this file already; finished by a proof", task.task_id))
            }
            Some(why) => {
                self.note(&format!("task {}: instant upload refused ({why}); uploading the bytes", task.task_id))
            }
        }
    }

    fn verifying(&self) {
        if self.phase.replace(Phase::Verifying) != Phase::Verifying {
            self.bar.set_message("verifying on the server");
            if self.display == DisplayMode::Lines {
                eprintln!("all bytes sent; the server is verifying the md5 and storing the file");
            }
        }
    }
}
