//! What every downstream listener shares: accepting connections within the connection
//! limit ([`accept_loop`]) and driving an HTTP connection until it ends, drains or times
//! out ([`serve_connection`], [`drive_http`]). The connection primitives they use
//! (limits, activity and timeouts, the drain, tunnels) are in [`crate::conn`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::conn::{Activity, Verdict};
use crate::context::Context;

/// Concurrent streams per HTTP/2 connection (Envoy's default since 1.36).
const H2_MAX_STREAMS: u32 = 1024;

/// The listen backlog asked for: Linux caps it at `net.core.somaxconn` (4096 on current
/// kernels), so the kernel's limit applies, as Envoy's listeners do by default. The
/// usual 128 (`tokio::net::TcpListener::bind`) fills under a burst of new connections,
/// and the kernel then drops handshakes that the callers retry only after a second.
const LISTEN_BACKLOG: u32 = 65_535;

/// A TCP listener on `addr` with the kernel's full backlog ([`LISTEN_BACKLOG`]).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind`: a restarted proxy rebinds over its old TIME_WAITs.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections on `listener` until draining starts, running `handle` on each
/// in a task of its own that counts as open for the drain. Past
/// [`Limits::max_connections`] a new connection is closed at once and counted.
pub(crate) async fn accept_loop<F, Fut>(
    ctx: Arc<Context>,
    listener: TcpListener,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<Context>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = ctx.drain.started() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = ctx.connection_permits.clone().try_acquire_owned() else {
                    drop(stream);
                    let before = ctx.metrics.gauges.overflow.fetch_add(1, Ordering::Relaxed);
                    // Once at warn (the operator must know), then at debug.
                    if before == 0 {
                        tracing::warn!(listener = what, %peer, max = ctx.limits.max_connections, "connection limit reached: new downstream connections are closed at once (see warden_downstream_connections_overflow_total)");
                    } else {
                        tracing::debug!(listener = what, %peer, "connection limit reached: connection closed");
                    }
                    continue;
                };
                let guard = ctx.drain.guard(&ctx.metrics.gauges);
                let task = handle(ctx.clone(), stream, peer);
                tokio::spawn(async move {
                    task.await;
                    drop(guard);
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves HTTP on `io` (HTTP/2 or HTTP/1.1 as `version` says, else as the first bytes
/// show) within the downstream limits until it ends, drains or times out. Each request
/// goes to `handle`; its response holds the connection's activity until its body
/// ends, so the idle timeout never closes a connection with a response in flight.
/// `listener` names the side in logs.
pub(crate) async fn serve_http_connection<IO, H, Fut, E>(
    ctx: &Context,
    io: IO,
    version: Option<http::Version>,
    listener: &'static str,
    peer: Option<SocketAddr>,
    handle: H,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    H: Fn(http::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<crate::http::Body>, E>> + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    let (version, io) = match version {
        Some(v) => (v, crate::conn::Rewind::new(io)),
        None => match crate::conn::sniff_version(io, ctx.limits.request_headers_timeout).await {
            Some(found) => found,
            None => return,
        },
    };
    let activity = Activity::new(version != http::Version::HTTP_2);
    let handle = Arc::new(handle);
    let svc = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req| {
            let handle = handle.clone();
            let active = activity.begin();
            async move {
                let mut resp = handle(req).await?;
                resp.body_mut().hold(active);
                Ok::<_, E>(resp)
            }
        })
    };
    let io = hyper_util::rt::TokioIo::new(crate::conn::Watched::new(io, activity.clone()));
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    match drive_http(ctx, io, svc, Some(version), &activity).await {
        Ended::Finished(Err(e)) => {
            tracing::debug!(listener, %peer, error = %e, "HTTP connection ended");
        }
        Ended::HeaderTimeout => {
            tracing::info!(listener, %peer, timeout = ?ctx.limits.request_headers_timeout, "connection closed: the request headers did not arrive in time");
        }
        Ended::Finished(Ok(())) => {}
    }
}

/// Why [`serve_connection`] stopped a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended<T> {
    /// It ended by itself (the client closed, an upgrade took it over, an error).
    Finished(T),
    /// A request head was not complete within [`Limits::request_headers_timeout`].
    HeaderTimeout,
}

/// Drives an HTTP connection. When draining starts, or when no request has been in
/// flight for [`Limits::idle_timeout`], it is asked to finish gracefully (HTTP/1.1:
/// close after the response in flight, at once when idle; HTTP/2: GOAWAY, then close
/// when the open streams end) and driven to its end; when `activity` tracks request heads and one takes longer than
/// [`Limits::request_headers_timeout`], it is dropped (closed).
pub(crate) async fn serve_connection<C>(
    ctx: &Context,
    conn: C,
    activity: &Activity,
    graceful: impl FnOnce(Pin<&mut C>),
) -> Ended<C::Output>
where
    C: Future,
{
    let limits = &ctx.limits;
    let mut conn = std::pin::pin!(conn);
    let mut check = activity.next_check(limits);
    loop {
        tokio::select! {
            r = conn.as_mut() => return Ended::Finished(r),
            () = ctx.drain.started() => break,
            () = tokio::time::sleep_until(check) => {
                match activity.verdict(Instant::now(), limits) {
                    Verdict::Wait(next) => check = next,
                    Verdict::HeaderTimeout => {
                        ctx.metrics.gauges.header_timeouts.fetch_add(1, Ordering::Relaxed);
                        return Ended::HeaderTimeout;
                    }
                    Verdict::Idle => {
                        ctx.metrics.gauges.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
    graceful(conn.as_mut());
    Ended::Finished(conn.await)
}

/// Errors hyper's connections end with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves HTTP on `io`: HTTP/2 or HTTP/1.1 as ALPN said (`version`), else as the first
/// bytes say ([`sniff_version`]). Request heads are bounded by [`Limits`] as they are read (hyper
/// answers 431 over HTTP/1.1 and HTTP/2 alike); HTTP/2 allows Envoy's 1024 concurrent
/// streams. The connection is driven by [`serve_connection`].
pub(crate) async fn drive_http<IO, S>(
    ctx: &Context,
    io: IO,
    svc: S,
    version: Option<http::Version>,
    activity: &Activity,
) -> Ended<Result<(), BoxError>>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::http::Body>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    use hyper_util::rt::TokioExecutor;
    let limits = &ctx.limits;
    // HTTP/2 counts 32 bytes of overhead per header (RFC 9113 6.5.2).
    let h2_list =
        u32::try_from(limits.max_request_headers_bytes + 32 * (limits.max_request_headers + 4))
            .unwrap_or(u32::MAX);
    let ended = if version == Some(http::Version::HTTP_2) {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.max_header_list_size(h2_list)
            .max_concurrent_streams(H2_MAX_STREAMS);
        let c = b.serve_connection(io, svc);
        serve_connection(ctx, c, activity, |c| c.graceful_shutdown()).await
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.max_header_size(limits.max_request_headers_bytes)
            .header_read_timeout(None);
        let c = b.serve_connection(io, svc).with_upgrades();
        serve_connection(ctx, c, activity, |c| c.graceful_shutdown()).await
    };
    match ended {
        Ended::Finished(r) => Ended::Finished(r.map_err(Into::into)),
        Ended::HeaderTimeout => Ended::HeaderTimeout,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Connections past the usual backlog of 128 complete their handshakes while
    /// nothing accepts them: [`bind`] asks for the kernel's full backlog.
    #[tokio::test]
    async fn a_burst_past_128_connections_completes_its_handshakes() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        // The kernel admits backlog + 1 before it drops handshakes.
        let burst = 300.min(somaxconn);
        if burst <= 129 {
            eprintln!("net.core.somaxconn is {somaxconn}: nothing past 128 to check");
            return;
        }
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..burst {
            let c = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr));
            if let Ok(Ok(s)) = c.await {
                held.push(s);
            }
        }
        assert_eq!(held.len(), burst, "handshakes completed in the backlog");
        drop(listener);
    }
}
