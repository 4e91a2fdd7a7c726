//! How client commands show results: progress bars on a terminal, plain lines otherwise,
//! JSON lines with `--json`; a summary at the end.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::{human_bytes, CommonArgs, Outcome};
use crate::api::FileMeta;
use crate::client::ClientError;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ErrorInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub code: String,
    pub message: String,
}

impl From<&ClientError> for ErrorInfo {
    fn from(e: &ClientError) -> Self {
        match e {
            ClientError::Api {
                status,
                code,
                message,
                ..
            } => ErrorInfo {
                status: Some(*status),
                code: code.clone(),
                message: message.clone(),
            },
            other => ErrorInfo {
                status: None,
                code: other.code().to_string(),
                message: match other {
                    ClientError::Transport(m) | ClientError::Other(m) => m.clone(),
                    ClientError::Local { message, .. } => message.clone(),
                    ClientError::Api { .. } => String::new(),
                },
            },
        }
    }
}

/// The outcome of one item (one file transferred, moved, removed...).
#[derive(Debug, Clone, Serialize)]
pub struct ItemResult {
    pub(crate) op: &'static str,
    pub(crate) ok: bool,
    pub(crate) source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) file: Option<FileMeta>,
    pub(crate) bytes: u64,
    pub(crate) attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) resumed_from: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<ErrorInfo>,
}

impl ItemResult {
    pub(crate) fn new(
        op: &'static str,
        source: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        ItemResult {
            op,
            ok: false,
            source: source.into(),
            target: target.into(),
            file: None,
            bytes: 0,
            attempts: 0,
            resumed_from: None,
            note: None,
            error: None,
        }
    }

    pub(crate) fn succeeded(mut self, file: Option<FileMeta>, bytes: u64, attempts: u32) -> Self {
        self.ok = true;
        self.file = file;
        self.bytes = bytes;
        self.attempts = attempts;
        self
    }

    pub(crate) fn failed(mut self, error: &ClientError, attempts: u32) -> Self {
        self.ok = false;
        self.error = Some(error.into());
        self.attempts = attempts;
        self
    }

    pub(crate) fn failed_local(self, code: &str, message: impl Into<String>) -> Self {
        self.failed(&ClientError::local(code, message), 0)
    }

    pub(crate) fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    fn plain(&self) -> String {
        let verb = match self.op {
            "upload" => "uploaded",
            "download" => "downloaded",
            "rm" => "removed",
            "mv" => "moved",
            "cp" => "copied",
            other => other,
        };
        let mut line = if self.target.is_empty() {
            format!("{verb} {}", self.source)
        } else {
            format!("{verb} {} -> {}", self.source, self.target)
        };
        if let Some(f) = &self.file {
            let short = f.sha256.get(..12).unwrap_or(&f.sha256);
            line.push_str(&format!(
                "  ({}, v{}, sha256 {short})",
                human_bytes(f.size),
                f.version
            ));
        }
        if let Some(from) = self.resumed_from {
            line.push_str(&format!("  resumed at {}", human_bytes(from)));
        }
        if let Some(n) = &self.note {
            line.push_str(&format!("  [{n}]"));
        }
        line
    }

