//! `warden-test-app`: small real applications for the proxy's end-to-end tests.
//!
//! - `warden-test-app http ADDR [--name NAME]`: HTTP/1.1 and h2c (prior knowledge) on
//!   one port. Every request gets 200 and a JSON description of itself:
//!   `{"name", "method", "path", "uri", "authority", "version", "headers", "body"}`
//!   (header names lowercased, repeated headers joined with `,`), so a test sees what
//!   the proxies forwarded (`x-forwarded-client-cert`, the authority, JWT-derived
//!   headers). `/status/NNN` answers status NNN, `/delay/MS` answers after MS
//!   milliseconds. `Upgrade: websocket` gets an RFC 6455 `101` and an echo of every
//!   text or binary frame. `content-type: application/grpc` requests are gRPC: the
//!   unary method `/warden.test.Echo/Say` answers each request message with the same
//!   bytes and `grpc-status: 0`; other methods get `grpc-status: 12` (UNIMPLEMENTED).
//! - `warden-test-app tcp ADDR`: echoes every byte back.
//!
//! Either logs one JSON line `{"message":"serving","addr":...}` on stderr once
//! listening.
#![allow(clippy::unwrap_used)] // test support: panics are failures

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use warden_tests::mesh::ws;

type Body = BoxBody<Bytes, Infallible>;

fn usage() -> ! {
    eprintln!("usage: warden-test-app http ADDR [--name NAME] | warden-test-app tcp ADDR");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(addr)) = (args.first(), args.get(1)) else {
        usage()
    };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|_| usage());
    let name = match args.get(2..) {
        Some([flag, name]) if flag == "--name" => name.clone(),
        Some([]) => "app".to_string(),
        _ => usage(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| {
            eprintln!(
                "{}",
                serde_json::json!({"message": "bind failed", "addr": addr.to_string(), "error": e.to_string()})
            );
            std::process::exit(1)
        });
        eprintln!(
            "{}",
            serde_json::json!({"message": "serving", "addr": listener.local_addr().unwrap().to_string(), "mode": mode, "name": name})
        );
        match mode.as_str() {
            "http" => serve_http(listener, name).await,
            "tcp" => serve_tcp(listener).await,
            _ => usage(),
        }
    });
}

async fn serve_tcp(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown().await;
        });
    }
}

async fn serve_http(listener: TcpListener, name: String) {
    let name: &'static str = Box::leak(name.into_boxed_str());
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let service = service_fn(move |req| handle(req, name));
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(s), service)
                .await;
        });
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn headers_json(h: &HeaderMap) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for name in h.keys() {
        let joined = h
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        m.insert(name.as_str().to_string(), joined.into());
    }
    m.into()
}

async fn handle(req: Request<Incoming>, name: &'static str) -> Result<Response<Body>, Infallible> {
    let is_grpc = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        return Ok(grpc(req).await);
    }
    let wants_ws = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if wants_ws {
        return Ok(websocket(req));
    }
    let path = req.uri().path().to_string();
    let mut status = StatusCode::OK;
    if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    }
    if let Some(ms) = path.strip_prefix("/delay/")
        && let Ok(ms) = ms.parse::<u64>()
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let authority = req.uri().authority().map(|a| a.to_string()).or_else(|| {
        req.headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(String::from)
    });
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let v = serde_json::json!({
        "name": name,
        "method": parts.method.as_str(),
        "path": path,
        "uri": parts.uri.to_string(),
        "authority": authority,
        "version": format!("{:?}", parts.version),
        "headers": headers_json(&parts.headers),
        "body": String::from_utf8_lossy(&body),
    });
    Ok(json_response(status, &v))
}

/// A gRPC response: `messages` framed, then trailers with `status`.
fn grpc_response(messages: Vec<Bytes>, status: u32, message: &str) -> Response<Body> {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = Vec::new();
    for m in messages {
        let mut framed = BytesMut::with_capacity(5 + m.len());
        framed.extend_from_slice(&[0]);
        framed.extend_from_slice(&u32::try_from(m.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(&m);
        frames.push(Ok(Frame::data(framed.freeze())));
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if !message.is_empty() {
        trailers.insert("grpc-message", HeaderValue::from_str(message).unwrap());
    }
    frames.push(Ok(Frame::trailers(trailers)));
    let body = StreamBody::new(tokio_stream::iter(frames)).boxed();
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    r
}

async fn grpc(req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/warden.test.Echo/Say" {
        return grpc_response(vec![], 12, "unknown method");
    }
    let body = match req.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return grpc_response(vec![], 13, &format!("reading the request: {e}")),
    };
    let mut messages = Vec::new();
    let mut rest = &body[..];
    while !rest.is_empty() {
        if rest.len() < 5 || rest[0] != 0 {
            return grpc_response(vec![], 13, "bad or compressed message frame");
        }
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            return grpc_response(vec![], 13, "truncated message frame");
        }
        messages.push(Bytes::copy_from_slice(&rest[5..5 + len]));
        rest = &rest[5 + len..];
    }
    if messages.len() != 1 {
        return grpc_response(vec![], 13, "a unary call needs exactly one message");
    }
    grpc_response(messages, 0, "")
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|k| k.to_str().ok())
        .map(String::from)
    else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "no Sec-WebSocket-Key"}),
        );
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            while let Some((frame, used)) = ws::decode(&buf) {
                buf.drain(..used);
                let reply = match frame.opcode {
                    ws::TEXT | ws::BINARY | ws::CONTINUATION => {
                        ws::encode(frame.opcode, frame.fin, &frame.payload, None)
                    }
                    ws::PING => ws::encode(ws::PONG, true, &frame.payload, None),
                    ws::CLOSE => {
                        let _ = io
                            .write_all(&ws::encode(ws::CLOSE, true, &frame.payload, None))
                            .await;
                        let _ = io.shutdown().await;
                        return;
                    }
                    _ => continue,
                };
                if io.write_all(&reply).await.is_err() {
                    return;
                }
            }
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&ws::accept_key(&key)).unwrap(),
    );
    r
}
