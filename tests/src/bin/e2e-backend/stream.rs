//! `echo-bytes` and `stream-check`: a byte-exact echo server and a client that pushes a long
//! deterministic pattern through it and checks every byte that comes back, for the sk_msg bypass
//! (which splices sendmsg payloads socket to socket, where a lost, duplicated or reordered chunk
//! would not be caught by TCP).
use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// How long stream-check waits for a byte (or for room to write one) before giving up.
const TIMEOUT: Duration = Duration::from_secs(20);
const ECHO_READ_MAX: usize = 64 * 1024;
const CHECK_WRITE_MAX: usize = 256 * 1024;
const CHECK_READ_MAX: usize = 128 * 1024;

/// splitmix64's finaliser: every input bit reaches every output bit, so consecutive blocks of
/// the pattern share no visible structure.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xorshift64: enough to vary read and write sizes, no crate needed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // xorshift is stuck at zero; mix() of anything but one value is non-zero.
        Rng(mix(seed).max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A size in 1..=max, log-uniform rather than uniform: a uniform pick from 1..=262144 almost
    /// never gives the tiny writes and reads (1, 7, 100 bytes) that split a message mid-record.
    fn size(&mut self, max: usize) -> usize {
        let bits = u64::from(usize::BITS - max.leading_zeros());
        let upper = (2usize << (self.next() % bits)).saturating_sub(1).min(max);
        1 + (self.next() % upper as u64) as usize
    }
}

