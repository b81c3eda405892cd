use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

use super::*;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};

impl From<std::convert::Infallible> for super::super::http::BodyError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// A request body fed by the test.
struct Fed(tokio::sync::mpsc::UnboundedReceiver<&'static str>);

impl Body for Fed {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|s| Ok(Frame::data(bytes::Bytes::from_static(s.as_bytes())))))
    }
}

const T: Duration = Duration::from_secs(300);

fn fed() -> (tokio::sync::mpsc::UnboundedSender<&'static str>, IdleTimeoutBody<Fed>, Arc<StreamActivity>, Arc<AtomicU32>)
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let activity = StreamActivity::new();
    let fired = Arc::new(AtomicU32::new(0));
    let f = fired.clone();
    let body = IdleTimeoutBody::new(
        Fed(rx),
        activity.clone(),
        T,
        Box::new(move || {
            f.fetch_add(1, Ordering::SeqCst);
        }),
    );
    (tx, body, activity, fired)
}

#[tokio::test(start_paused = true)]
async fn data_keeps_a_body_alive_and_silence_ends_it_after_the_timeout() {
    let (tx, mut body, activity, fired) = fed();
    for _ in 0..3 {
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(200)).await;
            let _ = tx.send("x");
        });
        // 200 s apart, each under the 300 s timeout.
        assert!(body.frame().await.expect("frame").is_ok());
    }
    let stalled = Instant::now();
    let e = body.frame().await.expect("an error frame").expect_err("timed out");
    assert!(matches!(e, super::super::http::BodyError::IdleTimeout(_)), "{e}");
    assert_eq!(stalled.elapsed(), T);
    assert!(activity.timed_out());
    assert_eq!(fired.load(Ordering::SeqCst), 1, "counted once");
    // It stays ended.
    assert!(body.frame().await.expect("frame").is_err());
    assert_eq!(fired.load(Ordering::SeqCst), 1);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn time_nobody_asked_for_the_body_and_response_data_do_not_count() {
    let (tx, mut body, activity, _) = fed();
    tx.send("x").expect("send");
    assert!(body.frame().await.expect("frame").is_ok());
    // The upstream does not want more for an hour (backpressure): not the client's fault.
    tokio::time::advance(Duration::from_secs(3600)).await;
    let waiting = Instant::now();
    // Response data arrives 250 s into the wait, which moves the deadline to 550 s.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(250)).await;
        activity.touch();
    });
    assert!(body.frame().await.expect("frame").is_err());
    assert_eq!(waiting.elapsed(), Duration::from_secs(550));
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_finished_body_never_times_out() {
    let (tx, mut body, activity, fired) = fed();
    tx.send("x").expect("send");
    drop(tx);
    assert!(body.frame().await.expect("frame").is_ok());
    assert!(body.frame().await.is_none());
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(!activity.timed_out());
    assert_eq!(fired.load(Ordering::SeqCst), 0);
}

#[test]
fn a_source_buffered_body_budget_is_shared_and_given_back() {
    let caps = SourceCaps::new(&Limits { per_source_max_buffered_body: 1000, ..Limits::default() });
    let mut a = caps.body_budget();
    let mut b = caps.body_budget();
    assert!(a.try_take(600));
    assert!(a.try_take(300));
    assert!(!b.try_take(200), "900 + 200 is over the cap");
    assert!(b.try_take(100));
    assert_eq!(caps.usage().2, 1000);
    drop(a);
    assert_eq!(caps.usage().2, 100);
    assert!(b.try_take(u64::MAX).eq(&false), "no overflow past u64");
    drop(b);
    assert_eq!(caps.usage().2, 0);
    assert!(BodyBudget::unlimited().try_take(u64::MAX));
}

#[test]
fn a_pods_annotations_override_the_node_caps_for_its_source_only() {
    use crate::registry::PodCaps;
    let node = Limits {
        per_source_max_connections: 3,
        per_source_max_requests: 2,
        per_source_max_buffered_body: 100,
        ..Limits::default()
    };
    let mine = SourceCaps::new(&node);
    let other = SourceCaps::new(&node);
    mine.apply(&node, &PodCaps { max_connections: Some(1), max_requests: Some(5), max_buffered_body: None });
    other.apply(&node, &PodCaps::default());
    assert_eq!(mine.maxima(), (1, 5, 100), "lowered, raised, and the node default where unset");
    assert_eq!(other.maxima(), (3, 2, 100));
    let held = mine.connection().expect("first connection");
    assert!(mine.connection().is_none(), "its own lowered cap");
    let others: Vec<_> = (0..3).map(|_| other.connection().expect("the node cap")).collect();
    assert!(other.connection().is_none());
    let requests: Vec<_> = (0..5).map(|_| mine.request().expect("its raised cap")).collect();
    assert!(mine.request().is_none());
    // The annotation edited away: the node default again, for what comes next.
    mine.apply(&node, &PodCaps::default());
    assert_eq!(mine.maxima(), (3, 2, 100));
    assert!(mine.connection().is_some());
    assert!(mine.request().is_none(), "5 held, over the restored cap of 2");
    mine.apply(&node, &PodCaps { max_buffered_body: Some(10), ..PodCaps::default() });
    let mut budget = mine.body_budget();
    assert!(!budget.try_take(11));
    assert!(budget.try_take(10));
    drop((held, others, requests));
}
