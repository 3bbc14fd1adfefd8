//! `ratings`: the stars each reviewer gave a book (bookinfo's Node.js `ratings` v1).

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::http::{App, Req, get_or_health, json, not_found};

/// The ratings service.
#[derive(Debug)]
pub struct Ratings;

impl App for Ratings {
    async fn handle(&self, req: Req) -> Response<Full<Bytes>> {
        if let Some(early) = get_or_health(&req, "Ratings") {
            return early;
        }
        match req.path.strip_prefix("/ratings/").map(str::parse::<u64>) {
            Some(Ok(id)) => json(
                StatusCode::OK,
                &serde_json::json!({"id": id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}),
            ),
            _ => not_found(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(r: Response<Full<Bytes>>) -> serde_json::Value {
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn rates_both_reviewers() {
        let r = Ratings.handle(Req::get("/ratings/0")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v = body_json(r).await;
        assert_eq!(v["ratings"]["Reviewer1"], 5);
        assert_eq!(v["ratings"]["Reviewer2"], 4);
    }

    #[tokio::test]
    async fn a_bad_id_is_404() {
        assert_eq!(
            Ratings.handle(Req::get("/ratings/x")).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            Ratings.handle(Req::get("/health")).await.status(),
            StatusCode::OK
        );
    }
}
