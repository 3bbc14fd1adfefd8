//! Unit tests of `authority`.

use super::super::hpack::{Field, encode};
use super::*;
use proptest::prelude::*;

/// What grpcio 1.85.1 (gRPC C-core 58) sent on `unix:/tmp/probe/s.sock` for two
/// unary calls on one channel, after the server's empty SETTINGS: the preface,
/// SETTINGS, WINDOW_UPDATE, SETTINGS ACK, then per call HEADERS, WINDOW_UPDATE, DATA
/// and (the calls timed out) RST_STREAM. The first HEADERS inserts `:authority:
/// tmp%2Fprobe%2Fs.sock` and the other fields into the dynamic table; the second
/// refers to them by index.
const GRPCIO_TWO_CALLS: &str = "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a000024040000000000000200000000000300000000000400400000000500400000000600004000fe0300000001000004080000000000003f000100000004010000000000010d01040000000140053a706174681f2f537069666665576f726b6c6f61644150492f46657463684a575453564944400a3a617574686f7269747914746d7025324670726f6265253246732e736f636b8386400c636f6e74656e742d74797065106170706c69636174696f6e2f677270634002746508747261696c6572734014677270632d6163636570742d656e636f64696e67176964656e746974792c206465666c6174652c20677a6970400c677270632d74696d656f7574043439376d400a757365722d6167656e7430677270632d707974686f6e2f312e38352e3120677270632d632f35382e302e3020286c696e75783b20636874747032290012776f726b6c6f61642e7370696666652e696f04747275650000040800000000010000000500000500010000000100000000000000040800000000000000000500000403000000000100000008000034010400000003c4c38386c2c1c0400c677270632d74696d656f7574043530316dbf0012776f726b6c6f61642e7370696666652e696f047472756500000408000000000300000005000005000100000003000000000000000403000000000300000008";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    ty: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let len = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(&[ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The frames after the preface (which must be there).
fn frames(bytes: &[u8]) -> Vec<Frame> {
    assert_eq!(&bytes[..24], PREFACE);
    let mut rest = &bytes[24..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        out.push(Frame {
            ty: rest[3],
            flags: rest[4],
            stream: u32::from_be_bytes(rest[5..9].try_into().unwrap()),
            payload: rest[9..9 + len].to_vec(),
        });
        rest = &rest[9 + len..];
    }
    out
}

fn grpcio() -> Vec<u8> {
    hex::decode(GRPCIO_TWO_CALLS).unwrap()
}

fn preface_and(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}

/// Runs `rw` over what was pushed until it makes no more progress.
fn drain(rw: &mut Rewriter, out: &mut Vec<u8>) -> Result<(), RewriteError> {
    loop {
        let (before_in, before_out) = (rw.input.len(), out.len());
        rw.step(out)?;
        if rw.input.len() == before_in && out.len() == before_out {
            return Ok(());
        }
    }
}

fn rewrite(input: &[u8]) -> Result<Vec<u8>, RewriteError> {
    rewrite_in(&[input])
}

fn rewrite_in(chunks: &[&[u8]]) -> Result<Vec<u8>, RewriteError> {
    let mut rw = Rewriter::default();
    let mut out = Vec::new();
    for chunk in chunks {
        rw.push(chunk);
        drain(&mut rw, &mut out)?;
    }
    Ok(out)
}

/// The header blocks of `out` as h2 decodes them (one decoder for the connection),
/// with the flags of their HEADERS frame; checks CONTINUATION framing, frame sizes,
/// and that the decoder's dynamic table stays empty.
fn server_blocks(out: &[u8]) -> Vec<(u32, u8, Vec<Field>)> {
    let mut decoder = Decoder::default();
    let mut blocks = Vec::new();
    let mut open: Option<(u32, u8, Vec<u8>)> = None;
    for f in frames(out) {
        assert!(
            f.payload.len() <= MAX_FRAME_PAYLOAD,
            "{} bytes",
            f.payload.len()
        );
        let (stream, flags, mut block) = match (f.ty, open.take()) {
            (HEADERS, None) => {
                assert_eq!(f.flags & PADDED, 0, "padding is dropped");
                let skip = if f.flags & PRIORITY != 0 { 5 } else { 0 };
                (f.stream, f.flags, f.payload[skip..].to_vec())
            }
            (CONTINUATION, Some((stream, flags, mut block))) => {
                assert_eq!(f.stream, stream);
                block.extend_from_slice(&f.payload);
                (stream, flags, block)
            }
            (_, Some(_)) => panic!("a frame inside a header block"),
            _ => continue,
        };
        if f.flags & END_HEADERS != 0 {
            let fields = decoder.decode(&block, usize::MAX).unwrap();
            blocks.push((stream, flags, fields));
        } else {
            open = Some((stream, flags, std::mem::take(&mut block)));
        }
    }
    assert!(open.is_none(), "unfinished header block");
    let mut probe = Decoder::default();
    assert_eq!(
        decoder.decode(&[0xbe], usize::MAX),
        probe.decode(&[0xbe], usize::MAX),
        "the server's dynamic table is empty"
    );
    blocks
}

fn value<'a>(fields: &'a [Field], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|f| f.name == name.as_bytes())
        .map(|f| std::str::from_utf8(&f.value).unwrap())
}

