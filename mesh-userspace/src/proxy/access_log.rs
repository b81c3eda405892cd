//! The access log: one line per request in Envoy's default text format or as JSON, off by
//! default as in Istio. Lines are formatted on the request path only when the log is on, and
//! handed to a writer task through a bounded channel: a full channel drops the line and counts it
//! (`mesh_access_log_dropped_total`), so a slow stdout never holds a request up.
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::SystemTime,
};

use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

pub use crate::config::telemetry::filter::LogFilter;
use crate::{
    config::telemetry::filter::Attributes,
    metrics::{Flags, Metrics},
};

/// The access log's format, or off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLogMode {
    /// No access log (Istio's default).
    #[default]
    Off,
    /// Envoy's default format string.
    Text,
    /// The same fields as one JSON object per line.
    Json,
}

/// Lines that may wait for the writer; past this the log drops lines rather than memory grows.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Per source pod (namespace → name), what Istio's `Telemetry` resources decide.
pub type WorkloadOverrides = std::collections::HashMap<String, std::collections::HashMap<String, PodLog>>;

/// One pod's access log as its `Telemetry` resources set it.
#[derive(Clone, Debug)]
pub enum PodLog {
    /// No line for its requests.
    Off,
    /// A line for each request, or, with a filter, for each request it evaluates to `true` on.
    On(Option<Arc<LogFilter>>),
}

impl From<bool> for PodLog {
    fn from(on: bool) -> Self {
        if on {
            PodLog::On(None)
        } else {
            PodLog::Off
        }
    }
}

/// The switch, the channel and its receiving end until a writer takes it.
pub struct AccessLog {
    mode: AtomicU8,
    /// Set from the `Telemetry` resources of the live config (None: none has `accessLogging`,
    /// the flag alone decides).
    overrides: arc_swap::ArcSwapOption<WorkloadOverrides>,
    tx: mpsc::Sender<String>,
    rx: Mutex<Option<mpsc::Receiver<String>>>,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog::new(DEFAULT_CAPACITY)
    }
}

impl AccessLog {
    /// An access log, off, holding at most `capacity` lines for its writer.
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        AccessLog { mode: AtomicU8::new(0), overrides: Default::default(), tx, rx: Mutex::new(Some(rx)) }
    }

    /// The current mode.
    pub fn mode(&self) -> AccessLogMode {
        match self.mode.load(Ordering::Relaxed) {
            1 => AccessLogMode::Text,
            2 => AccessLogMode::Json,
            _ => AccessLogMode::Off,
        }
    }

    /// Switches the log (at any time: requests that start afterwards follow the new mode).
    pub fn set_mode(&self, mode: AccessLogMode) {
        let v = match mode {
            AccessLogMode::Off => 0,
            AccessLogMode::Text => 1,
            AccessLogMode::Json => 2,
        };
        self.mode.store(v, Ordering::Relaxed);
    }

    /// Replaces the per-pod decisions of the `Telemetry` resources.
    pub fn set_overrides(&self, overrides: Option<WorkloadOverrides>) {
        self.overrides.store(overrides.map(std::sync::Arc::new));
    }

    /// The mode for a request or connection from `source` — the flag's, unless a `Telemetry`
    /// resource turns the log on (in the flag's format, Envoy's text when the flag is off) or off
    /// for that pod — and the `Telemetry` filter deciding which of its requests get a line (None:
    /// all of them).
    pub fn for_source(&self, source: Option<&crate::registry::Workload>) -> (AccessLogMode, Option<Arc<LogFilter>>) {
        let base = self.mode();
        let overrides = self.overrides.load();
        let (Some(map), Some(w)) = (overrides.as_deref(), source) else { return (base, None) };
        match map.get(w.namespace.as_str()).and_then(|m| m.get(w.name.as_str())) {
            Some(PodLog::On(f)) if base == AccessLogMode::Off => (AccessLogMode::Text, f.clone()),
            Some(PodLog::On(f)) => (base, f.clone()),
            Some(PodLog::Off) => (AccessLogMode::Off, None),
            None => (base, None),
        }
    }

    /// Writes the line of a request or TCP connection (`fields`, `outcome`) in `mode` when its
    /// `Telemetry` filter wants it (a filter that says no, or fails, means no line, as in Envoy).
    pub fn write(&self, mode: AccessLogMode, fields: &Fields, outcome: &Outcome, metrics: &Metrics) {
        if fields.wanted(outcome) {
            let line = match mode {
                AccessLogMode::Json => json_line(fields, outcome),
                _ => text_line(fields, outcome),
            };
            self.push(line, metrics);
        }
    }

    /// Queues `line` for the writer; drops and counts it when the writer is behind.
    pub fn push(&self, line: String, metrics: &Metrics) {
        if self.tx.try_send(line).is_err() {
            metrics.inc("mesh_access_log_dropped_total", &[]);
        }
    }

    /// Starts the task writing queued lines to `out` (stdout in the agent). Only the first call
    /// gets the lines; later ones return at once.
    pub fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(&self, mut out: W) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            let mut buf = String::new();
            while rx.recv_many(&mut batch, 64).await > 0 {
                buf.clear();
                for line in batch.drain(..) {
                    buf.push_str(&line);
                }
                // One write per batch; a failed write (stdout closed) loses those lines only.
                if out.write_all(buf.as_bytes()).await.is_err() || out.flush().await.is_err() {
                    continue;
                }
            }
        });
    }
}

