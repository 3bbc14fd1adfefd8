//! HTTP clients: [`send`] (hyper; HTTP/1.1 absolute- or origin-form, or h2c) and
//! [`raw_http`] (bytes as they are, read until the peer closes or goes quiet).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What a raw HTTP/1 exchange got back: every byte until the proxy closed the
/// connection or went quiet for `quiet`, and whether it closed.
#[derive(Debug)]
pub struct Raw {
    pub text: String,
    pub closed: bool,
}

impl Raw {
    /// The status codes of the responses, in order (a status line may follow the
    /// previous response's body directly).
    pub fn statuses(&self) -> Vec<u16> {
        let t = self.text.as_bytes();
        (0..t.len())
            .filter(|&i| t[i..].starts_with(b"HTTP/1.1 ") || t[i..].starts_with(b"HTTP/1.0 "))
            .filter_map(|i| {
                let code = t.get(i + 9..i + 12)?;
                (t.get(i + 12) == Some(&b' ') && code.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(code).ok()?.parse().ok())
                    .flatten()
            })
            .collect()
    }
}

/// Writes `bytes` to `addr` as they are (a client that may break every rule) and reads
/// until the peer closes or nothing arrives for `quiet`.
pub fn raw_http(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> Raw {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(quiet)).unwrap();
    // A proxy may refuse and close before reading everything: that is an answer too.
    let _ = s.write_all(bytes);
    read_until_quiet(&mut s)
}

/// Reads from `s` until it closes or a read times out.
pub fn read_until_quiet(s: &mut TcpStream) -> Raw {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false;
            }
            Err(_) => break true,
        }
    };
    Raw {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

pub use crate::try_http_get;

/// How a [`Req`] goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.1 with an absolute-form request target (a forward-proxy request).
    Absolute,
    /// HTTP/1.1, origin-form with a `Host` header (as an intercepted request).
    Origin,
    /// HTTP/2 with prior knowledge, `:authority` from the URL.
    H2c,
}

/// An HTTP request for [`send`].
#[derive(Debug, Clone)]
pub struct Req {
    pub method: http::Method,
    /// `http://host:port/path?query`.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub wire: Wire,
}

impl Req {
    pub fn get(url: &str) -> Self {
        Self {
            method: http::Method::GET,
            url: url.into(),
            headers: Vec::new(),
            body: Bytes::new(),
            wire: Wire::Absolute,
        }
    }

    pub fn post(url: &str, body: impl Into<Bytes>) -> Self {
        Self {
            method: http::Method::POST,
            body: body.into(),
            ..Self::get(url)
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn wire(mut self, wire: Wire) -> Self {
        self.wire = wire;
        self
    }

    pub fn h2c(self) -> Self {
        self.wire(Wire::H2c)
    }

    pub fn origin_form(self) -> Self {
        self.wire(Wire::Origin)
    }
}

/// An HTTP response, read to the end.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (the test application's echo); panics showing the response
    /// otherwise.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {:?} {}",
                self.status,
                self.headers,
                self.text()
            )
        })
    }

    /// A header the application saw (from its JSON echo).
    pub fn app_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(String::from)
    }
}

/// The response to a request sent on a connection whose task is `conn`, or an error
/// if the task ends first. hyper's client can lose a request handed over just as the
/// connection closes (its sender reports closed and the response never comes), as a
/// proxy refusing connections at accept showed about once in 50,000 requests; the
/// proxy guards its own upstream requests the same way (`pool::Alive`).
async fn answer<T>(
    sent: impl std::future::Future<Output = hyper::Result<T>>,
    conn: tokio::task::JoinHandle<hyper::Result<()>>,
) -> anyhow::Result<T> {
    tokio::select! {
        biased;
        r = sent => Ok(r?),
        ended = conn => match ended {
            Ok(Err(e)) => Err(anyhow::anyhow!("the connection closed before a response: {e}")),
            _ => Err(anyhow::anyhow!("the connection closed before a response")),
        },
    }
}

/// Sends `req` on a new connection to `addr`.
pub async fn send(addr: SocketAddr, req: &Req) -> anyhow::Result<Resp> {
    let uri: http::Uri = req.url.parse()?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("{} has no authority", req.url))?
        .to_string();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let io = TokioIo::new(tcp);
    let mut b = http::Request::builder().method(req.method.clone());
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let body = Full::new(req.body.clone());
    let resp = match req.wire {
        Wire::H2c => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            let conn = tokio::spawn(conn);
            let r = b.uri(uri).version(http::Version::HTTP_2).body(body)?;
            answer(sender.send_request(r), conn).await?
        }
        Wire::Absolute | Wire::Origin => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            let conn = tokio::spawn(conn.with_upgrades());
            let target: http::Uri = if req.wire == Wire::Absolute {
                uri
            } else {
                uri.path_and_query().map_or("/", |p| p.as_str()).parse()?
            };
            let has_host = req
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("host"));
            if !has_host {
                b = b.header("host", authority);
            }
            let r = b.uri(target).body(body)?;
            answer(sender.send_request(r), conn).await?
        }
    };
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}
