//! `productpage`: the page a user sees (bookinfo's Python `productpage` v1). It asks
//! `details` and `reviews` for their parts and renders both; a part that fails shows
//! bookinfo's "Sorry, ... are currently unavailable for this book." As in bookinfo,
//! each call waits 3 s, and reviews is tried twice (`for _ in range(2)`), so a reviews
//! slower than 6 s shows the error even when reviews itself would still answer.
//! Logging in (`POST /login`, form field `username`) sets a `user` cookie that becomes
//! the `end-user` header on every call, which routing rules can match.

use std::time::Duration;

use bytes::Bytes;
use http::header::{LOCATION, SET_COOKIE};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

use crate::http::{App, Req, Upstream, json, not_found, respond};

/// How long productpage waits for details, and for each try of reviews (bookinfo's
/// `timeout=3.0`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How many times productpage asks reviews (bookinfo's deliberate retry).
const REVIEWS_TRIES: usize = 2;

const TITLE: &str = "The Comedy of Errors";
const DESCRIPTION: &str = "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play.";
const DETAILS_ERROR: &str = "Sorry, product details are currently unavailable for this book.";
const REVIEWS_ERROR: &str = "Sorry, product reviews are currently unavailable for this book.";

/// The product page.
#[derive(Debug)]
pub struct ProductPage {
    /// The details service.
    pub details: Upstream,
    /// The reviews service.
    pub reviews: Upstream,
}

impl ProductPage {
    /// The headers for calls made while serving `req`: the forwarded ones, and
    /// `end-user` from the login cookie.
    fn outbound_headers(req: &Req) -> http::HeaderMap {
        let mut h = req.forwarded();
        if let Some(user) = req.cookie("user").filter(|u| !u.is_empty())
            && let Ok(v) = HeaderValue::from_str(&user)
        {
            h.insert("end-user", v);
        }
        h
    }