fn headers_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let fields: Vec<Field> = fields
        .iter()
        .map(|(n, v)| Field {
            name: n.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            never_indexed: false,
        })
        .collect();
    let mut block = Vec::new();
    encode(&fields, &mut block);
    block
}

/// A literal with incremental indexing, literal name, raw strings.
fn indexed_literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x40];
    for s in [name, value] {
        super::super::hpack::integer(s.len(), 7, 0, &mut out);
        out.extend_from_slice(s.as_bytes());
    }
    out
}

fn request_block(authority: &str) -> Vec<u8> {
    headers_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/p"),
        (":authority", authority),
    ])
}

#[test]
fn grpcio_socket_path_authority_becomes_localhost_in_both_calls() {
    let input = grpcio();
    let out = rewrite(&input).unwrap();
    let blocks = server_blocks(&out);
    assert_eq!(blocks.len(), 2);
    for ((stream, flags, fields), timeout) in blocks.iter().zip(["497m", "501m"]) {
        assert_eq!(
            flags & (END_HEADERS | END_STREAM),
            END_HEADERS,
            "stream {stream}"
        );
        assert_eq!(value(fields, ":authority"), Some("localhost"));
        assert_eq!(
            value(fields, ":path"),
            Some("/SpiffeWorkloadAPI/FetchJWTSVID")
        );
        assert_eq!(value(fields, ":method"), Some("POST"));
        assert_eq!(value(fields, "workload.spiffe.io"), Some("true"));
        assert_eq!(value(fields, "grpc-timeout"), Some(timeout));
        assert_eq!(
            value(fields, "user-agent"),
            Some("grpc-python/1.85.1 grpc-c/58.0.0 (linux; chttp2)")
        );
        assert_eq!(fields.len(), 10);
    }
    assert_eq!([blocks[0].0, blocks[1].0], [1, 3]);
    // Every other frame is passed on as it came, in order.
    let others = |bytes: &[u8]| -> Vec<Frame> {
        frames(bytes)
            .into_iter()
            .filter(|f| f.ty != HEADERS)
            .collect()
    };
    assert_eq!(others(&out), others(&input));
    let types: Vec<u8> = frames(&out).iter().map(|f| f.ty).collect();
    assert_eq!(
        types,
        frames(&input).iter().map(|f| f.ty).collect::<Vec<_>>()
    );
}

#[test]
fn valid_authorities_are_kept() {
    for authority in [
        "localhost",
        "example.com:443",
        "127.0.0.1:15012",
        "[::1]:80",
        "unix.socket",
    ] {
        let input = preface_and(&[frame(HEADERS, END_HEADERS, 1, &request_block(authority))]);
        let blocks = server_blocks(&rewrite(&input).unwrap());
        assert_eq!(value(&blocks[0].2, ":authority"), Some(authority));
    }
    for bad in ["%2Ftmp%2Fagent.sock", "/tmp/agent.sock", "", "a b", "x@"] {
        let input = preface_and(&[frame(HEADERS, END_HEADERS, 1, &request_block(bad))]);
        let blocks = server_blocks(&rewrite(&input).unwrap());
        assert_eq!(
            value(&blocks[0].2, ":authority"),
            Some("localhost"),
            "{bad:?}"
        );
    }
    // No :authority at all stays without one.
    let block = headers_block(&[(":method", "GET"), (":path", "/"), (":scheme", "http")]);
    let input = preface_and(&[frame(HEADERS, END_HEADERS, 1, &block)]);
    let blocks = server_blocks(&rewrite(&input).unwrap());
    assert_eq!(value(&blocks[0].2, ":authority"), None);
}