/// Byte `at` onwards of connection `conn`'s pattern, into `buf`. Each byte is one byte of
/// mix(key, its 8-byte block index), so the pattern never repeats with a short period and a
/// chunk delivered at the wrong offset does not match by accident.
fn fill(buf: &mut [u8], key: u64, at: u64) {
    let mut i = 0;
    while i < buf.len() {
        let pos = at + i as u64;
        let word = mix(key ^ (pos / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes();
        let from = (pos % 8) as usize;
        let take = (8 - from).min(buf.len() - i);
        buf[i..i + take].copy_from_slice(&word[from..from + take]);
        i += take;
    }
}

fn pattern_key(seed: u64, conn: u64) -> u64 {
    mix(seed ^ mix(conn.wrapping_add(0x5151_5151)))
}

/// The server side: a banner, then every byte back as read, in reads of varying size.
pub fn handle_echo_bytes(mut s: TcpStream, name: String) {
    // Distinct read sizes per connection; reproducing them is not needed, the client's check is.
    static CONNS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut rng = Rng::new(nanos ^ CONNS.fetch_add(1, Ordering::Relaxed));
    if s.write_all(format!("BANNER {name}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = vec![0u8; ECHO_READ_MAX];
    loop {
        let want = rng.size(ECHO_READ_MAX);
        match s.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

fn number<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("{what} {s:?}: not a number (or out of range)"))
}

/// `stream-check ADDR BYTES CONNS SEED`.
pub fn stream_check(addr: &str, bytes: &str, conns: &str, seed: &str) -> Result<(), String> {
    let target = addr.to_socket_addrs().map_err(|e| format!("{addr}: {e}"))?.next().ok_or("no address")?;
    let bytes: u64 = number("bytes", bytes)?;
    let conns: u64 = number("connections", conns)?;
    let seed: u64 = number("seed", seed)?;
    if conns == 0 {
        return Err("connections: at least 1".into());
    }
    let start = Instant::now();
    let threads: Vec<_> =
        (0..conns).map(|c| std::thread::spawn(move || check_connection(target, bytes, c, seed))).collect();
    let mut errors = Vec::new();
    for (c, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("connection {c}: {e}")),
            Err(_) => errors.push(format!("connection {c}: thread panicked")),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let secs = start.elapsed().as_secs_f64();
    let total_mb = (bytes * conns) as f64 / (1024.0 * 1024.0);
    println!(
        "stream-check ok conns={conns} bytes_each={bytes} total_mb={total_mb:.1} secs={secs:.3} mb_per_s={:.1} spurious_eagain={}",
        total_mb / secs.max(1e-9),
        SPURIOUS_EAGAIN.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One connection: the banner, then the pattern written by a second thread while this one reads
/// the echo back and compares.
fn check_connection(addr: SocketAddr, bytes: u64, conn: u64, seed: u64) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let banner = read_banner(&mut s)?;
    if !banner.starts_with("BANNER ") {
        return Err(format!("banner {banner:?}"));
    }
    let key = pattern_key(seed, conn);
    let w = s.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || write_pattern(w, bytes, key, seed ^ conn));
    let read = read_and_check(&mut s, bytes, key, seed ^ conn ^ 0xec40);
    if read.is_err() {
        // Unblocks a writer stuck on a full send buffer nobody drains any more.
        let _ = s.shutdown(Shutdown::Both);
    }
    let wrote = writer.join().map_err(|_| "writer thread panicked".to_string())?;
    // A read failure explains a write failure (shut down above), not the other way round.
    read.and(wrote.map_err(|e| format!("write: {e}")))
}

/// The banner line, read a byte at a time so no echoed byte is consumed with it.
fn read_banner(s: &mut TcpStream) -> Result<String, String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut b) {
            Ok(0) => return Err(format!("closed during the banner (got {:?})", String::from_utf8_lossy(&line))),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the banner: {e}")),
        }
        if line.len() > 1024 {
            return Err(format!("no banner line in {:?}", String::from_utf8_lossy(&line)));
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn write_pattern(mut w: TcpStream, bytes: u64, key: u64, rng_seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(rng_seed);
    let mut buf = vec![0u8; CHECK_WRITE_MAX];
    let mut at = 0u64;
    while at < bytes {
        let n = (rng.size(CHECK_WRITE_MAX) as u64).min(bytes - at) as usize;
        fill(&mut buf[..n], key, at);
        w.write_all(&buf[..n]).map_err(|e| format!("at offset {at}: {e}"))?;
        at += n as u64;
    }
    w.shutdown(Shutdown::Write).map_err(|e| format!("shutdown after {bytes} bytes: {e}"))
}

/// Blocking reads that returned EAGAIN before the read timeout: a socket in the sk_msg bypass's
/// sockhash does that when its wait queue is woken by anything but data (here the writer thread
/// on the same socket waiting for send space), a kernel behaviour the README documents.
static SPURIOUS_EAGAIN: AtomicU64 = AtomicU64::new(0);

/// A blocking read that retries an EAGAIN that came before the read timeout (see
/// [`SPURIOUS_EAGAIN`]), as an event-driven reader would, and fails on a real timeout.
fn read_blocking(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let started = std::time::Instant::now();
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock && started.elapsed() < TIMEOUT => {
                SPURIOUS_EAGAIN.fetch_add(1, Ordering::Relaxed);
            }
            other => return other,
        }
    }
}

fn read_and_check(s: &mut TcpStream, bytes: u64, key: u64, rng_seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(rng_seed);
    let (mut got, mut want) = (vec![0u8; CHECK_READ_MAX], vec![0u8; CHECK_READ_MAX]);
    let mut at = 0u64;
    while at < bytes {
        let n = (rng.size(CHECK_READ_MAX) as u64).min(bytes - at) as usize;
        let k = match read_blocking(s, &mut got[..n]) {
            Ok(0) => return Err(format!("end of stream at offset {at} of {bytes}")),
            Ok(k) => k,
            Err(e) => return Err(format!("read at offset {at} of {bytes}: {e}")),
        };
        fill(&mut want[..k], key, at);
        if got[..k] != want[..k] {
            let i = (0..k).find(|&i| got[i] != want[i]).unwrap_or(0);
            return Err(format!(
                "mismatch at offset {}: expected {:#04x}, got {:#04x} (read of {k} bytes at offset {at})",
                at + i as u64,
                want[i],
                got[i]
            ));
        }
        at += k as u64;
    }
    // Reading past the end: the server must close now, anything more is a duplicated chunk.
    match read_blocking(s, &mut got) {
        Ok(0) => Ok(()),
        Ok(k) => Err(format!("{k} extra bytes after the {bytes} expected")),
        Err(e) => Err(format!("waiting for the end of stream after {bytes} bytes: {e}")),
    }
}
