//! [`AuthorityFix`]: an I/O adapter between an accepted unix socket and tonic that makes
//! the `:authority` of gRPC clients built on grpc-core (Python, C++, Ruby, py-spiffe),
//! grpc-java and grpc-swift acceptable to h2. Over a unix socket they send the socket
//! path (raw or percent-encoded) as `:authority`; h2 parses it as a URI authority,
//! fails and resets the stream with `PROTOCOL_ERROR` before any Warden code runs.
//!
//! Server-to-client bytes pass untouched. Client-to-server, the 24-byte preface and every
//! frame but HEADERS and CONTINUATION pass through as they come; each client header block
//! is decoded with a decoder that mirrors the client's HPACK dynamic table, an
//! `:authority` that `http::uri::Authority` rejects becomes `localhost`, and the block
//! is re-encoded without the dynamic table (so h2's table stays empty and cannot
//! disagree with the client's) and re-framed in frames of at most 16384 bytes, keeping
//! END_STREAM and the priority, dropping the padding. Oversized or malformed blocks end
//! the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use tonic::transport::server::Connected;

use super::hpack::{self, Decoder, HpackError};

/// The client connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
/// Largest client header block accepted, both as sent (all fragments, with padding)
/// and decoded (counted as `SETTINGS_MAX_HEADER_LIST_SIZE` does). h2 itself accepts a
/// 16 KiB header list by default, so nothing it would serve is refused here.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Frame payload size re-encoded blocks are cut to: the `SETTINGS_MAX_FRAME_SIZE`
/// minimum, which every peer accepts.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// Rewritten bytes produced before they are handed on; bounds the output buffer to this
/// plus one re-encoded block.
const OUT_HIGH_WATER: usize = 32 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;
/// What an unparseable `:authority` becomes.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Why a client's bytes cannot be rewritten; each ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// A header block (HEADERS plus CONTINUATION frames) is larger than the limit.
    #[error("header block on stream {stream} is larger than {MAX_HEADER_BLOCK} bytes")]
    BlockTooLarge {
        /// The stream the block is for.
        stream: u32,
    },
    /// A HEADERS frame too short for its padding length or priority fields.
    #[error("HEADERS frame on stream {stream} is shorter than its padding and priority fields")]
    MalformedHeaders {
        /// The stream the frame is for.
        stream: u32,
    },
    /// A HEADERS frame on stream 0.
    #[error("HEADERS frame on stream 0")]
    StreamZero,
    /// A header block left open was followed by something other than its CONTINUATION.
    #[error(
        "header block on stream {expected} not continued: frame type {frame_type:#x} on stream {stream} came instead"
    )]
    ExpectedContinuation {
        /// The stream whose block is open.
        expected: u32,
        /// The frame that came.
        frame_type: u8,
        /// Its stream.
        stream: u32,
    },
    /// A CONTINUATION frame with no open header block.
    #[error("CONTINUATION frame on stream {stream} without a HEADERS frame before it")]
    UnexpectedContinuation {
        /// Its stream.
        stream: u32,
    },
    /// PUSH_PROMISE, which a client must not send.
    #[error("PUSH_PROMISE from a client")]
    PushPromise,
    /// The block's HPACK does not decode.
    #[error("header block on stream {stream}: {error}")]
    Hpack {
        /// The stream the block is for.
        stream: u32,
        /// What was wrong.
        error: HpackError,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the client preface.
    Preface,
    /// Reading frames.
    Frames,
    /// Not HTTP/2: everything passes through, for h2 to refuse.
    Passthrough,
}

/// A header block waiting for its CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragments: Vec<u8>,
}

/// The client-to-server rewriting, free of I/O: bytes in with [`Rewriter::push`],
/// rewritten bytes out with [`Rewriter::step`].
#[derive(Debug)]
pub(crate) struct Rewriter {
    phase: Phase,
    input: BytesMut,
    /// Payload bytes of a passed-through frame still to copy.
    forward: usize,
    block: Option<Block>,
    decoder: Decoder,
    rewrote: bool,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self {
            phase: Phase::Preface,
            input: BytesMut::new(),
            forward: 0,
            block: None,
            decoder: Decoder::default(),
            rewrote: false,
        }
    }
}

impl Rewriter {
    /// Adds bytes read from the client.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Whether [`Rewriter::step`] would use more input.
    fn has_input(&self) -> bool {
        !self.input.is_empty()
    }