/// Reads split at every byte boundary, and one byte at a time, give the same bytes.
#[test]
fn split_reads_give_the_same_output() {
    let input = grpcio();
    let whole = rewrite(&input).unwrap();
    for i in 0..=input.len() {
        assert_eq!(
            rewrite_in(&[&input[..i], &input[i..]]).unwrap(),
            whole,
            "split at {i}"
        );
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(rewrite_in(&bytes).unwrap(), whole);
}

#[test]
fn continuation_frames_are_joined_and_reframed() {
    let block = request_block("%2Ftmp%2Fa.sock");
    let (a, rest) = block.split_at(3);
    let (b, c) = rest.split_at(5);
    let input = preface_and(&[
        frame(HEADERS, END_STREAM, 5, a),
        frame(CONTINUATION, 0, 5, b),
        frame(CONTINUATION, END_HEADERS, 5, c),
        frame(0x8, 0, 0, &[0, 0, 1, 0]),
    ]);
    let out = rewrite(&input).unwrap();
    let f = frames(&out);
    assert_eq!(f.len(), 2, "one HEADERS frame and the WINDOW_UPDATE");
    assert_eq!(f[0].flags, END_STREAM | END_HEADERS);
    let blocks = server_blocks(&out);
    assert_eq!(value(&blocks[0].2, ":authority"), Some("localhost"));
    assert_eq!(value(&blocks[0].2, ":path"), Some("/p"));
}

#[test]
fn padding_is_dropped_and_priority_kept() {
    let block = request_block("/tmp/a.sock");
    let mut payload = vec![7]; // pad length
    payload.extend_from_slice(&[0x80, 0, 0, 3, 200]); // exclusive, depends on 3, weight 200
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0; 7]);
    let input = preface_and(&[frame(
        HEADERS,
        END_STREAM | END_HEADERS | PADDED | PRIORITY,
        7,
        &payload,
    )]);
    let out = rewrite(&input).unwrap();
    let f = frames(&out);
    assert_eq!(f[0].flags, END_STREAM | END_HEADERS | PRIORITY);
    assert_eq!(f[0].payload[..5], [0x80, 0, 0, 3, 200]);
    let blocks = server_blocks(&out);
    assert_eq!(value(&blocks[0].2, ":authority"), Some("localhost"));
    // Padding alone (PADDED without PRIORITY), zero-length padding, and padding
    // that uses up the whole payload.
    for pad in [0u8, 3] {
        let mut payload = vec![pad];
        payload.extend_from_slice(&block);
        payload.extend(std::iter::repeat_n(0, usize::from(pad)));
        let input = preface_and(&[frame(HEADERS, END_HEADERS | PADDED, 1, &payload)]);
        assert_eq!(server_blocks(&rewrite(&input).unwrap()).len(), 1);
    }
    let input = preface_and(&[frame(HEADERS, END_HEADERS | PADDED, 1, &[2, 0, 0])]);
    assert_eq!(server_blocks(&rewrite(&input).unwrap())[0].2, []);
}

/// A block that grows past one frame when re-encoded (dynamic-table references
/// become literals) is cut into HEADERS + CONTINUATION of at most 16384 bytes.
#[test]
fn large_blocks_are_cut_into_max_size_frames() {
    let big = "v".repeat(4000);
    // Block 1 inserts x-big (literal with indexing); block 2 refers to it 10 times.
    let mut b1 = request_block("/tmp/a.sock");
    b1.extend_from_slice(&indexed_literal("x-big", &big));
    let mut b2 = request_block("/tmp/a.sock");
    b2.extend_from_slice(&[0xbe; 10]);
    let input = preface_and(&[
        frame(HEADERS, END_HEADERS, 1, &b1),
        frame(
            HEADERS,
            END_HEADERS | PRIORITY,
            3,
            &[[0, 0, 0, 1, 16].as_slice(), &b2].concat(),
        ),
    ]);
    let out = rewrite(&input).unwrap();
    let f = frames(&out);
    let sizes: Vec<(u8, usize)> = f.iter().map(|f| (f.ty, f.payload.len())).collect();
    assert_eq!(sizes[0].0, HEADERS);
    assert_eq!(sizes[1], (HEADERS, MAX_FRAME_PAYLOAD));
    assert_eq!(sizes[2], (CONTINUATION, MAX_FRAME_PAYLOAD));
    assert_eq!(sizes[3].0, CONTINUATION);
    assert_eq!(f[1].flags, PRIORITY);
    assert_eq!(f[3].flags, END_HEADERS);
    let blocks = server_blocks(&out);
    let bigs: Vec<&Field> = blocks[1].2.iter().filter(|f| f.name == b"x-big").collect();
    assert_eq!(bigs.len(), 10);
    assert!(bigs.iter().all(|f| f.value == big.as_bytes()));
}

