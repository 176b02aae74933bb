//! The in-memory log of one command: stdout and stderr chunks kept in arrival order, so the
//! combined `output`, each stream alone, and a live follower can all be served from one buffer.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::body::Bytes;
use tokio::sync::watch;

/// Oldest chunks are dropped beyond this many bytes, so a chatty long-running command cannot
/// exhaust the sandbox's memory.
pub const MAX_LOG_BYTES: usize = 32 * 1024 * 1024;

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

/// The three views the logs endpoint answers with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogText {
    /// Both streams in arrival order.
    pub output: String,
    /// fd 1 only.
    pub stdout: String,
    /// fd 2 only.
    pub stderr: String,
}

/// A command's output and end.
#[derive(Debug)]
pub struct CommandLog {
    inner: Mutex<Inner>,
    /// Bumped on every change; followers wait on it.
    version: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    chunks: VecDeque<(Stream, Bytes)>,
    /// Absolute index of `chunks[0]`.
    first: u64,
    bytes: usize,
    exit_code: Option<i32>,
    finished: bool,
}

impl Default for CommandLog {
    fn default() -> Self {
        CommandLog { inner: Mutex::default(), version: watch::channel(0).0 }
    }
}

impl CommandLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Appends a chunk (ignored once the command has finished).
    pub fn push(&self, stream: Stream, data: Bytes) {
        if data.is_empty() {
            return;
        }
        {
            let mut g = self.lock();
            if g.finished {
                return;
            }
            g.bytes += data.len();
            g.chunks.push_back((stream, data));
            while g.bytes > MAX_LOG_BYTES && g.chunks.len() > 1 {
                if let Some((_, old)) = g.chunks.pop_front() {
                    g.bytes -= old.len();
                    g.first += 1;
                }
            }
        }
        self.bump();
    }

    /// Marks the end with `exit_code` (the first call wins).
    pub fn finish(&self, exit_code: i32) {
        {
            let mut g = self.lock();
            if g.finished {
                return;
            }
            g.finished = true;
            g.exit_code = Some(exit_code);
        }
        self.bump();
    }

    /// The exit code once finished.
    pub fn exit_code(&self) -> Option<i32> {
        self.lock().exit_code
    }

    /// Whether the command has ended.
    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// The text views (invalid UTF-8 is replaced).
    pub fn text(&self) -> LogText {
        let g = self.lock();
        let (mut all, mut out, mut err) = (Vec::new(), Vec::new(), Vec::new());
        for (s, b) in &g.chunks {
            all.extend_from_slice(b);
            match s {
                Stream::Stdout => out.extend_from_slice(b),
                Stream::Stderr => err.extend_from_slice(b),
            }
        }
        let s =
            |v: Vec<u8>| String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        LogText { output: s(all), stdout: s(out), stderr: s(err) }
    }

    /// Chunks from absolute index `*next` on (advancing it), and whether the command has ended.
    pub fn since(&self, next: &mut u64) -> (Vec<(Stream, Bytes)>, bool) {
        let g = self.lock();
        let start = (*next).max(g.first);
        let skip = usize::try_from(start - g.first).unwrap_or(usize::MAX);
        let out: Vec<_> = g.chunks.iter().skip(skip).cloned().collect();
        *next = g.first + g.chunks.len() as u64;
        (out, g.finished)
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Waits until the command has ended; returns its exit code.
    pub async fn wait(&self) -> i32 {
        let mut rx = self.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(code) = self.lock().exit_code {
                return code;
            }
            if rx.changed().await.is_err() {
                return self.exit_code().unwrap_or(-1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_arrival_order_and_streams_stay_separate() {
        let log = CommandLog::default();
        log.push(Stream::Stdout, Bytes::from_static(b"a"));
        log.push(Stream::Stderr, Bytes::from_static(b"b"));
        log.push(Stream::Stdout, Bytes::from_static(b"c"));
        let t = log.text();
        assert_eq!((t.output.as_str(), t.stdout.as_str(), t.stderr.as_str()), ("abc", "ac", "b"));
    }

    #[test]
    fn a_follower_sees_only_new_chunks_and_the_end() {
        let log = CommandLog::default();
        let mut next = 0;
        log.push(Stream::Stdout, Bytes::from_static(b"1"));
        assert_eq!(log.since(&mut next).0.len(), 1);
        log.push(Stream::Stderr, Bytes::from_static(b"2"));
        log.finish(0);
        let (chunks, done) = log.since(&mut next);
        assert_eq!(chunks, vec![(Stream::Stderr, Bytes::from_static(b"2"))]);
        assert!(done);
    }
}
