//! Backends and clients for the end-to-end tests, std only so they start instantly in a pod.
//!
//! e2e-backend http NAME ADDR     HTTP/1.1 server answering `backend=NAME path=P end-user=U`
//!                                (a path `/slow/MS` answers after MS milliseconds)
//! e2e-backend echo NAME ADDR     HTTP/1.1 server answering as the Gateway API conformance echo
//!                                server does: its pod name, the path and every request header it
//!                                received (`pod=NAME`, `path=P`, then `header=Name: value` lines)
//! e2e-backend banner NAME ADDR   server-first TCP: sends `BANNER NAME\n`, then echoes lines
//! e2e-backend echo-bytes NAME ADDR
//!                                server-first TCP: sends `BANNER NAME\n`, then echoes every byte
//!                                unchanged (reads of 1..=65536 bytes) until EOF, then shuts down
//! e2e-backend tcp-client ADDR MSG  connects, prints the banner line, sends MSG, prints the echo
//! e2e-backend tcp-stream ADDR SECONDS INTERVAL_MS
//!                                one long TCP stream to a banner server: a numbered line every
//!                                INTERVAL_MS, each echo checked in order; prints `lines=N intact`
//!                                or fails with the first line that broke
//! e2e-backend stream-check ADDR BYTES CONNS SEED
//!                                CONNS parallel connections to an echo-bytes server, each sending
//!                                BYTES of a pattern seeded by SEED (writes of 1..=262144 bytes,
//!                                reads of 1..=131072) and checking every echoed byte; prints
//!                                `stream-check ok conns= bytes_each= total_mb= secs= mb_per_s=`
//!                                (MiB one way) or fails at the first wrong, missing or extra byte
//! e2e-backend load HOST:PORT RATE SECONDS keepalive|close
//!                                fixed-rate HTTP/1.1 GETs, prints `ok=N failed=M ... p50_ms= p99_ms=
//!                                max_ms=` (latency of each request, a stale-connection retry included)
//!                                and the errors
//! e2e-backend abuse MODE HOST:PORT N [ARGS]   a misbehaving client (the noisy neighbour), prints
//!                                one line `codes <status>=<count>... closed=<n>` plus mode fields:
//!   connections N               opens N connections and keeps them; then one GET on each
//!   headers N BYTES             N requests, each with a BYTES-long header
//!   slowloris N INTERVAL_MS     N connections sending a request head one byte per interval
//!   stalled-body N LEN SENT     N concurrent requests announcing LEN body bytes, sending SENT
//!   slow-body N LEN CHUNK MS    N concurrent uploads of LEN bytes, CHUNK bytes every MS ms; an
//!                               upload answered before it is done stops sending
//!   flood IDLE WORKERS SECS     WORKERS keep-alive connections sending GETs back to back (each
//!                               a new one as soon as the last is answered; reconnecting when
//!                               closed) for SECS, and once they are connected IDLE more
//!                               connections held open without a byte; prints the flood's status
//!                               codes and closed connections, `requests=` and
//!                               `idle_refused=` (idle connections the server closed)
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

mod stream;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("http") if args.len() == 4 => serve(&args[3], &args[2], handle_http),
        Some("echo") if args.len() == 4 => serve(&args[3], &args[2], handle_echo),
        Some("banner") if args.len() == 4 => serve(&args[3], &args[2], handle_banner),
        Some("echo-bytes") if args.len() == 4 => serve(&args[3], &args[2], stream::handle_echo_bytes),
        Some("stream-check") if args.len() == 6 => stream::stream_check(&args[2], &args[3], &args[4], &args[5]),
        Some("tcp-client") if args.len() == 4 => tcp_client(&args[2], &args[3]),
        Some("tcp-stream") if args.len() == 5 => tcp_stream(&args[2], &args[3], &args[4]),
        Some("load") if args.len() == 6 => load(&args[2], &args[3], &args[4], &args[5]),
        Some("abuse") if args.len() >= 5 => abuse(&args[2], &args[3], &args[4..]),
        _ => Err("usage: e2e-backend http|echo|banner|echo-bytes NAME ADDR | tcp-client ADDR MSG | tcp-stream ADDR SECONDS INTERVAL_MS | stream-check ADDR BYTES CONNS SEED | load HOST:PORT RATE SECONDS keepalive|close | abuse MODE HOST:PORT N [ARGS]"
            .to_string()),
    };
    if let Err(e) = result {
        eprintln!("e2e-backend: {e}");
        std::process::exit(1);
    }
}

