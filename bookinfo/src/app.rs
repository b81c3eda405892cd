//! The four Bookinfo services and the little HTTP plumbing they share.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Headers Bookinfo propagates so the mesh can route by user and traces stay joined.
pub const PROPAGATED: &[&str] = &[
    "end-user",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "traceparent",
    "tracestate",
    "x-ot-span-context",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "user-agent",
];

pub const REVIEWS_UNAVAILABLE: &str = "Sorry, product reviews are currently unavailable for this book.";
pub const DETAILS_UNAVAILABLE: &str = "Sorry, product details are currently unavailable for this book.";

#[derive(Clone)]
pub enum Role {
    Productpage { details: String, reviews: String },
    Details,
    Reviews { version: String, color: Option<&'static str>, ratings: String, ratings_timeout: Duration },
    Ratings,
}

struct Ctx {
    pod: String,
    role: Role,
    client: Client<HttpConnector, Empty<Bytes>>,
}

type Body = Full<Bytes>;

pub async fn serve(addr: SocketAddr, pod: String, role: Role) -> Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (port in use?)"))?;
    tracing::info!(%addr, %pod, "listening");
    let ctx = Arc::new(Ctx { pod, role, client: Client::builder(TokioExecutor::new()).build_http() });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { tracing::warn!(error = %e, "accept"); continue; }
            },
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(ctx.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let user = end_user(req.headers());
    let resp = match (&ctx.role, path.as_str()) {
        (_, "/health") => json_response(StatusCode::OK, json!({"status": "healthy"})),
        (Role::Productpage { .. }, _) => productpage(&ctx, &req).await,
        (Role::Details, p) if p.starts_with("/details/") => json_response(StatusCode::OK, details_json(p)),
        (Role::Reviews { .. }, p) if p.starts_with("/reviews/") => reviews(&ctx, &req).await,
        (Role::Ratings, p) if p.starts_with("/ratings/") => json_response(
            StatusCode::OK,
            json!({"id": p.trim_start_matches("/ratings/").parse::<u64>().unwrap_or(0), "ratings": {"Reviewer1": 5, "Reviewer2": 4}}),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    };
    tracing::info!(pod = %ctx.pod, method = %req.method(), %path, status = resp.status().as_u16(), end_user = user.as_deref().unwrap_or("-"),
        request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-"), "request");
    Ok(resp)
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn json_response(status: StatusCode, v: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The logged-in user: the `end-user` header if a caller set it, else the `session` cookie
/// that `/login` sets (what the real productpage does).
pub fn end_user(headers: &HeaderMap) -> Option<String> {
    if let Some(u) = headers.get("end-user").and_then(|v| v.to_str().ok()) {
        return Some(u.to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, v)| *k == "session" && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}

/// GET `url` forwarding the propagated headers of `incoming` (and `end-user`), with a timeout.
async fn call(
    ctx: &Ctx,
    url: &str,
    incoming: &HeaderMap,
    user: Option<&str>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes)> {
    let mut req = Request::get(url).body(Empty::new())?;
    for name in PROPAGATED {
        if let Some(v) = incoming.get(*name) {
            req.headers_mut().insert(*name, v.clone());
        }
    }
    if let Some(u) = user.and_then(|u| HeaderValue::from_str(u).ok()) {
        req.headers_mut().insert("end-user", u);
    }
    let resp = tokio::time::timeout(timeout, ctx.client.request(req)).await.context("timed out")??;
    let status = resp.status();
    let body = tokio::time::timeout(timeout, resp.into_body().collect()).await.context("timed out")??.to_bytes();
    Ok((status, body))
}

fn details_json(path: &str) -> Value {
    json!({
        "id": path.trim_start_matches("/details/").parse::<u64>().unwrap_or(0),
        "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200,
        "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"
    })
}

async fn reviews(ctx: &Ctx, req: &Request<Incoming>) -> Response<Body> {
    let Role::Reviews { version, color, ratings, ratings_timeout } = &ctx.role else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let id = req.uri().path().trim_start_matches("/reviews/").to_owned();
    let mut r1 = json!({"reviewer": "Reviewer1", "text": "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"});
    let mut r2 = json!({"reviewer": "Reviewer2", "text": "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."});
    if let Some(color) = color {
        let user = end_user(req.headers());
        match call(ctx, &format!("{ratings}/ratings/{id}"), req.headers(), user.as_deref(), *ratings_timeout).await {
            Ok((s, body)) if s.is_success() => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let stars = |who: &str| v["ratings"][who].as_u64().unwrap_or(0);
                r1["rating"] = json!({"stars": stars("Reviewer1"), "color": color});
                r2["rating"] = json!({"stars": stars("Reviewer2"), "color": color});
            }
            outcome => {
                tracing::warn!(?outcome, "ratings call failed");
                let err = json!({"error": "Ratings service is currently unavailable"});
                r1["rating"] = err.clone();
                r2["rating"] = err;
            }
        }
    }
    json_response(
        StatusCode::OK,
        json!({"id": id, "podname": ctx.pod, "clustername": "null", "version": version, "reviews": [r1, r2]}),
    )
}

/// What a reviews answer showed: (version, star colour) — `none` for v1, `unavailable` when
/// reviews could not be reached.
pub fn summarize_reviews(v: Option<&Value>) -> (String, String) {
    let Some(v) = v else { return ("unavailable".into(), "unavailable".into()) };
    let version = v["version"].as_str().unwrap_or("unknown").to_owned();
    let stars = v["reviews"]
        .as_array()
        .and_then(|rs| rs.iter().find_map(|r| r.get("rating")))
        .map(|rating| rating["color"].as_str().unwrap_or("unavailable").to_owned())
        .unwrap_or_else(|| "none".into());
    (version, stars)
}

async fn productpage(ctx: &Ctx, req: &Request<Incoming>) -> Response<Body> {
    let Role::Productpage { details, reviews } = &ctx.role else { return text(StatusCode::NOT_FOUND, "not found") };
    let path = req.uri().path();
    let user = end_user(req.headers());
    if let Some(r) = session_route(req) {
        return r;
    }
    let api = path.strip_prefix("/api/v1/products");
    let wants_details = matches!(api, Some("/0")) || path == "/productpage";
    let wants_reviews = matches!(api, Some("/0/reviews") | Some("/0/ratings")) || path == "/productpage";
    if api == Some("") {
        return json_response(
            StatusCode::OK,
            json!([{"id": 0, "title": "The Comedy of Errors", "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of William Shakespeare's early plays."}]),
        );
    }
    if !wants_details && !wants_reviews {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    let details_v = if wants_details {
        match call(ctx, &format!("{details}/details/0"), req.headers(), user.as_deref(), Duration::from_secs(3)).await {
            Ok((s, b)) if s.is_success() => serde_json::from_slice::<Value>(&b).ok(),
            _ => None,
        }
    } else {
        None
    };
    let reviews_v = if wants_reviews { fetch_reviews(ctx, reviews, req, user.as_deref()).await } else { None };
    match api {
        Some("/0") => details_v.map_or_else(
            || json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": DETAILS_UNAVAILABLE})),
            |v| json_response(StatusCode::OK, v),
        ),
        Some("/0/reviews") | Some("/0/ratings") => reviews_v.map_or_else(
            || json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": REVIEWS_UNAVAILABLE})),
            |v| json_response(StatusCode::OK, v),
        ),
        _ => product_page(user.as_deref(), details_v.as_ref(), reviews_v.as_ref()),
    }
}

/// The sign-in routes: `/` and `/logout` redirect to the page, `/login` sets the session cookie.
fn session_route(req: &Request<Incoming>) -> Option<Response<Body>> {
    match req.uri().path() {
        "/" => Some(redirect("/productpage", None)),
        "/login" => {
            let name =
                req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("user="))).unwrap_or("jason");
            Some(redirect("/productpage", Some(format!("session={name}; Path=/"))))
        }
        "/logout" => Some(redirect("/productpage", Some("session=; Path=/; Max-Age=0".into()))),
        _ => None,
    }
}

/// The reviews of product 0 from `reviews`, or None when it could not be reached.
async fn fetch_reviews(ctx: &Ctx, reviews: &str, req: &Request<Incoming>, user: Option<&str>) -> Option<Value> {
    // Like the real productpage: 3 s timeout, one retry, then give up.
    for _ in 0..2 {
        if let Ok((s, b)) =
            call(ctx, &format!("{reviews}/reviews/0"), req.headers(), user, Duration::from_secs(3)).await
        {
            if s.is_success() {
                return serde_json::from_slice::<Value>(&b).ok();
            }
        }
    }
    None
}

/// The HTML page, with the reviews version and star colour it shows in `x-bookinfo-*` headers.
fn product_page(user: Option<&str>, details: Option<&Value>, reviews: Option<&Value>) -> Response<Body> {
    let (version, stars) = summarize_reviews(reviews);
    let mut r = Response::new(Full::new(Bytes::from(page_html(user, details, reviews, &version, &stars))));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    for (k, v) in [("x-bookinfo-reviews", &version), ("x-bookinfo-stars", &stars)] {
        if let Ok(v) = HeaderValue::from_str(v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

fn redirect(to: &'static str, cookie: Option<String>) -> Response<Body> {
    let mut r = text(StatusCode::FOUND, "");
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn page_html(
    user: Option<&str>,
    details: Option<&Value>,
    reviews: Option<&Value>,
    version: &str,
    stars: &str,
) -> String {
    let mut h = String::from("<!DOCTYPE html>\n<html><head><title>Simple Bookstore App</title></head><body>\n");
    h += &format!(
        "<!-- bookinfo: reviews={version} stars={stars}{} -->\n",
        user.map(|u| format!(" user={}", escape(u))).unwrap_or_default()
    );
    match user {
        Some(u) => h += &format!("<p>signed in as <b>{}</b> <a href=\"/logout\">sign out</a></p>\n", escape(u)),
        None => h += "<p><a href=\"/login?user=jason\">sign in</a></p>\n",
    }
    h += "<h1>The Comedy of Errors</h1>\n<p>Summary: The Comedy of Errors is one of William Shakespeare's early plays. It is his shortest and one of his most farcical comedies.</p>\n";
    h += "<h2>Book Details</h2>\n";
    match details {
        Some(d) => {
            for k in ["type", "pages", "publisher", "language", "ISBN-10", "ISBN-13"] {
                h += &format!("<dt>{k}</dt><dd>{}</dd>\n", escape(d[k].to_string().trim_matches('"')));
            }
        }
        None => h += &format!("<p>{DETAILS_UNAVAILABLE}</p>\n"),
    }
    h += "<h2>Book Reviews</h2>\n";
    match reviews.and_then(|r| r["reviews"].as_array()) {
        Some(rs) => {
            for r in rs {
                h += &format!(
                    "<blockquote><p>{}</p><small>{}</small>",
                    escape(r["text"].as_str().unwrap_or("")),
                    escape(r["reviewer"].as_str().unwrap_or(""))
                );
                if let Some(rating) = r.get("rating") {
                    match (rating["stars"].as_u64(), rating["color"].as_str()) {
                        (Some(n), Some(color)) => {
                            let full: String = "<span class=\"glyphicon glyphicon-star\"></span>".repeat(n as usize);
                            let empty: String = "<span class=\"glyphicon glyphicon-star-empty\"></span>"
                                .repeat(5usize.saturating_sub(n as usize));
                            h += &format!("<font color=\"{color}\">{full}{empty}</font>");
                        }
                        _ => {
                            h += &format!(
                                "<p><i>{}</i></p>",
                                escape(rating["error"].as_str().unwrap_or("Ratings service is currently unavailable"))
                            )
                        }
                    }
                }
                h += "</blockquote>\n";
            }
            if let Some(pod) = reviews.and_then(|r| r["podname"].as_str()) {
                h += &format!("<dl><dt>Reviews served by:</dt><dd><u>{}</u></dd></dl>\n", escape(pod));
            }
        }
        None => h += &format!("<p>{REVIEWS_UNAVAILABLE}</p>\n"),
    }
    h + "</body></html>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_user_from_header_then_session_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(end_user(&h), None);
        h.insert(header::COOKIE, HeaderValue::from_static("theme=dark; session=jason"));
        assert_eq!(end_user(&h).as_deref(), Some("jason"));
        h.insert("end-user", HeaderValue::from_static("alice"));
        assert_eq!(end_user(&h).as_deref(), Some("alice"));
    }

    #[test]
    fn page_marker_says_version_and_stars() {
        let v2 = json!({"version": "v2", "podname": "reviews-v2", "reviews": [{"reviewer": "R1", "text": "t", "rating": {"stars": 5, "color": "black"}}]});
        assert_eq!(summarize_reviews(Some(&v2)), ("v2".into(), "black".into()));
        let v1 = json!({"version": "v1", "reviews": [{"reviewer": "R1", "text": "t"}]});
        assert_eq!(summarize_reviews(Some(&v1)), ("v1".into(), "none".into()));
        assert_eq!(summarize_reviews(None), ("unavailable".into(), "unavailable".into()));
        let page = page_html(Some("jason"), None, Some(&v2), "v2", "black");
        assert!(page.contains("<!-- bookinfo: reviews=v2 stars=black user=jason -->"), "{page}");
        assert!(page.contains("<font color=\"black\">") && page.contains(DETAILS_UNAVAILABLE));
        let page = page_html(None, None, None, "unavailable", "unavailable");
        assert!(page.contains(REVIEWS_UNAVAILABLE));
    }
}
