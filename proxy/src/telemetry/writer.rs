//! The access log's writer: lines wait in one buffer that a thread of its own takes
//! every 100 ms, or as soon as 128 KiB wait, so a slow disk never slows a request and
//! nothing wakes the thread per line; past 16,384 waiting lines, lines are dropped and
//! counted
//! (`warden_access_log_dropped_total`). A file is rotated by size (`<file>.1` ...
//! `<file>.<keep>`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::HeaderName;

use super::access_log::{Entry, Format};

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// The process's standard output (`/dev/stdout`).
    Stdout,
    /// Its standard error (`/dev/stderr`), beside its own log.
    Stderr,
    /// A file, rotated by size.
    File {
        /// Its path.
        path: PathBuf,
        /// Rotated past this many bytes (0: never).
        max_bytes: u64,
        /// Rotated files kept.
        keep: usize,
    },
}

/// Lines waiting for the writer at most; more are dropped (and counted).
const QUEUE: usize = 16_384;

/// How often the writer thread takes what is waiting. Lines are never handed over one
/// by one: a wake-up per line would cost a context switch per request.
const WRITE_EVERY: Duration = Duration::from_millis(100);

/// Waiting bytes past which the writer is woken at once. The block is then still in
/// the core's cache when the writer copies it into the page cache; a whole 100 ms of
/// lines under load is megabytes, read back from memory. One wake-up per 100 or so
/// lines costs little.
const WAKE_AT: usize = 128 * 1024;

/// Lines waiting for the writer: one buffer, appended to under a lock held for a copy.
#[derive(Debug, Default)]
struct Pending {
    text: String,
    lines: usize,
    /// The writer has been woken for this block.
    woken: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pending: std::sync::Mutex<Pending>,
    closed: std::sync::atomic::AtomicBool,
}

/// The access log: the compiled format and the buffer the writer thread empties.
#[derive(Debug)]
pub struct AccessLog {
    format: Format,
    request_headers: Vec<HeaderName>,
    response_headers: Vec<HeaderName>,
    shared: Arc<Shared>,
    /// The writer thread, to wake when a block is full or the log closes.
    thread: std::thread::Thread,
    /// Taken by the first `close`, which waits for the writer to finish.
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Lines dropped because the writer fell behind (or failed).
    pub dropped: Arc<AtomicU64>,
    /// Lines written.
    pub written: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens `sink` (a file is created 0640: logs are not secrets, but carry
    /// identities) and starts the writer thread.
    pub fn start(format: Format, sink: Sink) -> Result<Self, String> {
        Self::start_every(format, sink, WRITE_EVERY)
    }

    /// [`AccessLog::start`] with the writer's period.
    fn start_every(format: Format, sink: Sink, every: Duration) -> Result<Self, String> {
        let mut out = Output::open(&sink)?;
        let shared = Arc::new(Shared::default());
        let dropped = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (sh, d, w) = (shared.clone(), dropped.clone(), written.clone());
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(&sh, &mut out, &d, &w, every))
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        Ok(Self {
            request_headers: format.headers(false),
            response_headers: format.headers(true),
            format,
            shared,
            thread: writer.thread().clone(),
            writer: std::sync::Mutex::new(Some(writer)),
            dropped,
            written,
        })
    }

    /// Request headers the format reads.
    pub fn request_headers(&self) -> &[HeaderName] {
        &self.request_headers
    }

    /// Response headers the format reads.
    pub fn response_headers(&self) -> &[HeaderName] {
        &self.response_headers
    }

    /// Adds one line (never waits on the disk).
    pub fn write(&self, entry: &Entry<'_>) {
        // Rendered straight into the buffer: no line of its own to copy.
        self.push(|text| entry.render_into(&self.format, text));
    }

    /// Appends one line that `render` writes (without its newline).
    fn push(&self, render: impl FnOnce(&mut String)) {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if p.lines >= QUEUE {
            drop(p);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        render(&mut p.text);
        p.text.push('\n');
        p.lines += 1;
        if p.text.len() >= WAKE_AT && !p.woken {
            p.woken = true;
            drop(p);
            self.thread.unpark();
        }
    }

    /// Writes what is waiting and stops the writer (on shutdown).
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            self.thread.unpark();
            let _ = h.join();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.close();
    }
}

enum Output {
    Stdout(std::io::Stdout),
    Stderr(std::io::Stderr),
    File {
        path: PathBuf,
        file: std::io::BufWriter<std::fs::File>,
        size: u64,
        max_bytes: u64,
        keep: usize,
    },
}

