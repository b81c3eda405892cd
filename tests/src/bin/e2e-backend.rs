//! Backends and clients for the end-to-end tests, std only so they start instantly in a pod.
//!
//! e2e-backend http NAME ADDR     HTTP/1.1 server answering `backend=NAME path=P end-user=U`
//! e2e-backend banner NAME ADDR   server-first TCP: sends `BANNER NAME\n`, then echoes lines
//! e2e-backend tcp-client ADDR MSG  connects, prints the banner line, sends MSG, prints the echo
//! e2e-backend load HOST:PORT RATE SECONDS keepalive|close
//!                                fixed-rate HTTP/1.1 GETs, prints `ok=N failed=M` and the errors
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("http") if args.len() == 4 => serve(&args[3], &args[2], handle_http),
        Some("banner") if args.len() == 4 => serve(&args[3], &args[2], handle_banner),
        Some("tcp-client") if args.len() == 4 => tcp_client(&args[2], &args[3]),
        Some("load") if args.len() == 6 => load(&args[2], &args[3], &args[4], &args[5]),
        _ => Err("usage: e2e-backend http|banner NAME ADDR | tcp-client ADDR MSG | load HOST:PORT RATE SECONDS keepalive|close"
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
        let mut result = request(&mut conn, addr, host, keepalive, n, &mut connections);
        if let (Err(Failure::Stale(_)), true) = (&result, reused) {
            retried += 1;
            result = request(&mut conn, addr, host, keepalive, n, &mut connections);
        }
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
    println!("ok={ok} failed={failed} retried_stale={retried} connections={connections}");
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
