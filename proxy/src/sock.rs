//! A TCP stream whose vectored writes go out as one `send(2)`.
//!
//! rustls hands its records to the socket with `write_vectored`, and hyper writes a
//! message's head and body the same way. On a `TcpStream` that is `writev(2)`, which
//! Linux runs through the file layer (`fdget_pos`, `rw_verify_area`, the iovec import)
//! before the socket's own `sendmsg`; `send(2)` goes to the socket directly. Measured on
//! the proxy pair, those file-layer steps were about 0.5 µs of kernel time per request
//! per proxy, where HAProxy's `sendto` costs about 0.15. So a write of one buffer is
//! sent as it is, and a write of several small ones (at most [`COALESCE_MAX`] bytes in
//! all, the usual request or response) is copied into one buffer first; larger writes
//! stay vectored, where a copy would cost more than it saves.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Vectored writes up to this many bytes in all are copied and sent as one buffer.
pub const COALESCE_MAX: usize = 16 * 1024;

thread_local! {
    /// Where several small buffers are joined: one per thread, not per connection (an
    /// idle connection holds no buffer), borrowed only for the length of one write.
    static JOINED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `io`, with vectored writes sent as one buffer (see the module's docs).
#[derive(Debug)]
pub struct Coalesced<IO> {
    io: IO,
}

impl<IO> Coalesced<IO> {
    /// Wraps `io`.
    pub fn new(io: IO) -> Self {
        Self { io }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesced<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesced<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut parts = bufs.iter().filter(|b| !b.is_empty());
        let (Some(first), second) = (parts.next(), parts.next()) else {
            return Poll::Ready(Ok(0));
        };
        let Some(second) = second else {
            // One buffer: sent as it is.
            return Pin::new(&mut this.io).poll_write(cx, first);
        };
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total > COALESCE_MAX {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        // A write may take part of the bytes, or none (Pending); the caller then
        // offers what is left again, so nothing is kept between calls.
        JOINED.with(|joined| {
            let Ok(mut joined) = joined.try_borrow_mut() else {
                return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
            };
            joined.clear();
            joined.extend_from_slice(first);
            joined.extend_from_slice(second);
            for b in parts {
                joined.extend_from_slice(b);
            }
            Pin::new(&mut this.io).poll_write(cx, &joined)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A writer that takes at most `limit` bytes per call and records each call.
    #[derive(Default)]
    struct Recorder {
        out: Vec<u8>,
        calls: Vec<(&'static str, usize)>,
        limit: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.out.extend_from_slice(&buf[..n]);
            self.calls.push(("write", n));
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.limit - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
            }
            self.calls.push(("writev", n));
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, bufs: &[&[u8]]) -> Vec<u8> {
        let want: Vec<u8> = bufs.concat();
        let mut done = 0;
        while done < want.len() {
            // Offer what is left, split as the caller split it.
            let mut slices = Vec::new();
            let mut skip = done;
            for b in bufs {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                slices.push(io::IoSlice::new(&b[skip..]));
                skip = 0;
            }
            let n = w.write_vectored(&slices).await.unwrap();
            assert!(n > 0);
            done += n;
        }
        want
    }

    #[tokio::test]
    async fn small_writes_are_one_send_large_ones_stay_vectored_and_bytes_keep_their_order() {
        let big = vec![7u8; COALESCE_MAX];
        let cases: Vec<(Vec<&[u8]>, &str)> = vec![
            (vec![b"head".as_slice()], "write"),
            (
                vec![b"".as_slice(), b"head".as_slice(), b"".as_slice()],
                "write",
            ),
            (
                vec![b"head".as_slice(), b"body".as_slice(), b"!".as_slice()],
                "write",
            ),
            (vec![b"head".as_slice(), big.as_slice()], "writev"),
        ];
        for (bufs, kind) in cases {
            let mut w = Coalesced::new(Recorder {
                limit: usize::MAX,
                ..Recorder::default()
            });
            let want = write_all_vectored(&mut w, &bufs).await;
            assert_eq!(w.get_ref().out, want);
            assert_eq!(w.get_ref().calls.len(), 1, "{:?}", w.get_ref().calls);
            assert_eq!(w.get_ref().calls[0].0, kind);
        }
        // Short writes: what is left is offered again and arrives once, in order.
        let mut w = Coalesced::new(Recorder {
            limit: 3,
            ..Recorder::default()
        });
        let want = write_all_vectored(&mut w, &[b"abcd", b"efgh", b"ij"]).await;
        assert_eq!(w.get_ref().out, want);
        assert!(
            w.get_ref()
                .calls
                .iter()
                .all(|(k, n)| *k == "write" && *n <= 3)
        );
    }

    #[tokio::test]
    async fn a_real_socket_gets_every_byte() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut w = Coalesced::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let big = vec![9u8; 3 * COALESCE_MAX];
        let mut want = Vec::new();
        for bufs in [
            vec![b"GET / HTTP/1.1\r\n\r\n".as_slice()],
            vec![b"head".as_slice(), b"body".as_slice()],
            vec![b"x".as_slice(), big.as_slice(), b"y".as_slice()],
        ] {
            want.extend(write_all_vectored(&mut w, &bufs).await);
        }
        w.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), want);
    }
}
