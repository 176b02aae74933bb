//! Tables for people, JSON for scripts, and a progress line for long work.

use std::io::{IsTerminal as _, Write as _};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// The API's JSON.
    Json,
}

/// Prints `rows` under `headers`, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let parts: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(&mut headers.iter().map(|h| h.to_string()));
    for r in rows {
        line(&mut r.iter().cloned());
    }
}

/// Prints a value as pretty JSON.
pub fn json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A string field of a JSON object (`-` when absent or null).
pub fn field(v: &serde_json::Value, key: &str) -> String {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => "-".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A progress line on stderr (`label  45% 12.0/26.7 MB`), redrawn in place on a terminal and
/// printed at most every 10% otherwise.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    last_decile: u64,
    tty: bool,
}

impl Progress {
    /// A bar for `total` bytes.
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        Progress { label: label.into(), total, done: 0, last_decile: u64::MAX, tty: std::io::stderr().is_terminal() }
    }

    /// Adds `n` bytes.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        self.draw(false);
    }

    fn draw(&mut self, end: bool) {
        let pct = (self.done * 100).checked_div(self.total).unwrap_or(100).min(100);
        let decile = pct / 10;
        if !self.tty && !end && decile == self.last_decile {
            return;
        }
        self.last_decile = decile;
        let mb = |b: u64| b as f64 / 1e6;
        let width = 30usize;
        let filled = (pct as usize * width / 100).min(width);
        let bar = format!("[{}{}]", "#".repeat(filled), " ".repeat(width - filled));
        let text = format!("{} {bar} {pct:>3}% {:.1}/{:.1} MB", self.label, mb(self.done), mb(self.total));
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{text}");
            if end {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{text}");
        }
    }

    /// Draws the final state.
    pub fn finish(mut self) {
        self.done = self.total.max(self.done);
        self.draw(true);
    }
}