    async fn details(&self, id: u64, req: &Req) -> Result<serde_json::Value, String> {
        let path = format!("/details/{id}");
        match self.details.get(&path, Self::outbound_headers(req)).await {
            Ok((StatusCode::OK, body)) => serde_json::from_slice(&body).map_err(|e| e.to_string()),
            Ok((status, _)) => Err(format!("details answered {status}")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn reviews(&self, id: u64, req: &Req) -> Result<serde_json::Value, String> {
        let path = format!("/reviews/{id}");
        let mut last = String::new();
        for _ in 0..REVIEWS_TRIES {
            match self.reviews.get(&path, Self::outbound_headers(req)).await {
                Ok((StatusCode::OK, body)) => {
                    return serde_json::from_slice(&body).map_err(|e| e.to_string());
                }
                Ok((status, _)) => last = format!("reviews answered {status}"),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    async fn page(&self, req: &Req) -> Response<Full<Bytes>> {
        let (details, reviews) = tokio::join!(self.details(0, req), self.reviews(0, req));
        for (what, r) in [("details", &details), ("reviews", &reviews)] {
            if let Err(e) = r {
                eprintln!(
                    "{}",
                    serde_json::json!({"message": "call failed", "service": what, "error": e})
                );
            }
        }
        let user = req.cookie("user").filter(|u| !u.is_empty());
        let html = render(user.as_deref(), &details, &reviews);
        respond(StatusCode::OK, "text/html; charset=utf-8", html)
    }
}

impl App for ProductPage {
    async fn handle(&self, req: Req) -> Response<Full<Bytes>> {
        match (&req.method, req.path.as_str()) {
            (&Method::GET, "/" | "/index.html") => respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                "<!DOCTYPE html><html><head><title>Simple Bookstore App</title></head><body><h3>Hello! This is a simple bookstore application consisting of three services as shown below</h3><p><a href=\"/productpage\">Normal user</a> | <a href=\"/productpage?u=test\">Test user</a></p></body></html>\n",
            ),
            (&Method::GET, "/health") => json(
                StatusCode::OK,
                &serde_json::json!({"status": "Product page is healthy"}),
            ),
            (&Method::GET, "/productpage") => self.page(&req).await,
            (&Method::POST, "/login") => {
                let user = form_value(&req.body, "username").unwrap_or_default();
                redirect(&format!("user={user}; Path=/"))
            }
            (&Method::GET, "/logout") => redirect("user=; Path=/; Max-Age=0"),
            (&Method::GET, "/api/v1/products") => json(
                StatusCode::OK,
                &serde_json::json!([{"id": 0, "title": TITLE, "descriptionHtml": DESCRIPTION}]),
            ),
            (&Method::GET, path) => self.api(path, &req).await,
            _ => not_found(),
        }
    }
}

impl ProductPage {
    /// `/api/v1/products/<id>` and `/api/v1/products/<id>/reviews`.
    async fn api(&self, path: &str, req: &Req) -> Response<Full<Bytes>> {
        let Some(rest) = path.strip_prefix("/api/v1/products/") else {
            return not_found();
        };
        let (id, sub) = rest.split_once('/').unwrap_or((rest, ""));
        let Ok(id) = id.parse::<u64>() else {
            return not_found();
        };
        let (result, error) = match sub {
            "" => (self.details(id, req).await, DETAILS_ERROR),
            "reviews" => (self.reviews(id, req).await, REVIEWS_ERROR),
            _ => return not_found(),
        };
        match result {
            Ok(v) => json(StatusCode::OK, &v),
            Err(_) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": error}),
            ),
        }
    }
}

fn redirect(cookie: &str) -> Response<Full<Bytes>> {
    let mut r = respond(StatusCode::FOUND, "text/plain; charset=utf-8", "");
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/productpage"));
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

/// The value of `name` in an `application/x-www-form-urlencoded` body, kept to what a
/// user name needs (letters, digits, `-`, `_`, `.`).
fn form_value(body: &[u8], name: &str) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            v.chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect()
        })
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => escape(s),
        other => escape(&other.to_string()),
    }
}

/// The page: the book, its details (or bookinfo's error), its reviews (or the error),
/// and which reviews workload answered.
pub fn render(
    user: Option<&str>,
    details: &Result<serde_json::Value, String>,
    reviews: &Result<serde_json::Value, String>,
) -> String {
    let mut h = String::from(
        "<!DOCTYPE html>\n<html><head><title>Simple Bookstore App</title></head><body>\n",
    );
    match user {
        Some(u) => h.push_str(&format!("<p>Signed in as <b>{}</b> (<a href=\"/logout\">sign out</a>)</p>\n", escape(u))),
        None => h.push_str("<form method=\"post\" action=\"/login\"><input name=\"username\" placeholder=\"User name\"> <button>Sign in</button></form>\n"),
    }
    h.push_str(&format!("<h1>{TITLE}</h1>\n<p>{DESCRIPTION}</p>\n"));
    h.push_str("<h4>Book Details</h4>\n");
    match details {
        Ok(d) => {
            h.push_str("<dl>\n");
            for (label, key) in [
                ("Type", "type"),
                ("Pages", "pages"),
                ("Publisher", "publisher"),
                ("Language", "language"),
                ("ISBN-10", "ISBN-10"),
                ("ISBN-13", "ISBN-13"),
            ] {
                h.push_str(&format!("<dt>{label}:</dt><dd>{}</dd>\n", text_of(&d[key])));
            }
            h.push_str("</dl>\n");
        }
        Err(_) => h.push_str(&format!(
            "<h4>Error fetching product details!</h4>\n<p>{DETAILS_ERROR}</p>\n"
        )),
    }
    h.push_str("<h4>Book Reviews</h4>\n");
    match reviews {
        Ok(r) => {
            for review in r["reviews"].as_array().into_iter().flatten() {
                h.push_str(&format!(
                    "<blockquote><p>{}</p><small>{}</small>",
                    text_of(&review["text"]),
                    text_of(&review["reviewer"])
                ));
                let rating = &review["rating"];
                if let Some(stars) = rating["stars"].as_u64() {
                    let stars = stars.min(5) as usize;
                    h.push_str(&format!(
                        " <font color=\"{}\">{}{}</font>",
                        text_of(&rating["color"]),
                        "★".repeat(stars),
                        "☆".repeat(5 - stars)
                    ));
                } else if rating["error"].is_string() {
                    h.push_str(&format!(" <p><i>{}</i></p>", text_of(&rating["error"])));
                }
                h.push_str("</blockquote>\n");
            }
            h.push_str(&format!(
                "<dl><dt>Reviews served by:</dt><dd><u>{}</u></dd></dl>\n",
                text_of(&r["podname"])
            ));
        }
        Err(_) => h.push_str(&format!(
            "<h4>Error fetching product reviews!</h4>\n<p>{REVIEWS_ERROR}</p>\n"
        )),
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::net::TcpListener;

    async fn body(r: Response<Full<Bytes>>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    /// One stand-in for the sidecar that serves what details and reviews v2 would
    /// (reviews' own calls to ratings go to the same place).
    async fn fake_mesh() -> std::net::SocketAddr {
        #[derive(Debug)]
        struct Mesh(std::net::SocketAddr);
        impl App for Mesh {
            async fn handle(&self, req: Req) -> Response<Full<Bytes>> {
                if req.path.starts_with("/details/") {
                    crate::details::Details.handle(req).await
                } else if req.path.starts_with("/ratings/") {
                    crate::ratings::Ratings.handle(req).await
                } else {
                    let r = crate::reviews::Reviews {
                        name: "reviews-v2".into(),
                        color: Some("black".into()),
                        ratings: Upstream {
                            proxy: self.0,
                            base: "http://ratings:9080".into(),
                            timeout: Duration::from_secs(2),
                        },
                    };
                    r.handle(req).await
                }
            }
        }
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(crate::http::serve(l, Mesh(addr)));
        addr
    }

    fn page(proxy: std::net::SocketAddr) -> ProductPage {
        let up = |base: &str| Upstream {
            proxy,
            base: base.into(),
            timeout: Duration::from_millis(500),
        };
        ProductPage {
            details: up("http://details:9080"),
            reviews: up("http://reviews:9080"),
        }
    }

    #[tokio::test]
    async fn shows_details_reviews_and_who_served_them() {
        let proxy = fake_mesh().await;
        let html = body(page(proxy).handle(Req::get("/productpage")).await).await;
        assert!(html.contains("<dd>paperback</dd>"), "{html}");
        assert!(html.contains("Reviewer2"), "{html}");
        assert!(
            html.contains("<font color=\"black\">★★★★★</font>"),
            "{html}"
        );
        assert!(html.contains("<u>reviews-v2</u>"), "{html}");
    }

    #[tokio::test]
    async fn failures_show_bookinfo_errors() {
        let html = body(
            page("127.0.0.1:1".parse().unwrap())
                .handle(Req::get("/productpage"))
                .await,
        )
        .await;
        assert!(html.contains(DETAILS_ERROR), "{html}");
        assert!(html.contains(REVIEWS_ERROR), "{html}");
    }

    #[tokio::test]
    async fn login_sets_the_user_that_becomes_end_user() {
        let mut login = Req::get("/login");
        login.method = Method::POST;
        login.body = Bytes::from_static(b"username=jason&passwd=x");
        let r = page("127.0.0.1:1".parse().unwrap()).handle(login).await;
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[SET_COOKIE], "user=jason; Path=/");

        let mut req = Req::get("/productpage");
        req.headers
            .insert(http::header::COOKIE, HeaderValue::from_static("user=jason"));
        req.headers
            .insert("x-b3-traceid", HeaderValue::from_static("80f198ee56343ba8"));
        let h = ProductPage::outbound_headers(&req);
        assert_eq!(h["end-user"], "jason");
        assert_eq!(h["x-b3-traceid"], "80f198ee56343ba8");
        assert_eq!(h["cookie"], "user=jason");
    }

    #[test]
    fn escapes_what_services_return() {
        let reviews = Ok(serde_json::json!({"podname": "<script>", "reviews": []}));
        let html = render(None, &Err(String::new()), &reviews);
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
    }
}