#[test]
fn oversized_blocks_close_the_connection() {
    // Encoded: one frame announcing more than the limit is refused before it is read.
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(&frame(HEADERS, 0, 1, &[])[..]);
    input[24..27].copy_from_slice(&[0x01, 0x00, 0x01]); // 65537 bytes
    assert_eq!(
        rewrite(&input),
        Err(RewriteError::BlockTooLarge { stream: 1 })
    );
    // ... or the limit reached over CONTINUATION frames.
    let chunk = vec![0u8; 16_384];
    let mut frames = vec![frame(HEADERS, 0, 1, &chunk)];
    frames.extend(std::iter::repeat_n(frame(CONTINUATION, 0, 1, &chunk), 4));
    assert_eq!(
        rewrite(&preface_and(&frames)),
        Err(RewriteError::BlockTooLarge { stream: 1 })
    );
    // Decoded: 20 references to a 4000-byte entry.
    let b1 = indexed_literal("n", &"v".repeat(4000));
    let input = preface_and(&[
        frame(HEADERS, END_HEADERS, 1, &b1),
        frame(HEADERS, END_HEADERS, 3, &[0xbe; 20]),
    ]);
    assert_eq!(
        rewrite(&input),
        Err(RewriteError::Hpack {
            stream: 3,
            error: HpackError::HeaderListTooLarge {
                limit: MAX_HEADER_BLOCK
            }
        })
    );
}

#[test]
fn malformed_frames_close_the_connection() {
    let block = request_block("localhost");
    for (frames, err) in [
        (
            vec![frame(HEADERS, END_HEADERS | PADDED, 1, &[5, 0x82])],
            RewriteError::MalformedHeaders { stream: 1 },
        ),
        (
            vec![frame(HEADERS, END_HEADERS | PADDED, 1, &[])],
            RewriteError::MalformedHeaders { stream: 1 },
        ),
        (
            vec![frame(HEADERS, END_HEADERS | PRIORITY, 1, &[0, 0, 0])],
            RewriteError::MalformedHeaders { stream: 1 },
        ),
        (
            vec![frame(HEADERS, END_HEADERS, 0, &block)],
            RewriteError::StreamZero,
        ),
        (
            vec![frame(CONTINUATION, END_HEADERS, 1, &block)],
            RewriteError::UnexpectedContinuation { stream: 1 },
        ),
        (
            vec![frame(HEADERS, 0, 1, &block), frame(0x0, 0, 1, b"data")],
            RewriteError::ExpectedContinuation {
                expected: 1,
                frame_type: 0,
                stream: 1,
            },
        ),
        (
            vec![
                frame(HEADERS, 0, 1, &block),
                frame(CONTINUATION, END_HEADERS, 3, &[]),
            ],
            RewriteError::ExpectedContinuation {
                expected: 1,
                frame_type: CONTINUATION,
                stream: 3,
            },
        ),
        (
            vec![frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2])],
            RewriteError::PushPromise,
        ),
        (
            vec![frame(HEADERS, END_HEADERS, 1, &[0x80])],
            RewriteError::Hpack {
                stream: 1,
                error: HpackError::InvalidIndex(0),
            },
        ),
    ] {
        assert_eq!(rewrite(&preface_and(&frames)), Err(err));
    }
}

#[test]
fn not_http2_passes_through() {
    let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(rewrite(input).unwrap(), input);
    assert_eq!(
        rewrite_in(&[b"PRI * HTTP/1.1", b"\r\n"]).unwrap(),
        b"PRI * HTTP/1.1\r\n"
    );
    // A partial preface waits.
    assert_eq!(rewrite(&PREFACE[..10]).unwrap(), b"");
}

#[test]
fn data_frames_stream_through_without_waiting() {
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(&frame(0x0, 0, 1, &[9; 100])[..50]);
    let out = rewrite(&input).unwrap();
    assert_eq!(
        out, input,
        "the start of a DATA frame is passed on before its end"
    );
}

