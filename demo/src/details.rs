//! `details`: the book's details (bookinfo's Ruby `details` v1).

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::http::{App, Req, get_or_health, json, not_found};

/// The details service.
#[derive(Debug)]
pub struct Details;

impl App for Details {
    async fn handle(&self, req: Req) -> Response<Full<Bytes>> {
        if let Some(early) = get_or_health(&req, "Details") {
            return early;
        }
        match req.path.strip_prefix("/details/").map(str::parse::<u64>) {
            Some(Ok(id)) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "id": id, "author": "William Shakespeare", "year": 1595,
                    "type": "paperback", "pages": 200, "publisher": "PublisherA",
                    "language": "English", "ISBN-10": "1234567890", "ISBN-13": "123-1234567890",
                }),
            ),
            _ => not_found(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn describes_the_book() {
        let r = Details.handle(Req::get("/details/0")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: serde_json::Value =
            serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["author"], "William Shakespeare");
        assert_eq!(v["id"], 0);
        assert_eq!(
            Details.handle(Req::get("/details/")).await.status(),
            StatusCode::NOT_FOUND
        );
    }
}
