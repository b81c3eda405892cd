use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn limits() -> Limits {
    Limits {
        request_headers_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(3600),
        ..Limits::default()
    }
}

#[test]
fn a_parked_connection_is_counted_as_holding_less_than_a_served_one() {
    use crate::proxy::overload::{CONNECTION_BYTES, PARKED_CONNECTION_BYTES};
    let caps = SourceCaps::new(&limits());
    let (_a, _b) = (caps.connection().expect("a"), caps.connection().expect("b"));
    assert_eq!(caps.held_bytes(), 2 * CONNECTION_BYTES);
    let parked = caps.park();
    assert_eq!(caps.parked(), 1);
    assert_eq!(caps.held_bytes(), CONNECTION_BYTES + PARKED_CONNECTION_BYTES);
    drop(parked);
    assert_eq!(caps.held_bytes(), 2 * CONNECTION_BYTES, "served again: counted in full");
}

#[tokio::test(start_paused = true)]
async fn idle_connection_expires_after_idle_timeout_not_header_timeout() {
    let a = ConnActivity::new();
    let l = limits();
    let started = Instant::now();
    assert_eq!(a.watch(&l).await, Expired::Idle);
    assert_eq!(started.elapsed(), Duration::from_secs(3600));
}

#[tokio::test(start_paused = true)]
async fn a_started_head_must_finish_within_the_header_timeout() {
    let a = ConnActivity::new();
    let l = limits();
    tokio::time::advance(Duration::from_secs(100)).await;
    a.on_read(b"GET / HTTP/1.1\r\n");
    let started = Instant::now();
    assert_eq!(a.watch(&l).await, Expired::Headers);
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn requests_in_flight_stop_both_timers_and_idle_restarts_when_they_end() {
    let a = ConnActivity::new();
    let l = limits();
    a.on_read(b"GET / HTTP/1.1\r\n");
    let guard = a.begin();
    // Bytes during a request (its body) are not a new head.
    a.on_read(b"body");
    let watch = {
        let a = a.clone();
        let l = l.clone();
        tokio::spawn(async move { (a.watch(&l).await, Instant::now()) })
    };
    tokio::time::advance(Duration::from_secs(7200)).await;
    assert!(!watch.is_finished(), "nothing may expire while a request is in flight");
    let ended = Instant::now();
    drop(guard);
    let (why, at) = watch.await.expect("watch");
    assert_eq!(why, Expired::Idle);
    assert_eq!(at - ended, Duration::from_secs(3600));
}

#[tokio::test(start_paused = true)]
async fn http2_frames_between_requests_are_not_request_heads() {
    let a = ConnActivity::new();
    let l = limits();
    a.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    a.on_read(b"\0\0\0\x06\0\0\0\0\0");
    assert_eq!(a.watch(&l).await, Expired::Idle);
}