    fn plain_error(&self) -> String {
        let target = if self.target.is_empty() {
            self.source.clone()
        } else {
            format!("{} -> {}", self.source, self.target)
        };
        let (code, message, status) = match &self.error {
            Some(e) => (e.code.as_str(), e.message.as_str(), e.status),
            None => ("unknown", "", None),
        };
        let mut line = format!("vaultfs: {} {target}: {code}", self.op);
        if !message.is_empty() {
            line.push_str(&format!(": {message}"));
        }
        let mut extra = Vec::new();
        if let Some(s) = status {
            extra.push(format!("HTTP {s}"));
        }
        if self.attempts > 1 {
            extra.push(format!("after {} attempts", self.attempts));
        }
        if !extra.is_empty() {
            line.push_str(&format!(" ({})", extra.join(", ")));
        }
        line
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Json,
    Plain,
    Bars,
}

#[derive(Debug, Default)]
struct Tally {
    succeeded: u64,
    failed: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct Summary {
    op: &'static str,
    summary: bool,
    succeeded: u64,
    failed: u64,
    bytes: u64,
    seconds: f64,
    interrupted: bool,
}

/// Shows results and progress for one command.
#[derive(Debug)]
pub struct Reporter {
    op: &'static str,
    mode: Mode,
    multi: Option<MultiProgress>,
    total: Option<ProgressBar>,
    /// Guards the running totals of finished items; held for one update, never across `.await`.
    tally: Mutex<Tally>,
    planned_items: u64,
    started: Instant,
    /// Whether the command prints a summary (transfers and batch operations do; ls does not).
    summary: bool,
}

fn write_stdout(line: &str) {
    // A closed stdout (piped into `head`) is not an error worth a panic.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn write_stderr(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

impl Reporter {
    /// `bars`: this command moves bytes and may show progress bars.
    pub fn new(op: &'static str, common: &CommonArgs, bars: bool, summary: bool) -> Self {
        let mode = if common.json {
            Mode::Json
        } else if bars && !common.quiet && std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Plain
        };
        let multi = (mode == Mode::Bars)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Reporter {
            op,
            mode,
            multi,
            total: None,
            tally: Mutex::new(Tally::default()),
            planned_items: 0,
            started: Instant::now(),
            summary,
        }
    }

    pub(crate) fn json(&self) -> bool {
        self.mode == Mode::Json
    }

    /// Sets the totals once the plan is known; shows the total bar.
    pub fn plan(&mut self, items: u64, bytes: u64) {
        self.planned_items = items;
        if let Some(multi) = &self.multi {
            let bar = multi.add(ProgressBar::new(bytes));
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix:>10} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} \
                 {binary_bytes_per_sec} ETA {eta} {msg}",
            ) {
                bar.set_style(style);
            }
            bar.set_prefix("total");
            bar.set_message(format!("0/{items} files"));
            bar.enable_steady_tick(Duration::from_millis(200));
            self.total = Some(bar);
        }
    }

    /// A progress handle for one transfer of `size` bytes called `name`.
    pub fn transfer(&self, name: &str, size: u64) -> Progress {
        let bar = match (&self.multi, &self.total) {
            (Some(multi), Some(total)) => {
                let bar = multi.insert_before(total, ProgressBar::new(size));
                if let Ok(style) = ProgressStyle::with_template(
                    "{prefix:>10} {wide_msg} {bar:30} {binary_bytes}/{binary_total_bytes} \
                     {binary_bytes_per_sec}",
                ) {
                    bar.set_style(style);
                }
                bar.set_prefix(self.op);
                bar.set_message(name.to_string());
                Some(bar)
            }
            _ => None,
        };
        Progress {
            bar,
            total: self.total.clone(),
            counted: AtomicU64::new(0),
        }
    }

    /// Prints one item's result (errors to standard error, except with `--json`).
    pub fn result(&self, result: ItemResult) {
        if let Ok(mut t) = self.tally.lock() {
            if result.ok {
                t.succeeded += 1;
                t.bytes += result.bytes;
            } else {
                t.failed += 1;
            }
            if let Some(total) = &self.total {
                let done = t.succeeded + t.failed;
                total.set_message(format!("{done}/{} files", self.planned_items));
            }
        }
        match self.mode {
            Mode::Json => {
                if let Ok(line) = serde_json::to_string(&result) {
                    write_stdout(&line);
                }
            }
            Mode::Plain | Mode::Bars => {
                let print = || {
                    if result.ok {
                        write_stdout(&result.plain());
                    } else {
                        write_stderr(&result.plain_error());
                    }
                };
                match &self.multi {
                    Some(m) => m.suspend(print),
                    None => print(),
                }
            }
        }
    }

    /// Prints a line of a listing (already formatted for the mode).
    pub fn line(&self, line: &str) {
        match &self.multi {
            Some(m) => m.suspend(|| write_stdout(line)),
            None => write_stdout(line),
        }
    }

    /// A warning on standard error.
    pub fn warn(&self, line: &str) {
        match &self.multi {
            Some(m) => m.suspend(|| write_stderr(&format!("vaultfs: {line}"))),
            None => write_stderr(&format!("vaultfs: {line}")),
        }
    }

    /// A failure of the command as a whole (not of one item): counted as a failed item.
    pub fn fatal(&self, error: &ClientError, context: &str) {
        if let Ok(mut t) = self.tally.lock() {
            t.failed += 1;
        }
        if self.json() {
            let info = ErrorInfo::from(error);
            let line =
                serde_json::json!({"op": self.op, "ok": false, "source": context, "error": info});
            write_stdout(&line.to_string());
        } else {
            let info = ErrorInfo::from(error);
            let status = info
                .status
                .map(|s| format!(" (HTTP {s})"))
                .unwrap_or_default();
            let msg = if info.message.is_empty() {
                String::new()
            } else {
                format!(": {}", info.message)
            };
            self.warn(&format!(
                "{} {context}: {}{msg}{status}",
                self.op, info.code
            ));
        }
    }

    /// Clears the bars, prints the summary and tells how the command ended.
    pub fn finish(&self, interrupted: bool) -> Outcome {
        if let Some(total) = &self.total {
            total.finish_and_clear();
        }
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
        let (succeeded, failed, bytes) = match self.tally.lock() {
            Ok(t) => (t.succeeded, t.failed, t.bytes),
            Err(_) => (0, 1, 0),
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        if self.summary {
            if self.mode == Mode::Json {
                let s = Summary {
                    op: self.op,
                    summary: true,
                    succeeded,
                    failed,
                    bytes,
                    seconds: (elapsed * 1000.0).round() / 1000.0,
                    interrupted,
                };
                if let Ok(line) = serde_json::to_string(&s) {
                    write_stdout(&line);
                }
            } else {
                let rate = if elapsed > 0.0 {
                    format!(" ({}/s)", human_bytes((bytes as f64 / elapsed) as u64))
                } else {
                    String::new()
                };
                let moved = if self.multi.is_some()
                    || bytes > 0
                    || matches!(self.op, "upload" | "download")
                {
                    format!(", {} in {elapsed:.1} s{rate}", human_bytes(bytes))
                } else {
                    String::new()
                };
                write_stderr(&format!(
                    "{}: {succeeded} succeeded, {failed} failed{moved}{}",
                    self.op,
                    if interrupted { "; interrupted" } else { "" }
                ));
            }
        } else if interrupted {
            write_stderr("vaultfs: interrupted");
        }
        if interrupted {
            Outcome::Interrupted
        } else if failed > 0 {
            Outcome::SomeFailed
        } else {
            Outcome::AllSucceeded
        }
    }
}

/// Progress of one transfer; counts into its own bar and the total.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    total: Option<ProgressBar>,
    counted: AtomicU64,
}

impl Progress {
    pub fn inc(&self, n: u64) {
        self.counted.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        if let Some(t) = &self.total {
            t.inc(n);
        }
    }

    /// Starts over at `position` (a retry, or a resume): what was counted beyond it is
    /// taken back from the total.
    pub fn restart_at(&self, position: u64) {
        let counted = self.counted.swap(position, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_position(position);
        }
        if let Some(t) = &self.total {
            let pos = t.position();
            t.set_position(pos.saturating_sub(counted).saturating_add(position));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
