//! HTTP/2 (h2c, prior knowledge) backend and fixed-rate client for the end-to-end tests: the
//! loads a std-only HTTP/1 tool cannot make (multiplexed streams on one connection, GOAWAY on
//! drain, gRPC's trailers).
//!
//! e2e-h2 serve NAME ADDR          h2c server: a gRPC-shaped request (content-type
//!                                 application/grpc...) gets its message echoed back with the
//!                                 trailer `grpc-status: 0`; any other gets `backend=NAME path=P`;
//!                                 a path `/slow/MS` answers after MS milliseconds
//! e2e-h2 load HOST:PORT RATE SECONDS h2c|grpc
//!                                 fixed-rate requests as streams of one HTTP/2 connection (a new
//!                                 one once the server has sent GOAWAY); prints `ok=N failed=M
//!                                 retried=R connections=C` and the errors. `retried` counts
//!                                 requests the server refused without processing them (a stream
//!                                 above a GOAWAY's last stream id, RFC 9113 §6.8), which every
//!                                 HTTP/2 and gRPC client retries on a new connection.
//! e2e-h2 flood HOST:PORT CONNS STREAMS SECONDS
//!                                 as many requests as the server takes: CONNS connections, each
//!                                 with STREAMS streams always in flight; prints `codes ok=N
//!                                 overloaded=M other=O errors=E` (`overloaded`: 503 with
//!                                 `x-envoy-overloaded`)
//! e2e-h2 grpc-calls HOST:PORT PATH N
//!                                 N gRPC unary calls to PATH (`/service/method`), one after the
//!                                 other on one h2c connection as a gRPC channel makes them;
//!                                 prints `BACKEND=<x-backend> PATH=<x-path>` per call, or fails
//!                                 on the first call not answered 200 with `grpc-status: 0`
use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

type Body = BoxBody<Bytes, Infallible>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("serve") if args.len() == 4 => serve(&args[2], &args[3]).await,
        Some("load") if args.len() == 6 => load(&args[2], &args[3], &args[4], &args[5]).await,
        Some("grpc-calls") if args.len() == 5 => grpc_calls(&args[2], &args[3], &args[4]).await,
        Some("flood") if args.len() == 6 => flood(&args[2], &args[3], &args[4], &args[5]).await,
        _ => Err("usage: e2e-h2 serve NAME ADDR | load HOST:PORT RATE SECONDS h2c|grpc | grpc-calls HOST:PORT PATH N \
                  | flood HOST:PORT CONNS STREAMS SECONDS"
            .to_string()),
    };
    if let Err(e) = result {
        eprintln!("e2e-h2: {e}");
        std::process::exit(1);
    }
}

