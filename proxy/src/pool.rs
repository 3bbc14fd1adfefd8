//! Upstream connections, pooled by destination: idle HTTP/1.1 connections (newest
//! first) and one shared HTTP/2 connection per key. A request that could not be
//! written on a reused connection (the upstream closed it while idle) is retried once
//! on a new one; nothing else is retried.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::io;
use std::sync::Mutex;

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

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
    Stream(Incoming),
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
    pub async fn read(body: &mut Incoming, limit: u64) -> Result<Option<Self>, hyper::Error> {
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
pub struct Pool<K, B = Incoming> {
    inner: Mutex<PoolInner<K, B>>,
}

#[derive(Debug)]
struct PoolInner<K, B> {
    h1: HashMap<K, Vec<http1::SendRequest<B>>>,
    h2: HashMap<K, http2::SendRequest<B>>,
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

    fn idle_h1(&self, key: &K) -> Option<http1::SendRequest<B>> {
        let mut inner = self.lock();
        let list = inner.h1.get_mut(key)?;
        // Newest first: the likeliest to be warm and still open. Busy senders (a body
        // still streaming) stay for later; closed ones go.
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            if list[i].is_closed() {
                list.swap_remove(i);
            } else if list[i].is_ready() {
                return Some(list.swap_remove(i));
            }
        }
        None
    }

    fn put_h1(&self, key: K, sender: http1::SendRequest<B>) {
        let mut inner = self.lock();
        let list = inner.h1.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(sender);
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
        match protocol {
            UpstreamProtocol::Http2 => self.send_h2(key, req, connect).await,
            UpstreamProtocol::Http1 => self.send_h1(key, req, connect).await,
        }
    }

    async fn send_h1<C, F, IO>(
        &self,
        key: K,
        mut req: Request<B>,
        connect: C,
    ) -> Result<Response<Incoming>, UpstreamError>
    where
        C: FnOnce() -> F,
        F: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        *req.version_mut() = Version::HTTP_11;
        if let Some(mut sender) = self.idle_h1(&key) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.put_h1(key, sender);
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
        spawn_connection("HTTP/1.1", conn);
        let resp = sender.send_request(req).await?;
        self.put_h1(key, sender);
        Ok(resp)
    }

    async fn send_h2<C, F, IO>(
        &self,
        key: K,
        mut req: Request<B>,
        connect: C,
    ) -> Result<Response<Incoming>, UpstreamError>
    where
        C: FnOnce() -> F,
        F: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        *req.version_mut() = Version::HTTP_2;
        let cached = {
            let inner = self.lock();
            inner.h2.get(&key).filter(|s| !s.is_closed()).cloned()
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
        self.lock().h2.insert(key, sender.clone());
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
pub(crate) fn spawn_connection<C>(what: &'static str, conn: C)
where
    C: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(connection = what, error = %e, "upstream connection ended");
        }
    });
}
