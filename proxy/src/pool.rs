//! Upstream connections, pooled by destination: idle HTTP/1.1 connections (newest
//! first) and one shared HTTP/2 connection per key. A request that could not be
//! written on a reused connection (the upstream closed it while idle) is retried once
//! on a new one; nothing else is retried.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::io;
use std::sync::{Arc, Mutex};

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Version};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

/// Which HTTP version to speak upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 (ALPN `h2` over TLS, prior knowledge in plaintext).
    Http2,
}

/// A request body sent upstream: the client's, streamed as it comes, none, or a copy
/// of a body read in full (a request the route table may send again, on a retry or to
/// a mirror).
#[derive(Debug)]
pub enum UpBody {
    /// The client's body.
    Stream(crate::http::ReqBody),
    /// No body.
    Empty,
    /// A body read in full: its bytes, then its trailers.
    Full(Option<Bytes>, Option<http::HeaderMap>),
}

/// A request body read in full, to be sent more than once.
#[derive(Debug, Clone, Default)]
pub struct Buffered {
    /// The bytes.
    pub data: Bytes,
    /// Trailers, if the client sent any.
    pub trailers: Option<http::HeaderMap>,
}

impl Buffered {
    /// A body to send with these bytes and trailers.
    pub fn body(&self) -> UpBody {
        UpBody::Full(
            (!self.data.is_empty()).then(|| self.data.clone()),
            self.trailers.clone(),
        )
    }

    /// Reads `body` to its end when its declared length is at most `limit` bytes
    /// (`Ok(None)` otherwise, nothing read: a body of unknown length may be a stream
    /// that only ends after the answer, as gRPC's do, and is never held back).
    pub async fn read(
        body: &mut crate::http::ReqBody,
        limit: u64,
    ) -> Result<Option<Self>, hyper::Error> {
        if body.size_hint().exact().is_none_or(|n| n > limit) {
            return Ok(None);
        }
        let mut data = bytes::BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
        {
            let frame = frame?;
            match frame.into_data() {
                Ok(d) => {
                    if data.len() as u64 + d.len() as u64 > limit {
                        // More than declared: hyper refuses it before this; keep the bound.
                        return Ok(None);
                    }
                    data.extend_from_slice(&d);
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        trailers = Some(t);
                    }
                }
            }
        }
        Ok(Some(Self {
            data: data.freeze(),
            trailers,
        }))
    }
}

impl HttpBody for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Stream(b) => Pin::new(b).poll_frame(cx),
            Self::Empty => Poll::Ready(None),
            Self::Full(data, trailers) => Poll::Ready(
                data.take()
                    .map(|d| Ok(Frame::data(d)))
                    .or_else(|| trailers.take().map(|t| Ok(Frame::trailers(t)))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Stream(b) => b.is_end_stream(),
            Self::Empty => true,
            Self::Full(data, trailers) => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Stream(b) => b.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(data, _) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// Idle HTTP/1.1 connections kept per destination.
const MAX_IDLE_PER_KEY: usize = 256;

/// Upstream connections by key: idle HTTP/1.1 senders, one shared HTTP/2 sender.
#[derive(Debug)]
pub struct Pool<K, B = crate::http::ReqBody> {
    inner: Mutex<PoolInner<K, B>>,
}

#[derive(Debug)]
struct PoolInner<K, B> {
    h1: HashMap<K, Vec<Pooled<H1<B>>>>,
    h2: HashMap<K, Pooled<http2::SendRequest<B>>>,
}

/// An HTTP/1.1 connection's sender and whether its task still runs.
#[derive(Debug)]
struct H1<B> {
    sender: http1::SendRequest<B>,
    alive: Alive,
}

/// A pooled connection's sender, with the requests it carried and when it was last
/// used.
#[derive(Debug)]
struct Pooled<S> {
    sender: S,
    used: u32,
    last: Instant,
}

/// How long and how much an upstream connection is reused: the DestinationRule's
/// `connectionPool.http.maxRequestsPerConnection` (none: unlimited) and `idleTimeout`
/// (Envoy's default, one hour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// Requests a connection carries before it is retired.
    pub max_requests: Option<u32>,
    /// A connection idle this long is not used again.
    pub idle_timeout: Duration,
}

/// Envoy's default upstream idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Default for Reuse {
    fn default() -> Self {
        Self {
            max_requests: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl Reuse {
    /// From a DestinationRule traffic policy (the proto's field names); defaults for
    /// what it leaves out (`maxRequestsPerConnection: 0` is unlimited, as in Istio).
    pub fn from_policy(policy: &serde_json::Value) -> Self {
        let http = &policy["connectionPool"]["http"];
        let max_requests = http["maxRequestsPerConnection"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0);
        let idle_timeout = http["idleTimeout"]
            .as_str()
            .and_then(|t| warden_policy::route::duration::parse(t).ok())
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_IDLE_TIMEOUT);
        Self {
            max_requests,
            idle_timeout,
        }
    }

    /// Whether a connection that carried `used` requests, last at `last`, may carry
    /// another now.
    fn allows(&self, used: u32, last: Instant, now: Instant) -> bool {
        self.max_requests.is_none_or(|m| used < m)
            && now.saturating_duration_since(last) < self.idle_timeout
    }
}

impl<K, B> Default for Pool<K, B> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(PoolInner {
                h1: HashMap::new(),
                h2: HashMap::new(),
            }),
        }
    }
}

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connecting (TCP or TLS) failed.
    #[error("{0}")]
    Connect(io::Error),
    /// The HTTP exchange failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The connection's task ended with the request still waiting for an answer
    /// (see [`Alive`]).
    #[error("the upstream connection closed before the request was answered")]
    Lost,
}

