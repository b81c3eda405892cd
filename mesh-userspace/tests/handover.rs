//! Two-process listener handover on loopback, as `mesh agent` does it: the old process serves a
//! TCP listener, a new process (this test binary re-executed) takes the socket over through the
//! handover Unix socket with SCM_RIGHTS, says it is ready, and only then does the old one stop
//! accepting. A client connecting in a loop throughout must see no refused connection.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsFd,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use mesh::{
    drain::{ConnGuard, Drain},
    handover::{self, Inherited, Offer, Role},
    proxy::accept_until_drain,
};
use tokio::io::AsyncWriteExt;

const CHILD_ENV: &str = "MESH_HANDOVER_TEST_SOCKET";

/// Answers every connection with `name` and closes it; the drain waits for it (`in_flight`).
fn answer(stream: tokio::net::TcpStream, name: &'static str, in_flight: ConnGuard) {
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = stream.write_all(name.as_bytes()).await;
        drop(in_flight);
    });
}

/// The new process: takes the listener over, serves it, tells the old process to drain.
#[test]
fn handover_child() {
    let Some(socket) = std::env::var_os(CHILD_ENV) else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let received = handover::take_over(std::path::Path::new(&socket)).expect("take over").expect("an old agent");
        let mut inherited = Inherited::new(received.items);
        let (_, fd) = inherited.nodeports.drain().next().expect("the listener");
        let listener = Inherited::listener(fd).expect("adopt");
        let drain = Drain::default();
        let serving =
            tokio::spawn(
                async move { accept_until_drain(listener, "new", &drain, |s, _, g| answer(s, "new", g)).await },
            );
        received.predecessor.ready().expect("ready");
        // Serve until the parent is done with us (it kills this process); bounded.
        let _ = tokio::time::timeout(Duration::from_secs(30), serving).await;
    });
}

#[test]
fn a_client_connecting_throughout_a_two_process_handover_is_never_refused() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("handover.sock");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (addr, answers, failures, child) = rt.block_on(async {
        // The old process: a listener served until the drain, and the handover socket.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let offer = Offer {
            map_layout: 0,
            items: vec![(Role::NodePort { port: addr.port() }, listener.as_fd().try_clone_to_owned().expect("dup"))],
        };
        let drain = Arc::new(Drain::default());
        let d = drain.clone();
        let old =
            tokio::spawn(async move { accept_until_drain(listener, "old", &d, |s, _, g| answer(s, "old", g)).await });
        let server = handover::Server::bind(&socket).expect("handover socket");

        // A client connecting back to back for the whole test.
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::<String>::new()));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let client = {
            let (stop, answers, failures) = (stop.clone(), answers.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let mut out = String::new();
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                        .and_then(|mut s| s.read_to_string(&mut out))
                    {
                        Ok(_) if !out.is_empty() => answers.lock().unwrap().push(out),
                        Ok(_) => failures.lock().unwrap().push("closed without an answer".into()),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        };
        let wait_answers = |n: usize| {
            let answers = answers.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                while answers.lock().unwrap().len() < n {
                    assert!(Instant::now() < deadline, "client stalled");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        wait_answers(50).await;

        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "handover_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &socket)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the new process");
        let stream = server.accept().await.expect("successor connects");
        let stream = tokio::task::spawn_blocking(move || handover::send(&stream, &offer).map(|()| stream))
            .await
            .expect("send thread")
            .expect("send");
        assert!(handover::wait_ready(stream).await, "successor never said ready");
        // What the old agent does on `R`: stop accepting (its copy of the socket closes).
        drain.start();
        tokio::time::timeout(Duration::from_secs(2), old).await.expect("old listener stops").expect("old task");
        let before = answers.lock().unwrap().len();
        wait_answers(before + 200).await;
        stop.store(true, Ordering::SeqCst);
        client.join().expect("client thread");
        let _ = child.kill();
        (addr, answers, failures, child.wait())
    });
    let _ = child;
    let answers = answers.lock().unwrap();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} connects to {addr} failed: {:?}",
        failures.len(),
        answers.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(answers.iter().any(|a| a == "old"), "the old process never answered");
    assert!(answers.iter().rev().take(100).all(|a| a == "new"), "after the drain only the new process answers");
    let _ = std::io::stdout().flush();
}