/// What a log line says about one request, gathered as it runs.
#[derive(Debug, Default)]
pub struct Fields {
    /// When the request started.
    pub start: Option<SystemTime>,
    /// `:method` (empty for a TCP connection, as its path).
    pub method: String,
    /// The path as the client sent it.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`...
    pub protocol: &'static str,
    /// `x-forwarded-for`.
    pub forwarded_for: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// `x-request-id` (the one the proxy generated when the client sent none).
    pub request_id: Option<String>,
    /// `:authority` / `Host`.
    pub authority: Option<String>,
    /// The endpoint of the last attempt.
    pub upstream_host: Option<std::net::SocketAddr>,
    /// The cluster (`outbound|9080|v2|reviews.default.svc.cluster.local`).
    pub upstream_cluster: Option<String>,
    /// Milliseconds from sending the request upstream to the response head.
    pub upstream_service_time: Option<u64>,
    /// The `Telemetry` filter: the line is written only when it evaluates to `true`.
    pub filter: Option<Arc<LogFilter>>,
    /// The client address as accepted (`source.address`), for the filter.
    pub peer: Option<SocketAddr>,
    /// The request's headers, kept only for a filter that reads them.
    pub request_headers: Option<http::HeaderMap>,
    /// The response's headers, kept only for a filter that reads them.
    pub response_headers: Option<http::HeaderMap>,
}

impl Fields {
    /// Whether this request gets its line: no filter, or the filter evaluates to `true` over
    /// its Envoy attributes.
    pub fn wanted(&self, o: &Outcome) -> bool {
        let Some(filter) = &self.filter else { return true };
        let attrs = Attributes {
            method: &self.method,
            path: &self.path,
            host: self.authority.as_deref(),
            // The node proxy serves plaintext HTTP only (no TLS on its listeners).
            scheme: "http",
            protocol: self.protocol,
            request_id: self.request_id.as_deref(),
            user_agent: self.user_agent.as_deref(),
            referer: self.request_headers.as_ref().and_then(|h| h.get(http::header::REFERER)?.to_str().ok()),
            request_headers: self.request_headers.as_ref(),
            request_size: o.bytes_received,
            code: o.code,
            flags: envoy_flag_bits(o.flags),
            response_headers: self.response_headers.as_ref(),
            response_size: o.bytes_sent,
            grpc_status: o.grpc_status,
            source: self.peer,
            upstream: self.upstream_host,
            cluster: self.upstream_cluster.as_deref(),
        };
        filter.matches(&attrs)
    }
}

/// Envoy's `response.flags` bits (`StreamInfo::CoreResponseFlag`) of the flags this proxy sets.
fn envoy_flag_bits(f: Flags) -> u64 {
    const BITS: [(Flags, u64); 11] = [
        (Flags::UH, 0x2),
        (Flags::UT, 0x4),
        (Flags::UF, 0x20),
        (Flags::UC, 0x40),
        (Flags::UO, 0x80),
        (Flags::NR, 0x100),
        (Flags::DI, 0x200),
        (Flags::FI, 0x400),
        (Flags::DC, 0x4000),
        (Flags::URX, 0x8000),
        (Flags::OM, 0x200_0000),
    ];
    BITS.iter().filter(|(flag, _)| f.contains(*flag)).fold(0, |bits, (_, b)| bits | b)
}

