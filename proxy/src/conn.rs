//! Connection primitives, below the listeners and the HTTP code that use them: the
//! downstream [`Limits`], a connection's [`Activity`] (header and idle timeouts), the
//! [`Drain`] and its per-connection guard, the connection-limit semaphore, telling
//! HTTP/2 from HTTP/1.1 by the first bytes ([`sniff_version`]), and copying tunnels
//! (TCP, WebSocket) until both sides close or they go idle ([`copy_both`]).
//!
//! The limits are Envoy's defaults under Istio unless a flag says otherwise
//! ([`Limits`]): 60 KiB and 100 request headers, a 1 h idle timeout, and, beyond
//! Envoy's defaults, a bound on open downstream connections and timeouts for a client
//! that never finishes its TLS handshake or its request headers.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use crate::metrics::Gauges;

/// Downstream limits and timeouts (`warden-proxy run` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open downstream connections, all listeners together; more are closed at accept.
    pub max_connections: usize,
    /// Time from accept to the first byte and then to the end of the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time from the first byte of an HTTP/1.1 request head to its end.
    pub request_headers_timeout: Duration,
    /// A connection with no request in flight (HTTP) or no bytes either way (TCP,
    /// WebSocket) for this long is closed. Envoy's `idle_timeout`.
    pub idle_timeout: Duration,
    /// Bytes of request headers (Envoy's `max_request_headers_kb`, 60 KiB).
    pub max_request_headers_bytes: usize,
    /// Request headers (Envoy's `max_headers_count`, 100).
    pub max_request_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            handshake_timeout: Duration::from_secs(10),
            request_headers_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            max_request_headers_bytes: 60 * 1024,
            max_request_headers: 100,
        }
    }
}

/// HTTP/2's connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells HTTP/2 (its preface) from HTTP/1.1 by the first bytes, reading no further
/// than they agree with the preface; the bytes read are given back first by the
/// returned stream. `None` when the client closes or sends nothing in `timeout`.
pub(crate) async fn sniff_version<IO>(
    mut io: IO,
    timeout: Duration,
) -> Option<(http::Version, Rewind<IO>)>
where
    IO: AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let read = async {
        while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
            let mut chunk = [0u8; 24];
            let want = H2_PREFACE.len() - buf.len();
            let n = io.read(&mut chunk[..want]).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    };
    tokio::time::timeout(timeout, read).await.ok()??;
    let version = if buf == H2_PREFACE {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    Some((
        version,
        Rewind {
            prefix: buf,
            pos: 0,
            io,
        },
    ))
}

/// A stream that gives back bytes already read from it before reading on.
#[derive(Debug)]
pub(crate) struct Rewind<IO> {
    prefix: Vec<u8>,
    pos: usize,
    io: IO,
}

impl<IO> Rewind<IO> {
    /// A stream nothing was read from yet.
    pub(crate) fn new(io: IO) -> Self {
        Self {
            prefix: Vec::new(),
            pos: 0,
            io,
        }
    }
}

