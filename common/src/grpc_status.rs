//! The gRPC status of an oversized message. tonic answers a request (or response)
//! message over its size limit with `OUT_OF_RANGE`; gRPC's status-code document says a
//! message larger than the configured limit is `RESOURCE_EXHAUSTED` and that the library
//! never generates `OUT_OF_RANGE`. [`ResourceExhaustedLayer`] rewrites `grpc-status: 11`
//! to `8` in trailers-only responses and in trailers. Warden's own handlers never answer
//! `OUT_OF_RANGE` (clippy's `disallowed-methods` holds `Status::out_of_range`), so on
//! Warden's servers an 11 can only come from tonic's codec: a request message over
//! `max_decoding_message_size`, or a response over `max_encoding_message_size`. In a
//! streaming request the codec's error reaches the handler, which ends the response
//! stream with it; the rewrite then happens in the trailers.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Response};
use hyper::body::{Body, Frame, SizeHint};
use tower::Layer;
use tower::util::{MapResponse, MapResponseLayer};

/// `grpc-status` of `OUT_OF_RANGE`.
const OUT_OF_RANGE: &str = "11";
/// `grpc-status` of `RESOURCE_EXHAUSTED`.
const RESOURCE_EXHAUSTED: HeaderValue = HeaderValue::from_static("8");

/// Maps a response of tonic's router; a plain `fn` so the layer's type can be named.
type Rewrite = fn(Response<tonic::body::Body>) -> Response<StatusBody<tonic::body::Body>>;

/// A tower layer for `tonic::transport::Server::builder().layer(...)` that answers
/// `RESOURCE_EXHAUSTED` where tonic's codec answers `OUT_OF_RANGE`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceExhaustedLayer;

impl<S> Layer<S> for ResourceExhaustedLayer {
    type Service = MapResponse<S, Rewrite>;

    fn layer(&self, inner: S) -> Self::Service {
        MapResponseLayer::new(rewrite_response as Rewrite).layer(inner)
    }
}

fn rewrite_response<B>(response: Response<B>) -> Response<StatusBody<B>> {
    let (mut parts, body) = response.into_parts();
    // Trailers-only: the status is in the headers.
    rewrite(&mut parts.headers);
    Response::from_parts(parts, StatusBody { inner: body })
}

/// Replaces `grpc-status: 11` with `8` in `headers`.
fn rewrite(headers: &mut HeaderMap) {
    if headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == OUT_OF_RANGE.as_bytes())
    {
        headers.insert("grpc-status", RESOURCE_EXHAUSTED);
    }
}

/// A response body whose trailers get the same rewrite.
#[derive(Debug)]
pub struct StatusBody<B> {
    inner: B,
}

impl<B: Body + Unpin> Body for StatusBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(frame.map(|r| {
            r.map(|mut frame| {
                if let Some(trailers) = frame.trailers_mut() {
                    rewrite(trailers);
                }
                frame
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn trailers(status: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_str(status).unwrap());
        h.insert("grpc-message", HeaderValue::from_static("too large"));
        h
    }

    #[test]
    fn trailers_only_out_of_range_becomes_resource_exhausted() {
        let mut resp = Response::new(http_body_util::Empty::<bytes::Bytes>::new());
        *resp.headers_mut() = trailers("11");
        let resp = rewrite_response(resp);
        assert_eq!(resp.headers()["grpc-status"], "8");
        assert_eq!(resp.headers()["grpc-message"], "too large");
    }

    #[test]
    fn other_statuses_are_kept() {
        for status in ["0", "1", "8", "110", "3"] {
            let mut resp = Response::new(http_body_util::Empty::<bytes::Bytes>::new());
            *resp.headers_mut() = trailers(status);
            assert_eq!(rewrite_response(resp).headers()["grpc-status"], status);
        }
    }

    #[tokio::test]
    async fn trailers_in_the_body_are_rewritten() {
        for (sent, seen) in [("11", "8"), ("0", "0"), ("13", "13")] {
            let frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
                Ok(Frame::data(bytes::Bytes::from_static(b"\0\0\0\0\0"))),
                Ok(Frame::trailers(trailers(sent))),
            ];
            let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
            let resp = rewrite_response(Response::new(body));
            let collected = resp.into_body().collect().await.unwrap();
            assert_eq!(collected.trailers().unwrap()["grpc-status"], seen);
        }
    }
}
