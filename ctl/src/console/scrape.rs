//! Fetching a proxy's `/stats/prometheus` over plain HTTP/1.1, with a deadline and a
//! size limit: a slow, dead or babbling proxy costs one failed scrape, nothing more.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};

/// How long one scrape may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// The most a stats page may be (a proxy with thousands of series is ~ a few MiB).
const MAX_BYTES: usize = 32 << 20;

/// Why a scrape failed, as the page shows it.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The URL is not `http://host:port/path`.
    #[error("{url}: not an http:// URL ({reason})")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Connecting, sending or reading failed.
    #[error("{url}: {reason}")]
    Io {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// No answer within [`TIMEOUT`].
    #[error("{url}: no answer within {TIMEOUT:?}")]
    Timeout {
        /// The URL.
        url: String,
    },
    /// An answer other than 200.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
}

/// GETs `url` and returns the body as text.
pub async fn fetch(url: &str) -> Result<String, ScrapeError> {
    match tokio::time::timeout(TIMEOUT, fetch_inner(url)).await {
        Ok(r) => r,
        Err(_) => Err(ScrapeError::Timeout { url: url.into() }),
    }
}

async fn fetch_inner(url: &str) -> Result<String, ScrapeError> {
    let bad_url = |reason: &str| ScrapeError::Url {
        url: url.into(),
        reason: reason.into(),
    };
    let io = |reason: String| ScrapeError::Io {
        url: url.into(),
        reason,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad_url(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad_url("the scheme must be http"));
    }
    let authority = uri.authority().ok_or_else(|| bad_url("no host"))?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| io(format!("cannot connect: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| io(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::ACCEPT, "text/plain")
        .body(Empty::<Bytes>::new())
        .map_err(|e| bad_url(&e.to_string()))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| io(e.to_string()))?;
        let status = response.status();
        if status != http::StatusCode::OK {
            return Err(ScrapeError::Status {
                url: url.into(),
                status: status.as_u16(),
            });
        }
        let body = Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| io(format!("reading the body: {e}")))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| io("the body is not UTF-8".into()))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dead_and_wrong_urls_are_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = fetch(&format!("http://{addr}/stats/prometheus"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot connect"), "{e}");
        let e = fetch("https://127.0.0.1:1/").await.unwrap_err();
        assert!(e.to_string().contains("scheme"), "{e}");
    }

    #[tokio::test]
    async fn reads_a_stats_page_and_refuses_other_statuses() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                let body = "up 1\n";
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let url = format!("http://{addr}/stats/prometheus");
        assert_eq!(fetch(&url).await.unwrap(), "up 1\n");
        let e = fetch(&url).await.unwrap_err();
        assert!(e.to_string().contains("HTTP 503"), "{e}");
    }
}