impl<K, B> Pool<K, B>
where
    K: Clone + Eq + Hash + Send + 'static,
    B: HttpBody + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolInner<K, B>> {
        // A poisoned pool only holds connections: keep using it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn idle_h1(&self, key: &K, reuse: Reuse) -> Option<Pooled<H1<B>>> {
        let mut inner = self.lock();
        let list = inner.h1.get_mut(key)?;
        let now = Instant::now();
        // Newest first: the likeliest to be warm and still open. Busy senders (a body
        // still streaming) stay for later; closed, idle-expired and used-up ones go.
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let p = &list[i];
            if p.sender.sender.is_closed() || !reuse.allows(p.used, p.last, now) {
                list.swap_remove(i);
            } else if p.sender.sender.is_ready() {
                return Some(list.swap_remove(i));
            }
        }
        None
    }

    fn put_h1(&self, key: K, sender: H1<B>, used: u32, reuse: Reuse) {
        if reuse.max_requests.is_some_and(|m| used >= m) {
            // Retired: dropping the sender closes the connection once its response
            // has been read.
            return;
        }
        let mut inner = self.lock();
        let list = inner.h1.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(Pooled {
                sender,
                used,
                last: Instant::now(),
            });
        }
    }

    /// Sends `req` to the destination `key`, reusing a connection when one is free and
    /// otherwise opening one with `connect`. A request that could not be written on a
    /// reused connection (the upstream closed it while idle) is retried once on a new
    /// one.
    pub async fn send<C, F, IO>(
        &self,
        key: K,
        protocol: UpstreamProtocol,
        req: Request<B>,
        connect: C,
    ) -> Result<Response<Incoming>, UpstreamError>
    where
        C: FnOnce() -> F,
        F: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.send_limited(key, protocol, req, Reuse::default(), connect)
            .await
    }

    /// [`Pool::send`] with the destination's connection reuse limits.
    pub async fn send_limited<C, F, IO>(
        &self,
        key: K,
        protocol: UpstreamProtocol,
        req: Request<B>,
        reuse: Reuse,
        connect: C,
    ) -> Result<Response<Incoming>, UpstreamError>
    where
        C: FnOnce() -> F,
        F: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        match protocol {
            UpstreamProtocol::Http2 => self.send_h2(key, req, reuse, connect).await,
            UpstreamProtocol::Http1 => self.send_h1(key, req, reuse, connect).await,
        }
    }

    async fn send_h1<C, F, IO>(
        &self,
        key: K,
        mut req: Request<B>,
        reuse: Reuse,
        connect: C,
    ) -> Result<Response<Incoming>, UpstreamError>
    where
        C: FnOnce() -> F,
        F: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        *req.version_mut() = Version::HTTP_11;
        if let Some(Pooled {
            mut sender, used, ..
        }) = self.idle_h1(&key, reuse)
        {
            let sent = sender.sender.try_send_request(req);
            match sender.alive.answer(sent).await? {
                Ok(resp) => {
                    self.put_h1(key, sender, used + 1, reuse);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection was closed under us; retry below.
                    Some(back) => req = back,
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        let io = connect().await.map_err(UpstreamError::Connect)?;
        let (mut sender, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
        let alive = spawn_connection("HTTP/1.1", conn);
        let resp = alive.answer(sender.send_request(req)).await??;
        self.put_h1(key, H1 { sender, alive }, 1, reuse);
        Ok(resp)
    }

    async fn send_h2<C, F, IO>(
        &self,
        key: K,
        mut req: Request<B>,
        reuse: Reuse,
        connect: C,
    ) -> Result<Response<Incoming>, UpstreamError>
    where
        C: FnOnce() -> F,
        F: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        *req.version_mut() = Version::HTTP_2;
        let cached = {
            let mut inner = self.lock();
            let now = Instant::now();
            match inner.h2.get_mut(&key) {
                Some(p) if !p.sender.is_closed() && reuse.allows(p.used, p.last, now) => {
                    p.used += 1;
                    p.last = now;
                    Some(p.sender.clone())
                }
                Some(_) => {
                    // Closed, idle too long or used up: retired (streams in flight
                    // finish; the connection closes when the last sender goes).
                    inner.h2.remove(&key);
                    None
                }
                None => None,
            }
        };
        if let Some(mut sender) = cached {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        let io = connect().await.map_err(UpstreamError::Connect)?;
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await?;
        spawn_connection("HTTP/2", conn);
        self.lock().h2.insert(
            key,
            Pooled {
                sender: sender.clone(),
                used: 1,
                last: Instant::now(),
            },
        );
        Ok(sender.send_request(req).await?)
    }

    /// Drops every pooled connection (their tasks end when the peers see them close).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.h1.clear();
        inner.h2.clear();
    }
}

/// Drives an upstream connection in a task of its own until it ends.
pub(crate) fn spawn_connection<C>(what: &'static str, conn: C) -> Alive
where
    C: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    let alive = Alive::default();
    let ended = EndsWith(alive.clone());
    tokio::spawn(async move {
        let _ended = ended;
        if let Err(e) = conn.await {
            tracing::debug!(connection = what, error = %e, "upstream connection ended");
        }
    });
    alive
}

/// Whether an HTTP/1.1 connection's task still runs, for the one request waiting on
/// the connection at a time.
///
/// hyper's client can lose a request handed to a connection just as the connection
/// closes: the request stays queued in the closed dispatch channel, the sender reports
/// `is_closed`, and the answer neither comes nor fails, so the caller would wait
/// forever. Found under load against a listener that closes connections at accept
/// (tests/faults_proxy.rs): about one request in 50,000 hung. [`Alive::answer`] waits
/// for the answer or for the task's end, whichever is first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Alive(Arc<Mutex<AliveState>>);

#[derive(Debug, Default)]
struct AliveState {
    ended: bool,
    waiter: Option<std::task::Waker>,
}

/// Marks its [`Alive`] ended when dropped (the task returned, or panicked).
struct EndsWith(Alive);

impl Drop for EndsWith {
    fn drop(&mut self) {
        let waiter = {
            let mut s = self.0.lock();
            s.ended = true;
            s.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

impl Alive {
    fn lock(&self) -> std::sync::MutexGuard<'_, AliveState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `sent`'s output, or [`UpstreamError::Lost`] if the connection's task ends
    /// first. An answer the task handed over before it ended is still returned: the
    /// task hands it over before it ends, and `sent` is polled again after the end is
    /// seen.
    pub(crate) async fn answer<R>(
        &self,
        sent: impl Future<Output = R>,
    ) -> Result<R, UpstreamError> {
        let mut sent = std::pin::pin!(sent);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = sent.as_mut().poll(cx) {
                return Poll::Ready(Ok(r));
            }
            let mut s = self.lock();
            if s.ended {
                drop(s);
                return match sent.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(Ok(r)),
                    Poll::Pending => Poll::Ready(Err(UpstreamError::Lost)),
                };
            }
            match &mut s.waiter {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn reuse_from_a_destination_rule() {
        let p = serde_json::json!({"connectionPool": {"http": {"maxRequestsPerConnection": 2, "idleTimeout": "30s"}}});
        assert_eq!(
            Reuse::from_policy(&p),
            Reuse {
                max_requests: Some(2),
                idle_timeout: Duration::from_secs(30)
            }
        );
        let unlimited =
            serde_json::json!({"connectionPool": {"http": {"maxRequestsPerConnection": 0}}});
        assert_eq!(Reuse::from_policy(&unlimited), Reuse::default());
        let r = Reuse::from_policy(&p);
        let t = Instant::now();
        assert!(r.allows(1, t, t));
        assert!(!r.allows(2, t, t), "used up");
        assert!(
            !r.allows(0, t, t + Duration::from_secs(30)),
            "idle too long"
        );
    }

    /// An HTTP/1.1 server answering every request with an empty 200, counting the
    /// connections it accepted.
    async fn counting_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let n = conn.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                .await;
                        }
                    }
                });
            }
        });
        (addr, count)
    }

    async fn get(pool: &Pool<u8, UpBody>, addr: std::net::SocketAddr, reuse: Reuse) {
        let req = Request::builder()
            .uri("/")
            .header("host", "x")
            .body(UpBody::Empty)
            .unwrap();
        let resp = pool
            .send_limited(0, UpstreamProtocol::Http1, req, reuse, || {
                tokio::net::TcpStream::connect(addr)
            })
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // The (empty) body read to its end: the connection is free again.
        let mut body = resp.into_body();
        while std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .is_some()
        {}
        tokio::task::yield_now().await;
    }

    #[tokio::test]
    async fn max_requests_per_connection_retires_connections() {
        let (addr, count) = counting_server().await;
        let pool: Pool<u8, UpBody> = Pool::default();
        let reuse = Reuse {
            max_requests: Some(2),
            ..Reuse::default()
        };
        for _ in 0..5 {
            get(&pool, addr, reuse).await;
        }
        assert_eq!(
            count.load(Ordering::SeqCst),
            3,
            "5 requests, 2 per connection"
        );
        // Unlimited: one connection carries them all.
        let pool: Pool<u8, UpBody> = Pool::default();
        let (addr, count) = counting_server().await;
        for _ in 0..5 {
            get(&pool, addr, Reuse::default()).await;
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    /// hyper can leave a request queued on a connection that closed (its answer never
    /// comes): once the connection's task has ended, the wait ends with `Lost`.
    #[tokio::test]
    async fn a_request_waits_no_longer_than_its_connection_lives() {
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        let alive = spawn_connection("test", async move {
            let _ = ended.await;
            Ok(())
        });
        let waiting = tokio::spawn({
            let alive = alive.clone();
            async move { alive.answer(std::future::pending::<()>()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "ended before the connection did");
        end.send(()).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("still waiting after the connection's task ended")
            .unwrap();
        assert!(matches!(r, Err(UpstreamError::Lost)), "{r:?}");
        // Already ended: no wait at all.
        assert!(matches!(
            alive.answer(std::future::pending::<()>()).await,
            Err(UpstreamError::Lost)
        ));
    }

    /// An answer handed over before the task ended is the answer, not `Lost`; so is one
    /// that comes while the task still runs.
    #[tokio::test]
    async fn an_answer_handed_over_before_the_end_is_kept() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let alive = spawn_connection("test", async move {
            tx.send(7).unwrap();
            Ok(())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(alive.answer(rx).await.unwrap().unwrap(), 7);

        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let alive = spawn_connection("test", std::future::pending());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(8).unwrap();
        });
        assert_eq!(alive.answer(rx).await.unwrap().unwrap(), 8);
    }
}