/// A gRPC-shaped service answering trailers-only with the `:authority` and the peer
/// uid it was given.
#[derive(Debug, Clone)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "SpiffeWorkloadAPI";
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let uid = req
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .map_or(String::new(), |c| c.uid().to_string());
        let authority = req
            .uri()
            .authority()
            .map_or(String::new(), |a| a.to_string());
        let resp = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .header("x-authority", authority)
            .header("x-peer-uid", uid)
            .body(tonic::body::Body::empty())
            .unwrap();
        std::future::ready(Ok(resp))
    }
}

/// Replays grpcio's two calls (without its RST_STREAMs) against tonic on a unix
/// socket; returns per stream the response headers, or the RST_STREAM error code.
async fn replay(wrap: bool) -> Vec<(u32, Result<Vec<Field>, u32>)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let router = tonic::transport::Server::builder().add_service(Echo);
    let server = if wrap {
        tokio::spawn(router.serve_with_incoming(super::super::incoming(listener)))
    } else {
        let plain = tokio_stream::wrappers::UnixListenerStream::new(listener);
        tokio::spawn(router.serve_with_incoming(plain))
    };
    let mut conn = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut input = PREFACE.to_vec();
    for f in frames(&grpcio()) {
        if f.ty != 0x3 && !(f.ty == 0x4 && f.flags == 1) {
            input.extend_from_slice(&frame(f.ty, f.flags, f.stream, &f.payload));
        }
    }
    conn.write_all(&input).await.unwrap();
    let mut received = Vec::new();
    let mut answers = Vec::new();
    let mut decoder = Decoder::default();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while answers.len() < 2 {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, conn.read(&mut buf))
            .await
            .expect("two answers within 10 s")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        received.extend_from_slice(&buf[..n]);
        while received.len() >= 9 {
            let len = usize::from(received[0]) << 16
                | usize::from(received[1]) << 8
                | usize::from(received[2]);
            if received.len() < 9 + len {
                break;
            }
            let f: Vec<u8> = received.drain(..9 + len).collect();
            let stream = u32::from_be_bytes(f[5..9].try_into().unwrap());
            match f[3] {
                HEADERS => {
                    assert_ne!(f[4] & END_HEADERS, 0);
                    answers.push((stream, Ok(decoder.decode(&f[9..], usize::MAX).unwrap())));
                }
                0x3 => answers.push((
                    stream,
                    Err(u32::from_be_bytes(f[9..13].try_into().unwrap())),
                )),
                _ => {}
            }
        }
    }
    server.abort();
    answers.sort_by_key(|a| a.0);
    answers
}

/// Without the adapter, h2 refuses grpcio's `:authority` with PROTOCOL_ERROR
/// (stream reset, code 1) before the service runs; with it, the service answers,
/// sees `localhost`, and gets the caller's credentials through `Connected`.
#[tokio::test]
async fn tonic_serves_grpcio_with_peer_credentials() {
    let refused = replay(false).await;
    assert_eq!(refused, [(1, Err(1)), (3, Err(1))]);

    let served = replay(true).await;
    use std::os::unix::fs::MetadataExt as _;
    let uid = std::fs::metadata("/proc/self").unwrap().uid().to_string();
    assert_eq!(served.iter().map(|a| a.0).collect::<Vec<_>>(), [1, 3]);
    for (stream, answer) in served {
        let fields = answer.unwrap_or_else(|code| panic!("stream {stream} reset: {code}"));
        assert_eq!(value(&fields, ":status"), Some("200"));
        assert_eq!(value(&fields, "grpc-status"), Some("0"));
        assert_eq!(value(&fields, "x-authority"), Some("localhost"));
        assert_eq!(value(&fields, "x-peer-uid"), Some(uid.as_str()));
    }
}

proptest! {
    #[test]
    fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&bytes);
        let _ = rewrite(&input);
    }

    #[test]
    fn arbitrary_header_blocks_never_panic(
        blocks in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..6)
    ) {
        let input: Vec<Vec<u8>> = blocks
            .iter()
            .map(|(flags, b)| frame(HEADERS, *flags | END_HEADERS, 1, b))
            .collect();
        if let Ok(out) = rewrite(&preface_and(&input)) {
            prop_assert!(frames(&out).iter().all(|f| f.payload.len() <= MAX_FRAME_PAYLOAD));
        }
    }

    #[test]
    fn any_chunking_gives_the_same_output(cuts in proptest::collection::vec(0usize..800, 0..12)) {
        let input = grpcio();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for c in cuts {
            chunks.push(&input[last..c]);
            last = c;
        }
        chunks.push(&input[last..]);
        prop_assert_eq!(rewrite_in(&chunks).unwrap(), rewrite(&input).unwrap());
    }
}