impl<IO> Rewind<IO> {
    /// A stream from which `prefix` was already read.
    pub(crate) fn with_prefix(prefix: Vec<u8>, io: IO) -> Self {
        Self { prefix, pos: 0, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

warden_common::delegate_async_write!(Rewind, io);

/// What one HTTP connection is doing, for its timeouts: requests in flight, since when
/// it has had none, and since when a request head has been arriving.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    /// Requests whose response has not been sent in full.
    active: AtomicUsize,
    /// Milliseconds after `base` when `active` last dropped to zero.
    idle_since: AtomicU64,
    /// Milliseconds after `base` when bytes of a new request head arrived, or
    /// [`NONE`]; only tracked when `heads` is set.
    head_started: AtomicU64,
    /// Whether request heads are timed: HTTP/1.1 (an HTTP/2 client may send frames
    /// while no request is in flight).
    heads: bool,
}

const NONE: u64 = u64::MAX;

/// What [`Activity::verdict`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing expired; look again then.
    Wait(Instant),
    /// A request head took too long.
    HeaderTimeout,
    /// No request for the idle timeout.
    Idle,
}

impl Activity {
    /// A connection accepted now. `heads`: time request heads (HTTP/1.1, whose heads
    /// are the only bytes a client sends while no request is in flight; an HTTP/2
    /// client may send frames at any time).
    pub(crate) fn new(heads: bool) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            heads,
        })
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.base + Duration::from_millis(millis)
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        if self.heads
            && self.active.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Relaxed) == NONE
        {
            let now = self.millis(Instant::now());
            let _ =
                self.head_started
                    .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// A request head is complete and its request begins; the guard ends it (held by
    /// the response body until it is sent).
    pub(crate) fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        ActiveGuard(self.clone())
    }

    pub(crate) fn next_check(&self, limits: &Limits) -> Instant {
        self.at(self.idle_since.load(Ordering::Relaxed))
            + limits.idle_timeout.min(self.head_limit(limits))
    }

    fn head_limit(&self, limits: &Limits) -> Duration {
        if self.heads {
            limits.request_headers_timeout
        } else {
            limits.idle_timeout
        }
    }

    /// Whether a timeout has expired at `now`, else when to look again.
    pub(crate) fn verdict(&self, now: Instant, limits: &Limits) -> Verdict {
        let head = self.head_started.load(Ordering::Acquire);
        if head != NONE {
            let deadline = self.at(head) + limits.request_headers_timeout;
            if now >= deadline {
                return Verdict::HeaderTimeout;
            }
            return Verdict::Wait(deadline);
        }
        if self.active.load(Ordering::Acquire) > 0 {
            // A request in flight is not idle; heads and idleness restart after it.
            return Verdict::Wait(now + limits.idle_timeout.min(self.head_limit(limits)));
        }
        let deadline = self.at(self.idle_since.load(Ordering::Acquire)) + limits.idle_timeout;
        if now >= deadline {
            return Verdict::Idle;
        }
        // A head may start before then: look again within the header timeout.
        Verdict::Wait(deadline.min(now + self.head_limit(limits)))
    }
}

/// A request in flight on a connection (see [`Activity::begin`]).
#[derive(Debug)]
pub(crate) struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let now = a.millis(Instant::now());
        a.idle_since.store(now, Ordering::Release);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A downstream stream that reports reads to its connection's [`Activity`].
#[derive(Debug)]
pub(crate) struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO> Watched<IO> {
    pub(crate) fn new(io: IO, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

warden_common::delegate_async_write!(Watched, io);

/// A tunnel end that stamps every read and write (for the tunnel's idle timeout) and
/// counts the bytes read from it.
struct Stamped<'a, IO> {
    io: &'a mut IO,
    last: &'a AtomicU64,
    read: &'a AtomicU64,
    base: Instant,
}

impl<IO> Stamped<'_, IO> {
    fn stamp(&self) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Stamped<'_, IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.io).poll_read(cx, buf);
        if r.is_ready() {
            let n = buf.filled().len().saturating_sub(before);
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            self.stamp();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Stamped<'_, IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.io).poll_write(cx, buf);
        if r.is_ready() {
            self.stamp();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

/// Copies both ways until both sides close, or nothing moves either way for `idle`
/// (then both are dropped, which closes them); returns the bytes read from `a` and
/// from `b`. Draining does not cut a tunnel: the grace period bounds it.
pub(crate) async fn copy_both<A, B>(a: &mut A, b: &mut B, idle: Duration) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = AtomicU64::new(0);
    let (from_a, from_b) = (AtomicU64::new(0), AtomicU64::new(0));
    let base = Instant::now();
    let mut a = Stamped {
        io: a,
        last: &last,
        read: &from_a,
        base,
    };
    let mut b = Stamped {
        io: b,
        last: &last,
        read: &from_b,
        base,
    };
    let watchdog = async {
        loop {
            let deadline = base + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut b) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel ended with an error");
            }
        }
        () = watchdog => tracing::debug!(?idle, "tunnel idle timeout: closing both sides"),
    }
    (
        from_a.load(Ordering::Relaxed),
        from_b.load(Ordering::Relaxed),
    )
}

/// The drain signal and the count of connections still open.
#[derive(Debug, Clone)]
pub struct Drain {
    signal: watch::Receiver<bool>,
    open: Arc<(AtomicUsize, Notify)>,
}