fn open_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl Output {
    fn open(sink: &Sink) -> Result<Self, String> {
        match sink {
            Sink::Stdout => Ok(Self::Stdout(std::io::stdout())),
            Sink::Stderr => Ok(Self::Stderr(std::io::stderr())),
            Sink::File {
                path,
                max_bytes,
                keep,
            } => {
                let file = open_file(path).map_err(|e| {
                    format!(
                        "access log {}: cannot open for appending: {e}",
                        path.display()
                    )
                })?;
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                Ok(Self::File {
                    path: path.clone(),
                    file: std::io::BufWriter::with_capacity(64 * 1024, file),
                    size,
                    max_bytes: *max_bytes,
                    keep: *keep,
                })
            }
        }
    }

    fn line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stdout(s) => {
                let mut s = s.lock();
                s.write_all(line)?;
                s.write_all(b"\n")
            }
            Self::Stderr(s) => {
                let mut l = Vec::with_capacity(line.len() + 1);
                l.extend_from_slice(line);
                l.push(b'\n');
                s.lock().write_all(&l)
            }
            Self::File {
                path,
                file,
                size,
                max_bytes,
                keep,
            } => {
                if *max_bytes > 0 && *size > 0 && *size + line.len() as u64 + 1 > *max_bytes {
                    file.flush()?;
                    rotate(path, *keep)?;
                    *file = std::io::BufWriter::with_capacity(64 * 1024, open_file(path)?);
                    *size = 0;
                }
                file.write_all(line)?;
                file.write_all(b"\n")?;
                *size += line.len() as u64 + 1;
                Ok(())
            }
        }
    }

    /// Writes `block`, whole lines each ending in a newline.
    fn lines(&mut self, block: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stdout(s) => s.lock().write_all(block),
            // Stderr (beside the process's own log) and files: line by line, so a log
            // line never lands inside one and a file rotates between lines.
            Self::File {
                file,
                size,
                max_bytes,
                ..
            } if *max_bytes == 0 || *size + block.len() as u64 <= *max_bytes => {
                // No rotation due within the block: one write, no copy.
                file.flush()?;
                file.get_mut().write_all(block)?;
                *size += block.len() as u64;
                Ok(())
            }
            Self::Stderr(_) | Self::File { .. } => {
                for line in block.split_inclusive(|b| *b == b'\n') {
                    self.line(line.strip_suffix(b"\n").unwrap_or(line))?;
                }
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stdout(s) => s.flush(),
            Self::Stderr(s) => s.flush(),
            Self::File { file, .. } => file.flush(),
        }
    }
}

/// `log` → `log.1` → ... → `log.<keep>` (the oldest dropped).
fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    let numbered = |n: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        let from = numbered(n);
        if from.exists() {
            std::fs::rename(&from, numbered(n + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

fn writer(
    shared: &Shared,
    out: &mut Output,
    dropped: &AtomicU64,
    written: &AtomicU64,
    every: Duration,
) {
    let mut failing = false;
    let mut spare = String::new();
    loop {
        let closed = shared.closed.load(Ordering::Relaxed);
        if !closed {
            std::thread::park_timeout(every);
        }
        let (bytes, lines) = {
            let mut p = shared
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let lines = std::mem::take(&mut p.lines);
            p.woken = false;
            // The emptied buffer of the last round takes the next lines.
            spare.clear();
            (
                std::mem::replace(&mut p.text, std::mem::take(&mut spare)),
                lines,
            )
        };
        if lines > 0 {
            match out.lines(bytes.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => {
                    written.fetch_add(lines as u64, Ordering::Relaxed);
                    if failing {
                        failing = false;
                        tracing::info!("access log: writing again");
                    }
                }
                Err(e) => {
                    dropped.fetch_add(lines as u64, Ordering::Relaxed);
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %e, "access log: lines could not be written; they are dropped until writing works again");
                    }
                }
            }
        }
        spare = bytes;
        if closed {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_by_size_and_keep_a_few() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut out = Output::open(&Sink::File {
            path: path.clone(),
            max_bytes: 100,
            keep: 2,
        })
        .unwrap();
        for i in 0..20 {
            out.line(format!("{i:040}").as_bytes()).unwrap();
        }
        out.flush().unwrap();
        assert!(path.exists());
        assert!(dir.path().join("access.log.1").exists());
        assert!(dir.path().join("access.log.2").exists());
        assert!(!dir.path().join("access.log.3").exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
    }

    /// Past [`WAKE_AT`] waiting bytes the writer is woken: with a period of an hour,
    /// the lines still reach the file (the deadline only bounds a broken wake-up), and
    /// what is left below the mark is written on close.
    #[test]
    fn a_full_block_wakes_the_writer_and_close_writes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let format = Format::new(super::super::access_log::Encoding::Json, None).unwrap();
        let sink = Sink::File {
            path: path.clone(),
            max_bytes: 0,
            keep: 0,
        };
        let log = AccessLog::start_every(format, sink, Duration::from_secs(3600)).unwrap();
        let line = "x".repeat(1023);
        let lines = WAKE_AT / 1024 + 1;
        for _ in 0..lines {
            log.push(|t| t.push_str(&line));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while log.written.load(Ordering::Relaxed) < lines as u64 {
            assert!(
                std::time::Instant::now() < deadline,
                "a block past WAKE_AT was not written without the timer"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (lines * 1024) as u64
        );
        log.push(|t| t.push_str("last"));
        log.close();
        assert_eq!(log.written.load(Ordering::Relaxed), lines as u64 + 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("\nlast\n"));
        assert_eq!(log.dropped.load(Ordering::Relaxed), 0);
    }
}