fn serve(addr: &str, name: &str, handler: fn(TcpStream, String)) -> Result<(), String> {
    let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    eprintln!("e2e-backend {name} listening on {addr}");
    for s in l.incoming().flatten() {
        let name = name.to_string();
        std::thread::spawn(move || handler(s, name));
    }
    Ok(())
}

fn handle_http(s: TcpStream, name: String) {
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (mut len, mut user, mut host) = (0usize, String::from("-"), String::from("-"));
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "end-user" => user = v.trim().to_string(),
                    "host" => host = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        // A request that takes a while to answer (the drain tests' long requests).
        if let Some(ms) = path.strip_prefix("/slow/").and_then(|ms| ms.parse::<u64>().ok()) {
            std::thread::sleep(Duration::from_millis(ms.min(60_000)));
        }
        let out = format!("backend={name} path={path} end-user={user} host={host}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-backend: {name}\r\ncontent-length: {}\r\n\r\n{out}",
            out.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn handle_echo(s: TcpStream, name: String) {
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut out = format!("pod={name}\npath={path}\n");
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
                out.push_str(&format!("header={}: {}\n", k.trim(), v.trim()));
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-backend: {name}\r\ncontent-length: {}\r\n\r\n{out}",
            out.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn handle_banner(s: TcpStream, name: String) {
    let Ok(mut w) = s.try_clone() else { return };
    if w.write_all(format!("BANNER {name}\n").as_bytes()).is_err() {
        return;
    }
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while r.read_line(&mut line).unwrap_or(0) > 0 {
        if w.write_all(format!("ECHO {line}").as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

fn tcp_client(addr: &str, msg: &str) -> Result<(), String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut banner = String::new();
    r.read_line(&mut banner).map_err(|e| format!("reading banner: {e}"))?;
    print!("{banner}");
    w.write_all(format!("{msg}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut echo = String::new();
    r.read_line(&mut echo).map_err(|e| format!("reading echo: {e}"))?;
    print!("{echo}");
    Ok(())
}

fn tcp_stream(addr: &str, secs: &str, interval_ms: &str) -> Result<(), String> {
    let run = Duration::try_from_secs_f64(secs.parse().map_err(|_| format!("seconds {secs:?}"))?)
        .map_err(|_| format!("seconds {secs}: out of range"))?;
    let interval = Duration::from_millis(interval_ms.parse().map_err(|_| format!("interval {interval_ms:?}"))?);
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut banner = String::new();
    r.read_line(&mut banner).map_err(|e| format!("reading the banner: {e}"))?;
    if !banner.starts_with("BANNER ") {
        return Err(format!("banner {banner:?}"));
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < run {
        n += 1;
        let line = format!("line {n} {}\n", "x".repeat(64));
        let at = start.elapsed();
        w.write_all(line.as_bytes()).map_err(|e| format!("line {n} at {at:?}: write: {e}"))?;
        let mut echo = String::new();
        match r.read_line(&mut echo) {
            Ok(0) => return Err(format!("line {n} at {at:?}: the stream was closed")),
            Err(e) => return Err(format!("line {n} at {at:?}: read: {e}")),
            Ok(_) if echo != format!("ECHO {line}") => return Err(format!("line {n} at {at:?}: echo {echo:?}")),
            Ok(_) => {}
        }
        std::thread::sleep(interval);
    }
    println!("lines={n} intact after {:?}", start.elapsed());
    Ok(())
}

/// Why one request failed; `Stale` means a reused keep-alive connection was closed before any
/// byte of the response came back, which an HTTP/1 client retries on a new connection (as
/// browsers, curl and hyper's client do): the server closed it while idle.
enum Failure {
    Stale(String),
    Failed(String),
}

type Conn = (BufReader<TcpStream>, TcpStream);

fn load(host: &str, rate: &str, secs: &str, mode: &str) -> Result<(), String> {
    let rate: f64 = rate.parse().map_err(|_| format!("rate {rate:?}"))?;
    let secs: f64 = secs.parse().map_err(|_| format!("seconds {secs:?}"))?;
    let keepalive = match mode {
        "keepalive" => true,
        "close" => false,
        _ => return Err(format!("mode {mode:?}: keepalive or close")),
    };
    let addr = host.to_socket_addrs().map_err(|e| format!("{host}: {e}"))?.next().ok_or("no address")?;
    let interval = Duration::try_from_secs_f64(1.0 / rate).map_err(|_| format!("rate {rate}: must be > 0"))?;
    let run = Duration::try_from_secs_f64(secs).map_err(|_| format!("seconds {secs}: out of range"))?;
    let start = Instant::now();
    let (mut ok, mut failed, mut retried, mut connections) = (0u64, 0u64, 0u64, 0u64);
    let mut latencies: Vec<Duration> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut conn: Option<Conn> = None;
    let mut next = start;
    let mut n = 0u64;
    while start.elapsed() < run {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += interval;
        n += 1;
        let reused = conn.is_some();
        let sent = Instant::now();
        let mut result = request(&mut conn, addr, host, keepalive, n, &mut connections);
        if let (Err(Failure::Stale(_)), true) = (&result, reused) {
            retried += 1;
            result = request(&mut conn, addr, host, keepalive, n, &mut connections);
        }
        latencies.push(sent.elapsed());
        match result {
            Ok(()) => ok += 1,
            Err(Failure::Stale(e) | Failure::Failed(e)) => {
                failed += 1;
                conn = None;
                if errors.len() < 10 {
                    errors.push(format!("request {n} at {:?}: {e}", start.elapsed()));
                }
            }
        }
    }
    latencies.sort();
    let pct = |p: usize| {
        let i = (latencies.len() * p).div_ceil(100).saturating_sub(1);
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "ok={ok} failed={failed} retried_stale={retried} connections={connections} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        pct(50),
        pct(99),
        pct(100)
    );
    for e in errors {
        println!("error: {e}");
    }
    Ok(())
}

fn request(
    conn: &mut Option<Conn>,
    addr: std::net::SocketAddr,
    host: &str,
    keepalive: bool,
    n: u64,
    connections: &mut u64,
) -> Result<(), Failure> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| Failure::Failed(format!("connect: {e}")))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| Failure::Failed(e.to_string()))?;
        let w = s.try_clone().map_err(|e| Failure::Failed(e.to_string()))?;
        *connections += 1;
        *conn = Some((BufReader::new(s), w));
    }
    let Some((r, w)) = conn.as_mut() else { return Err(Failure::Failed("no connection".into())) };
    let close = if keepalive { "" } else { "connection: close\r\n" };
    let sent = w.write_all(format!("GET /load/{n} HTTP/1.1\r\nhost: {host}\r\n{close}\r\n").as_bytes());
    let mut status = String::new();
    let read = sent.and_then(|()| r.read_line(&mut status));
    match read {
        Ok(0) => {
            *conn = None;
            return Err(Failure::Stale("connection closed before the response".into()));
        }
        Err(e) if status.is_empty() => {
            *conn = None;
            return Err(Failure::Stale(format!("before the response: {e}")));
        }
        Err(e) => return Err(Failure::Failed(format!("reading the status line: {e}"))),
        Ok(_) => {}
    }
    let (mut len, mut server_closes) = (0usize, false);
    loop {
        let mut h = String::new();
        match r.read_line(&mut h) {
            Ok(0) | Err(_) => return Err(Failure::Failed("truncated headers".into())),
            Ok(_) => {}
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "connection" => server_closes = v.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| Failure::Failed(format!("reading the body: {e}")))?;
    if !keepalive || server_closes {
        *conn = None;
    }
    let body = String::from_utf8_lossy(&body);
    if !status.starts_with("HTTP/1.1 200") || !body.contains("backend=") {
        return Err(Failure::Failed(format!("{} {}", status.trim_end(), body.trim_end())));
    }
    Ok(())
}

/// The status code of the response on `s`, or None when the server closed (or reset) the
/// connection before any response byte.
fn status_of(s: &mut TcpStream) -> Result<Option<u16>, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.contains(&b'\n') {
        match s.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if got.is_empty() && matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => return Ok(None),
            Err(e) => return Err(format!("reading a status line: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&got);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .map(Some)
        .ok_or_else(|| format!("bad status line {line:?}"))
}

fn connect(addr: std::net::SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    Ok(s)
}

/// The status of a request written on `s` (a write the server refused by closing is `None`).
fn send_and_status(s: &mut TcpStream, req: &[u8]) -> Result<Option<u16>, String> {
    match s.write_all(req) {
        Ok(()) => status_of(s),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) => Ok(None),
        Err(e) => Err(format!("write: {e}")),
    }
}

/// Whether the server has answered (or closed) already, without waiting.
fn answered(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let r = s.peek(&mut [0u8; 1]);
    let _ = s.set_nonblocking(false);
    match r {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// What one abuse mode saw: each request's status (None: closed or reset first), and extra
/// text for the summary line.
type Outcomes = (Vec<Option<u16>>, String);

fn abuse(mode: &str, host: &str, args: &[String]) -> Result<(), String> {
    let addr = host.to_socket_addrs().map_err(|e| format!("{host}: {e}"))?.next().ok_or("no address")?;
    let num = |i: usize| -> Result<usize, String> {
        let a = args.get(i).ok_or(format!("{mode}: missing argument {}", i + 1))?;
        a.parse().map_err(|_| format!("{mode}: {a:?} is not a number"))
    };
    let n = num(0)?;
    let (outcomes, extra) = match mode {
        "connections" => (abuse_connections(addr, host, n)?, String::new()),
        "headers" => (abuse_headers(addr, host, n, num(1)?)?, String::new()),
        "slowloris" => abuse_slowloris(addr, host, n, Duration::from_millis(num(1)? as u64))?,
        "stalled-body" => abuse_stalled_body(addr, host, n, num(1)?, num(2)?)?,
        "slow-body" => {
            let (len, chunk, every) = (num(1)?, num(2)?.max(1), Duration::from_millis(num(3)? as u64));
            (abuse_slow_body(addr, host, n, len, chunk, every), String::new())
        }
        "flood" => {
            let (idle, workers, secs) = (n, num(1)?, num(2)?);
            let (outcomes, idle_refused) = flood(addr, host, idle, workers, Duration::from_secs(secs as u64))?;
            let extra = format!(" requests={} idle_refused={idle_refused}", outcomes.len());
            (outcomes, extra)
        }
        _ => {
            return Err(format!(
                "abuse mode {mode:?}: connections, headers, slowloris, stalled-body, slow-body or flood"
            ))
        }
    };
    let mut codes = std::collections::BTreeMap::new();
    let mut closed = 0;
    for o in outcomes {
        match o {
            Some(c) => *codes.entry(c).or_insert(0) += 1,
            None => closed += 1,
        }
    }
    let codes: Vec<String> = codes.iter().map(|(c, k)| format!("{c}={k}")).collect();
    println!("codes {} closed={closed}{extra}", codes.join(" "));
    Ok(())
}

/// `n` connections open at once, then one request on each: the ones over the source's cap were
/// closed by the proxy at accept.
fn abuse_connections(addr: std::net::SocketAddr, host: &str, n: usize) -> Result<Vec<Option<u16>>, String> {
    let get = format!("GET /abuse HTTP/1.1\r\nhost: {host}\r\n\r\n");
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(connect(addr)?);
    }
    let mut out = Vec::new();
    for c in &mut conns {
        out.push(send_and_status(c, get.as_bytes())?);
    }
    Ok(out)
}

/// `n` requests, one after another, each with a header of `bytes` bytes.
fn abuse_headers(addr: std::net::SocketAddr, host: &str, n: usize, bytes: usize) -> Result<Vec<Option<u16>>, String> {
    let req = format!("GET /abuse HTTP/1.1\r\nhost: {host}\r\nx-big: {}\r\n\r\n", "a".repeat(bytes));
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(send_and_status(&mut connect(addr)?, req.as_bytes())?);
    }
    Ok(out)
}

/// `n` connections sending one header byte per `interval`, never finishing the head; how long
/// the proxy let them live.
fn abuse_slowloris(addr: std::net::SocketAddr, host: &str, n: usize, interval: Duration) -> Result<Outcomes, String> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let host = host.to_owned();
            std::thread::spawn(move || -> Result<(Option<u16>, Duration), String> {
                let mut s = connect(addr)?;
                s.set_read_timeout(Some(interval)).map_err(|e| e.to_string())?;
                let started = Instant::now();
                s.write_all(format!("GET /slow HTTP/1.1\r\nhost: {host}\r\nx-slow: ").as_bytes())
                    .map_err(|e| format!("write: {e}"))?;
                let mut buf = [0u8; 256];
                while started.elapsed() < Duration::from_secs(60) {
                    match s.read(&mut buf) {
                        Ok(0) => return Ok((None, started.elapsed())),
                        Ok(_) => return Ok((Some(0), started.elapsed())),
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => {
                            return Ok((None, started.elapsed()))
                        }
                        Err(_) => {} // the interval passed: one more header byte
                    }
                    if s.write_all(b"a").is_err() {
                        return Ok((None, started.elapsed()));
                    }
                }
                Err("still open after 60 s".into())
            })
        })
        .collect();
    let mut out = Vec::new();
    let mut longest = Duration::ZERO;
    let mut shortest = Duration::MAX;
    for t in threads {
        let (o, took) = t.join().map_err(|_| "slowloris thread panicked")??;
        out.push(o);
        longest = longest.max(took);
        shortest = shortest.min(took);
    }
    Ok((out, format!(" min_ms={} max_ms={}", shortest.as_millis(), longest.as_millis())))
}

/// `n` POSTs announcing `len` body bytes that send `sent` and then stall.
fn abuse_stalled_body(
    addr: std::net::SocketAddr,
    host: &str,
    n: usize,
    len: usize,
    sent: usize,
) -> Result<Outcomes, String> {
    let head = format!("POST /upload HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len}\r\n\r\n");
    let mut req = head.into_bytes();
    req.extend(std::iter::repeat_n(b'u', sent));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let req = req.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                connect(addr).and_then(|mut s| send_and_status(&mut s, &req)).map(|o| (o, started.elapsed()))
            })
        })
        .collect();
    let mut out = Vec::new();
    let mut longest = Duration::ZERO;
    for t in threads {
        let (o, took) = t.join().map_err(|_| "stalled-body thread panicked")??;
        out.push(o);
        longest = longest.max(took);
    }
    Ok((out, format!(" max_ms={}", longest.as_millis())))
}