/// Held by each connection task; the count drops when it does.
#[derive(Debug)]
pub struct ConnGuard {
    open: Arc<(AtomicUsize, Notify)>,
    gauge: Arc<Gauges>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gauge.connections.fetch_sub(1, Ordering::Relaxed);
        if self.open.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.open.1.notify_waiters();
        }
    }
}

impl Drain {
    /// A drain signal and its trigger.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (
            tx,
            Self {
                signal: rx,
                open: Arc::new((AtomicUsize::new(0), Notify::new())),
            },
        )
    }

    /// Whether draining has begun.
    pub fn draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves when draining begins.
    pub async fn started(&self) {
        let mut rx = self.signal.clone();
        // An error means the sender is gone: the process is stopping anyway.
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Counts a connection until the guard drops.
    pub fn guard(&self, gauges: &Arc<Gauges>) -> ConnGuard {
        self.open.0.fetch_add(1, Ordering::AcqRel);
        gauges.connections.fetch_add(1, Ordering::Relaxed);
        ConnGuard {
            open: self.open.clone(),
            gauge: gauges.clone(),
        }
    }

    /// Connections still open.
    pub fn open(&self) -> usize {
        self.open.0.load(Ordering::Acquire)
    }

    /// Waits until no connection is open, or `grace` passes; returns those left.
    pub async fn wait_idle(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        loop {
            let notified = self.open.1.notified();
            if self.open() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.open();
            }
        }
    }
}

/// A semaphore with one permit per allowed downstream connection.
pub(crate) fn connection_permits(limits: &Limits) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            request_headers_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heads_time_out_idle_keep_alive_does_not() {
        let l = limits();
        let a = Activity::new(true);
        let t0 = Instant::now();
        // Idle from the start: the next look is within the header timeout.
        assert_eq!(
            a.verdict(t0, &l),
            Verdict::Wait(t0 + l.request_headers_timeout)
        );
        // Bytes of a head arrive; 10 s later the head is overdue.
        a.on_read();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(matches!(a.verdict(Instant::now(), &l), Verdict::Wait(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.verdict(Instant::now(), &l), Verdict::HeaderTimeout);
        // The head completed in time instead: a request in flight is never idle.
        let a = Activity::new(true);
        a.on_read();
        let guard = a.begin();
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(matches!(a.verdict(Instant::now(), &l), Verdict::Wait(_)));
        // Done: idle counts from the end of the response, and takes the idle timeout.
        drop(guard);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(a.verdict(Instant::now(), &l), Verdict::Wait(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.verdict(Instant::now(), &l), Verdict::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_connections_only_idle() {
        let l = limits();
        let a = Activity::new(false);
        a.on_read();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(matches!(a.verdict(Instant::now(), &l), Verdict::Wait(_)));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(a.verdict(Instant::now(), &l), Verdict::Idle);
    }

    #[tokio::test]
    async fn the_version_is_told_by_the_first_bytes_and_nothing_is_lost() {
        use tokio::io::AsyncReadExt;
        for (bytes, want) in [
            (
                &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest"[..],
                http::Version::HTTP_2,
            ),
            (b"GET / HTTP/1.1\r\n\r\n", http::Version::HTTP_11),
            (b"PRIX", http::Version::HTTP_11),
        ] {
            let (mut tx, rx) = tokio::io::duplex(64);
            tokio::io::AsyncWriteExt::write_all(&mut tx, bytes)
                .await
                .unwrap();
            drop(tx);
            let (v, mut io) = sniff_version(rx, Duration::from_secs(1)).await.unwrap();
            assert_eq!(v, want);
            let mut all = Vec::new();
            io.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, bytes, "every byte is given back");
        }
        let (tx, rx) = tokio::io::duplex(64);
        drop(tx);
        assert!(sniff_version(rx, Duration::from_secs(1)).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn tunnels_close_when_nothing_moves() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, _b_peer) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a_peer, b"hello")
            .await
            .unwrap();
        let (from_a, from_b) = copy_both(&mut a, &mut b, Duration::from_secs(5)).await;
        assert_eq!((from_a, from_b), (5, 0));
    }
}
