//! Backends and clients for the end-to-end tests, std only so they start instantly in a pod.
//!
//! e2e-backend http NAME ADDR     HTTP/1.1 server answering `backend=NAME path=P end-user=U`
//! e2e-backend banner NAME ADDR   server-first TCP: sends `BANNER NAME\n`, then echoes lines
//! e2e-backend tcp-client ADDR MSG  connects, prints the banner line, sends MSG, prints the echo
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("http") if args.len() == 4 => serve(&args[3], &args[2], handle_http),
        Some("banner") if args.len() == 4 => serve(&args[3], &args[2], handle_banner),
        Some("tcp-client") if args.len() == 4 => tcp_client(&args[2], &args[3]),
        _ => Err("usage: e2e-backend http|banner NAME ADDR | tcp-client ADDR MSG".to_string()),
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
