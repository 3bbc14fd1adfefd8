//! `reviews`: two reviews of the book (bookinfo's Java `reviews`). v1 shows no
//! ratings; v2 (black stars) and v3 (red stars) ask `ratings` for them, and say
//! "Ratings service is currently unavailable" when it does not answer in time. As in
//! bookinfo, v2 waits up to 10 s for ratings and v3 2.5 s (`star_color.equals("black")
//! ? 10000 : 2500`), which is what the fault-injection walk-through trips over.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::http::{App, Req, Upstream, get_or_health, json, not_found};

/// Bookinfo's reviews versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    V1,
    V2,
    V3,
}

impl Version {
    /// `v1`, `v2`, `v3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::V3 => "v3",
        }
    }

    /// The stars' colour: none for v1, black for v2, red for v3.
    pub fn default_color(self) -> Option<&'static str> {
        match self {
            Self::V1 => None,
            Self::V2 => Some("black"),
            Self::V3 => Some("red"),
        }
    }
}

/// How long reviews waits for ratings: bookinfo's 10 s for black stars, 2.5 s otherwise.
pub fn ratings_timeout(color: &str) -> Duration {
    if color == "black" {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(2500)
    }
}

/// The reviews service.
#[derive(Debug)]
pub struct Reviews {
    /// What it reports as `podname` (productpage shows it): `reviews-v2`.
    pub name: String,
    /// The stars' colour; `None`: no ratings (v1).
    pub color: Option<String>,
    /// The ratings service.
    pub ratings: Upstream,
}

const REVIEWS: [(&str, &str); 2] = [
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
];

impl Reviews {
    /// The stars per reviewer, or why there are none.
    async fn stars(&self, id: u64, req: &Req) -> Result<serde_json::Value, String> {
        let path = format!("/ratings/{id}");
        match self.ratings.get(&path, req.forwarded()).await {
            Ok((StatusCode::OK, body)) => serde_json::from_slice::<serde_json::Value>(&body)
                .map(|v| v["ratings"].clone())
                .map_err(|e| format!("ratings answered no JSON: {e}")),
            Ok((status, _)) => Err(format!("ratings answered {status}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl App for Reviews {
    async fn handle(&self, req: Req) -> Response<Full<Bytes>> {
        if let Some(early) = get_or_health(&req, "Reviews") {
            return early;
        }
        let Some(Ok(id)) = req.path.strip_prefix("/reviews/").map(str::parse::<u64>) else {
            return not_found();
        };
        let stars = match &self.color {
            Some(_) => Some(self.stars(id, &req).await),
            None => None,
        };
        if let Some(Err(e)) = &stars {
            eprintln!(
                "{}",
                serde_json::json!({"message": "ratings unavailable", "error": e})
            );
        }
        let reviews: Vec<serde_json::Value> = REVIEWS
            .iter()
            .map(|(reviewer, text)| {
                let mut r = serde_json::json!({"reviewer": reviewer, "text": text});
                match (&stars, &self.color) {
                    (Some(Ok(s)), Some(color)) if s[reviewer].is_u64() => {
                        r["rating"] = serde_json::json!({"stars": s[reviewer], "color": color});
                    }
                    (Some(_), _) => {
                        r["rating"] =
                            serde_json::json!({"error": "Ratings service is currently unavailable"});
                    }
                    (None, _) => {}
                }
                r
            })
            .collect();
        json(
            StatusCode::OK,
            &serde_json::json!({
                "id": id.to_string(), "podname": self.name, "clustername": "null", "reviews": reviews,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::net::TcpListener;

    async fn body(r: Response<Full<Bytes>>) -> serde_json::Value {
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    /// A ratings app standing in for the sidecar: it gets the absolute-form request.
    async fn ratings_as_proxy() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(crate::http::serve(l, crate::ratings::Ratings));
        addr
    }

    fn reviews(version: Version, proxy: std::net::SocketAddr) -> Reviews {
        let color = version.default_color();
        Reviews {
            name: format!("reviews-{}", version.as_str()),
            color: color.map(String::from),
            ratings: Upstream {
                proxy,
                base: "http://ratings:9080".into(),
                timeout: ratings_timeout(color.unwrap_or("")),
            },
        }
    }

    #[tokio::test]
    async fn v1_has_no_ratings() {
        let proxy = ratings_as_proxy().await;
        let v = body(
            reviews(Version::V1, proxy)
                .handle(Req::get("/reviews/0"))
                .await,
        )
        .await;
        assert_eq!(v["podname"], "reviews-v1");
        assert!(v["reviews"][0].get("rating").is_none(), "{v}");
    }

    #[tokio::test]
    async fn v2_and_v3_ask_ratings_for_stars_in_their_colour() {
        let proxy = ratings_as_proxy().await;
        for (version, color) in [(Version::V2, "black"), (Version::V3, "red")] {
            let v = body(reviews(version, proxy).handle(Req::get("/reviews/0")).await).await;
            assert_eq!(v["reviews"][0]["rating"]["stars"], 5, "{v}");
            assert_eq!(v["reviews"][1]["rating"]["stars"], 4, "{v}");
            assert_eq!(v["reviews"][1]["rating"]["color"], color, "{v}");
        }
    }

    #[tokio::test]
    async fn without_ratings_the_reviews_say_so() {
        // Nothing listens on port 1.
        let proxy = "127.0.0.1:1".parse().unwrap();
        let v = body(
            reviews(Version::V3, proxy)
                .handle(Req::get("/reviews/0"))
                .await,
        )
        .await;
        assert_eq!(
            v["reviews"][0]["rating"]["error"],
            "Ratings service is currently unavailable"
        );
    }

    #[test]
    fn black_stars_wait_longer() {
        assert_eq!(ratings_timeout("black"), Duration::from_secs(10));
        assert_eq!(ratings_timeout("red"), Duration::from_millis(2500));
    }
}
