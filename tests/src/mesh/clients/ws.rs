//! WebSocket: a minimal RFC 6455 frame codec (shared by the test application and
//! [`WsClient`]) and a client over a blocking TCP stream.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::mesh::random_bytes;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The GUID of RFC 6455 section 1.3.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A frame, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    use base64::Engine as _;
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// A frame on the wire; masked with `mask` (clients must mask).
pub fn encode(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// The first complete frame in `buf` and how many bytes it took, unmasked; `None`
/// if `buf` holds less than a frame.
pub fn decode(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(b)).ok()?, 10)
        }
        n => (n as usize, 2),
    };
    let mask = if masked {
        let k: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(k)
    } else {
        None
    };
    let data = buf.get(at..at + len)?;
    let payload = match mask {
        Some(k) => data.iter().enumerate().map(|(i, b)| b ^ k[i % 4]).collect(),
        None => data.to_vec(),
    };
    Some((
        Frame {
            fin,
            opcode,
            payload,
        },
        at + len,
    ))
}

/// A WebSocket client over a blocking TCP stream.
#[derive(Debug)]
pub struct WsClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The response head of the upgrade.
    pub response_head: String,
}

impl WsClient {
    /// Connects to `addr`, sends an upgrade for `url` (origin-form, `Host` from the URL,
    /// or absolute-form when `absolute`), checks the `101` and its
    /// `Sec-WebSocket-Accept`. `Err` with the response head on any other answer.
    pub fn connect(addr: SocketAddr, url: &str, absolute: bool) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let host = uri.authority().unwrap().to_string();
        let target = if absolute {
            url.to_string()
        } else {
            uri.path_and_query().map_or("/", |p| p.as_str()).to_string()
        };
        let key = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(random_bytes::<16>())
        };
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(format!(
                        "connection closed before a response head: {:?}",
                        String::from_utf8_lossy(&buf)
                    ));
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    return Err(format!(
                        "reading the response head: {e}; got {:?}",
                        String::from_utf8_lossy(&buf)
                    ));
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let rest = buf[head_end..].to_vec();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(format!("not switched: {head}"));
        }
        let accept = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("sec-websocket-accept")
                    .then(|| v.trim().to_string())
            })
            .ok_or_else(|| format!("no Sec-WebSocket-Accept: {head}"))?;
        if accept != accept_key(&key) {
            return Err(format!(
                "Sec-WebSocket-Accept {accept} is not {} : {head}",
                accept_key(&key)
            ));
        }
        Ok(Self {
            stream,
            buf: rest,
            response_head: head,
        })
    }

    /// Sends a masked frame.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.stream
            .write_all(&encode(opcode, true, payload, Some(random_bytes::<4>())))
    }

    /// Reads the next frame.
    pub fn recv(&mut self) -> std::io::Result<Frame> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((f, used)) = decode(&self.buf) {
                self.buf.drain(..used);
                return Ok(f);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before a frame",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