async fn serve(name: &str, addr: &str) -> Result<(), String> {
    let l = TcpListener::bind(addr).await.map_err(|e| format!("bind {addr}: {e}"))?;
    eprintln!("e2e-h2 {name} listening on {addr}");
    let name: Arc<str> = name.into();
    loop {
        let Ok((s, _)) = l.accept().await else { continue };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(name.clone(), req));
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

async fn answer(name: Arc<str>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let message = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|ms| ms.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    if !grpc {
        let body = format!("backend={name} path={path}\n");
        return Ok(Response::new(Full::new(Bytes::from(body)).boxed()));
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = futures_util::stream::iter([Ok(Frame::data(message)), Ok(Frame::trailers(trailers))]);
    let mut resp = Response::new(StreamBody::new(frames).boxed());
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    // Which pod answered and the path it got, as the conformance gRPC echo server reports them
    // in its reply; here in headers, so a client needs no protobuf.
    if let (Ok(n), Ok(p)) = (HeaderValue::from_str(&name), HeaderValue::from_str(&path)) {
        resp.headers_mut().insert("x-backend", n);
        resp.headers_mut().insert("x-path", p);
    }
    Ok(resp)
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 10 {
            errors.push(what);
        }
    }
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn connect(addr: std::net::SocketAddr) -> Result<Sender, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Whether the server refused the stream without processing it (RFC 9113 §6.8: safe to retry).
fn refused(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if text.contains("REFUSED_STREAM") || text.contains("refused stream") {
            return true;
        }
        source = s.source();
    }
    false
}

async fn grpc_calls(host: &str, path: &str, n: &str) -> Result<(), String> {
    let n: u64 = n.parse().map_err(|_| format!("count {n:?}"))?;
    let addr = tokio::net::lookup_host(host).await.map_err(|e| format!("{host}: {e}"))?.next().ok_or("no address")?;
    // Nagle off, as gRPC's own clients set it: one call at a time would otherwise wait out the
    // peer's delayed ACK on every call.
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    for i in 0..n {
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{host}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| format!("call {i}: {e}"))?;
        let resp = sender.send_request(req).await.map_err(|e| format!("call {i}: {e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| format!("call {i}: body: {e}"))?;
        let status = body.trailers().and_then(|t| t.get("grpc-status")).cloned();
        if parts.status != StatusCode::OK || status.as_ref().is_none_or(|s| s != "0") {
            return Err(format!("call {i}: {} grpc-status={status:?} headers={:?}", parts.status, parts.headers));
        }
        let h = |k: &str| parts.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        println!("BACKEND={} PATH={}", h("x-backend"), h("x-path"));
    }
    Ok(())
}

fn request(host: &str, grpc: bool, n: u64) -> Result<Request<Full<Bytes>>, String> {
    let uri = format!("http://{host}/load/{n}");
    let b = Request::builder().uri(uri);
    let req = if grpc {
        // A gRPC unary call's shape: POST, te: trailers, one length-prefixed message.
        let mut msg = vec![0u8, 0, 0, 0, 8];
        msg.extend_from_slice(&n.to_be_bytes());
        b.method("POST")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(msg)))
    } else {
        b.body(Full::new(Bytes::new()))
    };
    req.map_err(|e| e.to_string())
}

/// One request; Err(true) when refused unprocessed (retry), Err(false) after a real failure.
async fn once(sender: &mut Sender, host: &str, grpc: bool, n: u64, tally: &Tally) -> Result<(), bool> {
    let req = match request(host, grpc, n) {
        Ok(r) => r,
        Err(e) => {
            tally.fail(format!("request {n}: {e}"));
            return Err(false);
        }
    };
    let sent = async {
        sender.ready().await?;
        sender.send_request(req).await
    };
    let resp = match sent.await {
        Ok(r) => r,
        Err(e) if refused(&e) => return Err(true),
        Err(e) => {
            tally.fail(format!("request {n}: {e:?}"));
            return Err(false);
        }
    };
    let status = resp.status();
    match resp.into_body().collect().await {
        Err(e) => tally.fail(format!("request {n}: body: {e}")),
        Ok(body) => {
            let trailer = body.trailers().and_then(|t| t.get("grpc-status")).cloned();
            let body = body.to_bytes();
            let good = status == StatusCode::OK
                && if grpc {
                    trailer.as_ref().is_some_and(|t| t == "0") && body.len() == 13
                } else {
                    body.starts_with(b"backend=")
                };
            if good {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            } else {
                tally.fail(format!("request {n}: {status} grpc-status={trailer:?} body={body:?}"));
            }
        }
    }
    Ok(())
}