/// The outcome filled in when the request is recorded.
pub struct Outcome {
    /// 0 when the client left before any response.
    pub code: u16,
    /// Envoy's response flags.
    pub flags: Flags,
    /// Request bytes received from the client (body).
    pub bytes_received: u64,
    /// Response bytes sent to the client (body).
    pub bytes_sent: u64,
    /// Milliseconds from start to the last byte.
    pub duration_ms: u64,
    /// `grpc-status` of a gRPC response.
    pub grpc_status: Option<u16>,
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// An HTTP field a TCP connection's line does not have (empty, or `-` already): `-` in text.
fn dash_empty(v: &str) -> &str {
    if v.is_empty() {
        "-"
    } else {
        v
    }
}

/// The same as JSON's `null`, as Envoy's JSON formatter writes an unset value.
fn null_empty(v: &str) -> Option<&str> {
    (!v.is_empty() && v != "-").then_some(v)
}

/// Envoy's default access log format (for a TCP connection, Envoy's TCP proxy writes the same
/// with `-` for the request's fields and response code 0):
/// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
/// %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
/// "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%"
/// "%UPSTREAM_HOST%"`.
pub fn text_line(f: &Fields, o: &Outcome) -> String {
    let start = f.start.map(rfc3339_millis).unwrap_or_else(|| "-".into());
    let ust = f.upstream_service_time.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let host = f.upstream_host.map_or_else(|| "-".to_owned(), |h| h.to_string());
    format!(
        "[{start}] \"{} {} {}\" {} {} {} {} {} {ust} \"{}\" \"{}\" \"{}\" \"{}\" \"{host}\"\n",
        dash_empty(&f.method),
        dash_empty(&f.path),
        dash_empty(f.protocol),
        o.code,
        o.flags,
        o.bytes_received,
        o.bytes_sent,
        o.duration_ms,
        or_dash(&f.forwarded_for),
        or_dash(&f.user_agent),
        or_dash(&f.request_id),
        or_dash(&f.authority),
    )
}

/// The same fields as JSON, with the key names of Istio's JSON access log.
pub fn json_line(f: &Fields, o: &Outcome) -> String {
    let v = serde_json::json!({
        "start_time": f.start.map(rfc3339_millis),
        "method": null_empty(&f.method),
        "path": null_empty(&f.path),
        "protocol": null_empty(f.protocol),
        "response_code": o.code,
        "response_flags": o.flags.to_string(),
        "bytes_received": o.bytes_received,
        "bytes_sent": o.bytes_sent,
        "duration": o.duration_ms,
        "upstream_service_time": f.upstream_service_time,
        "x_forwarded_for": f.forwarded_for,
        "user_agent": f.user_agent,
        "request_id": f.request_id,
        "authority": f.authority,
        "upstream_host": f.upstream_host.map(|h| h.to_string()),
        "upstream_cluster": f.upstream_cluster,
    });
    let mut line = v.to_string();
    line.push('\n');
    line
}

/// `2026-11-27T05:24:21.123Z`, as Envoy's `%START_TIME%` prints by default.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_utc_rfc3339_with_millis() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_671_861_123);
        assert_eq!(rfc3339_millis(t), "2026-11-26T05:44:21.123Z");
        assert_eq!(rfc3339_millis(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }

    #[tokio::test]
    async fn a_full_channel_drops_lines_and_counts_them() {
        let log = AccessLog::new(2);
        let metrics = Metrics::default();
        for i in 0..5 {
            log.push(format!("line {i}\n"), &metrics);
        }
        assert_eq!(metrics.get("mesh_access_log_dropped_total", &[]), 3);
        // The two that fit are written once a writer runs.
        let (w, r) = tokio::io::duplex(1024);
        log.spawn_writer(w);
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(r));
        assert_eq!(lines.next_line().await.expect("read").as_deref(), Some("line 0"));
        assert_eq!(lines.next_line().await.expect("read").as_deref(), Some("line 1"));
    }
}