/// `n` POSTs of `len` body bytes sent `chunk` bytes every `every`, stopping early once answered.
fn abuse_slow_body(
    addr: std::net::SocketAddr,
    host: &str,
    n: usize,
    len: usize,
    chunk: usize,
    every: Duration,
) -> Vec<Option<u16>> {
    let head = format!("POST /upload HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len}\r\n\r\n");
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let head = head.clone();
            std::thread::spawn(move || -> Option<u16> {
                // A connection the proxy refuses (or closes at accept) is an outcome too.
                let mut s = connect(addr).ok()?;
                s.write_all(head.as_bytes()).ok()?;
                let data = vec![b'u'; chunk];
                let mut sent = 0;
                while sent < len {
                    std::thread::sleep(every);
                    if answered(&s) {
                        break;
                    }
                    let k = chunk.min(len - sent);
                    if s.write_all(&data[..k]).is_err() {
                        break;
                    }
                    sent += k;
                }
                status_of(&mut s).ok().flatten()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().ok().flatten()).collect()
}

/// One GET on a keep-alive connection: its status and whether the server closes after it (None:
/// the connection was closed or reset before a whole response).
fn flood_request(r: &mut BufReader<TcpStream>, w: &mut TcpStream, req: &[u8]) -> Option<(u16, bool)> {
    w.write_all(req).ok()?;
    let mut status = String::new();
    if r.read_line(&mut status).ok()? == 0 {
        return None;
    }
    let code = status.split_whitespace().nth(1)?.parse().ok()?;
    let (mut len, mut closes) = (0usize, false);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "connection" => closes = v.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((code, closes))
}

/// The `flood` abuse: the outcome of every flood request (None: its connection was closed
/// before the response) and how many of the idle connections the server closed.
fn flood(
    addr: std::net::SocketAddr,
    host: &str,
    idle: usize,
    workers: usize,
    run: Duration,
) -> Result<(Vec<Option<u16>>, usize), String> {
    let start = Instant::now();
    let connected = std::sync::Arc::new(std::sync::Barrier::new(workers + 1));
    let req = format!("GET /flood HTTP/1.1\r\nhost: {host}\r\n\r\n").into_bytes();
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (req, connected) = (req.clone(), connected.clone());
            std::thread::spawn(move || {
                let open = || -> Option<(BufReader<TcpStream>, TcpStream)> {
                    let s = connect(addr).ok()?;
                    let w = s.try_clone().ok()?;
                    Some((BufReader::new(s), w))
                };
                let mut conn = open();
                connected.wait();
                let mut out = Vec::new();
                while start.elapsed() < run {
                    let Some((r, w)) = conn.as_mut() else {
                        // Refused (closed at accept): try again, as a flooding client does.
                        out.push(None);
                        conn = open();
                        continue;
                    };
                    match flood_request(r, w, &req) {
                        Some((code, closes)) => {
                            out.push(Some(code));
                            if closes {
                                conn = open();
                            }
                        }
                        None => {
                            out.push(None);
                            conn = open();
                        }
                    }
                }
                out
            })
        })
        .collect();
    connected.wait();
    // The idle connections: opened once the flood's are in, held until the flood ends.
    let mut held = Vec::new();
    let mut idle_refused = 0;
    for _ in 0..idle {
        match connect(addr) {
            Ok(s) => held.push(s),
            Err(_) => idle_refused += 1,
        }
    }
    let mut outcomes = Vec::new();
    for t in threads {
        outcomes.extend(t.join().map_err(|_| "flood thread panicked")?);
    }
    idle_refused += held.iter().filter(|s| answered(s)).count();
    Ok((outcomes, idle_refused))
}