async fn load(host: &str, rate: &str, secs: &str, kind: &str) -> Result<(), String> {
    let rate: f64 = rate.parse().map_err(|_| format!("rate {rate:?}"))?;
    let secs: f64 = secs.parse().map_err(|_| format!("seconds {secs:?}"))?;
    let grpc = match kind {
        "grpc" => true,
        "h2c" => false,
        _ => return Err(format!("kind {kind:?}: h2c or grpc")),
    };
    let addr = tokio::net::lookup_host(host).await.map_err(|e| format!("{host}: {e}"))?.next().ok_or("no address")?;
    let interval = Duration::try_from_secs_f64(1.0 / rate).map_err(|_| format!("rate {rate}: must be > 0"))?;
    let run = Duration::try_from_secs_f64(secs).map_err(|_| format!("seconds {secs}: out of range"))?;
    let tally = Arc::new(Tally::default());
    let host: Arc<str> = host.into();
    let mut connections = 0u64;
    let mut sender: Option<Sender> = None;
    let mut ticker = tokio::time::interval(interval);
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < run {
        ticker.tick().await;
        n += 1;
        // A connection the server has said GOAWAY on (or closed) takes no new stream.
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match connect(addr).await {
                Ok(s) => {
                    connections += 1;
                    sender = Some(s);
                }
                Err(e) => {
                    tally.fail(format!("request {n} at {:?}: {e}", start.elapsed()));
                    sender = None;
                    continue;
                }
            }
        }
        let Some(mut s) = sender.clone() else { continue };
        let (tally, host) = (tally.clone(), host.clone());
        tasks.spawn(async move {
            if once(&mut s, &host, grpc, n, &tally).await == Err(true) {
                tally.retried.fetch_add(1, Ordering::Relaxed);
                match connect(addr).await {
                    Ok(mut fresh) => {
                        if once(&mut fresh, &host, grpc, n, &tally).await == Err(true) {
                            tally.fail(format!("request {n}: refused twice"));
                        }
                    }
                    Err(e) => tally.fail(format!("request {n}: retry: {e}")),
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    println!(
        "ok={} failed={} retried={} connections={connections}",
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.retried.load(Ordering::Relaxed)
    );
    for e in tally.errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        println!("error: {e}");
    }
    Ok(())
}

#[derive(Default)]
struct FloodTally {
    ok: AtomicU64,
    overloaded: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
}

/// A pod flooding streams: `conns` connections, `streams` requests in flight on each, each
/// stream sending its next request as soon as it has its answer, for `secs` seconds.
async fn flood(host: &str, conns: &str, streams: &str, secs: &str) -> Result<(), String> {
    let conns: u32 = conns.parse().map_err(|_| format!("connections {conns:?}"))?;
    let streams: u32 = streams.parse().map_err(|_| format!("streams {streams:?}"))?;
    let secs: u64 = secs.parse().map_err(|_| format!("seconds {secs:?}"))?;
    let addr = tokio::net::lookup_host(host).await.map_err(|e| format!("{host}: {e}"))?.next().ok_or("no address")?;
    let until =
        Instant::now().checked_add(Duration::from_secs(secs)).ok_or_else(|| format!("seconds {secs}: out of range"))?;
    let tally = Arc::new(FloodTally::default());
    let host: Arc<str> = host.into();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (tally, host) = (tally.clone(), host.clone());
        tasks.spawn(async move {
            while Instant::now() < until {
                let Ok(sender) = connect(addr).await else {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let mut streams_of_conn = tokio::task::JoinSet::new();
                for _ in 0..streams {
                    let (mut sender, tally, host) = (sender.clone(), tally.clone(), host.clone());
                    streams_of_conn.spawn(async move {
                        let mut n = 0u64;
                        while Instant::now() < until && !sender.is_closed() {
                            n += 1;
                            let Ok(req) = request(&host, false, n) else { return };
                            let sent = async {
                                sender.ready().await?;
                                sender.send_request(req).await
                            };
                            let Ok(resp) = sent.await else {
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                                return;
                            };
                            let overloaded = resp.headers().contains_key("x-envoy-overloaded");
                            let counter = match resp.status() {
                                StatusCode::OK => &tally.ok,
                                StatusCode::SERVICE_UNAVAILABLE if overloaded => &tally.overloaded,
                                _ => &tally.other,
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            let _ = resp.into_body().collect().await;
                        }
                    });
                }
                while streams_of_conn.join_next().await.is_some() {}
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "codes ok={} overloaded={} other={} errors={}",
        get(&tally.ok),
        get(&tally.overloaded),
        get(&tally.other),
        get(&tally.errors)
    );
    Ok(())
}