    /// Rewrites buffered input into `out` until it needs more input or `out` holds
    /// more than `OUT_HIGH_WATER` bytes.
    pub(crate) fn step(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        while out.len() < OUT_HIGH_WATER {
            match self.phase {
                Phase::Passthrough => {
                    out.extend_from_slice(&self.input);
                    self.input.clear();
                    return Ok(());
                }
                Phase::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.phase = Phase::Passthrough;
                    } else if n == PREFACE.len() {
                        out.extend_from_slice(PREFACE);
                        self.input.advance(PREFACE.len());
                        self.phase = Phase::Frames;
                    } else {
                        return Ok(());
                    }
                }
                Phase::Frames => {
                    if !self.frame(out)? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles the next piece of a frame; `false` when more input is needed.
    fn frame(&mut self, out: &mut Vec<u8>) -> Result<bool, RewriteError> {
        if self.forward > 0 {
            let n = self.forward.min(self.input.len());
            if n == 0 {
                return Ok(false);
            }
            out.extend_from_slice(&self.input[..n]);
            self.input.advance(n);
            self.forward -= n;
            return Ok(true);
        }
        let Some(header) = self.input.get(..FRAME_HEADER_LEN) else {
            return Ok(false);
        };
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (frame_type, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if let Some(block) = &self.block
            && (frame_type != CONTINUATION || stream != block.stream)
        {
            return Err(RewriteError::ExpectedContinuation {
                expected: block.stream,
                frame_type,
                stream,
            });
        }
        match frame_type {
            HEADERS | CONTINUATION => {
                let buffered = self.block.as_ref().map_or(0, |b| b.fragments.len());
                if buffered + len > MAX_HEADER_BLOCK {
                    return Err(RewriteError::BlockTooLarge { stream });
                }
                if self.input.len() < FRAME_HEADER_LEN + len {
                    return Ok(false);
                }
                let frame = self.input.split_to(FRAME_HEADER_LEN + len);
                self.header_frame(frame_type, flags, stream, &frame[FRAME_HEADER_LEN..], out)?;
            }
            PUSH_PROMISE => return Err(RewriteError::PushPromise),
            _ => {
                out.extend_from_slice(&self.input[..FRAME_HEADER_LEN]);
                self.input.advance(FRAME_HEADER_LEN);
                self.forward = len;
            }
        }
        Ok(true)
    }

    /// A whole HEADERS or CONTINUATION frame.
    fn header_frame(
        &mut self,
        frame_type: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        let mut block = if frame_type == HEADERS {
            if stream == 0 {
                return Err(RewriteError::StreamZero);
            }
            let malformed = || RewriteError::MalformedHeaders { stream };
            let mut p = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&n, rest) = p.split_first().ok_or_else(malformed)?;
                pad = usize::from(n);
                p = rest;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let (fields, rest) = p.split_first_chunk::<5>().ok_or_else(malformed)?;
                priority = Some(*fields);
                p = rest;
            }
            let end = p.len().checked_sub(pad).ok_or_else(malformed)?;
            Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragments: p[..end].to_vec(),
            }
        } else {
            let mut block = self
                .block
                .take()
                .ok_or(RewriteError::UnexpectedContinuation { stream })?;
            block.fragments.extend_from_slice(payload);
            block
        };
        if flags & END_HEADERS == 0 {
            self.block = Some(block);
            return Ok(());
        }
        let mut fields = self
            .decoder
            .decode(&block.fragments, MAX_HEADER_BLOCK)
            .map_err(|error| RewriteError::Hpack { stream, error })?;
        for field in &mut fields {
            if field.name == b":authority"
                && http::uri::Authority::try_from(field.value.as_slice()).is_err()
            {
                if !self.rewrote {
                    self.rewrote = true;
                    tracing::debug!(
                        authority = %String::from_utf8_lossy(&field.value),
                        "client sent an :authority h2 refuses (a unix socket path?); passing it on as localhost"
                    );
                }
                field.value = REPLACEMENT_AUTHORITY.to_vec();
            }
        }
        block.fragments.clear();
        hpack::encode(&fields, &mut block.fragments);
        write_block(&block, out);
        Ok(())
    }
}

/// Frames a re-encoded block as HEADERS plus CONTINUATION frames of at most
/// `MAX_FRAME_PAYLOAD` bytes.
fn write_block(block: &Block, out: &mut Vec<u8>) {
    let encoded = &block.fragments;
    let first_room = MAX_FRAME_PAYLOAD - block.priority.map_or(0, |p| p.len());
    let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
    let mut flags = 0;
    if block.end_stream {
        flags |= END_STREAM;
    }
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
    frame_header(
        priority.len() + first.len(),
        HEADERS,
        flags,
        block.stream,
        out,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        let flags = if tail.is_empty() { END_HEADERS } else { 0 };
        frame_header(chunk.len(), CONTINUATION, flags, block.stream, out);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

fn frame_header(len: usize, frame_type: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    // `len` <= MAX_FRAME_PAYLOAD < 2^24.
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(frame_type);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// An accepted connection whose client-to-server HTTP/2 header blocks are rewritten as
/// the module describes. tonic sees the inner stream's connect info (for a
/// `UnixStream`, `UdsConnectInfo` with the peer's credentials).
#[derive(Debug)]
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    out: Vec<u8>,
    out_pos: usize,
    scratch: Box<[u8]>,
    done: bool,
}

impl<S> AuthorityFix<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::default(),
            out: Vec::new(),
            out_pos: 0,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            done: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                return Poll::Ready(Ok(()));
            }
            this.out.clear();
            this.out_pos = 0;
            if this.done {
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.has_input() {
                if let Err(e) = this.rewriter.step(&mut this.out) {
                    this.done = true;
                    tracing::debug!(error = %e, "closing a gRPC connection: its HTTP/2 headers cannot be rewritten");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                if !this.out.is_empty() {
                    continue;
                }
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream; a partial frame left over is h2's to notice.
                this.done = true;
                return Poll::Ready(Ok(()));
            }
            this.rewriter.push(read.filled());
        }
    }
}

crate::delegate_async_write!(AuthorityFix, inner);

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
