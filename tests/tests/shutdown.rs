//! Shutdown: on SIGTERM the gateway stops accepting, closes idle keep-alive
//! connections, answers the request in flight (its body still arriving, the
//! project's agent still reachable), then exits. Connections are served on
//! the serving threads (`--http-threads`), whose runtimes must outlive the
//! drain and the runtime's shutdown.

use std::time::{Duration, Instant};

use tests::gateway::Gateway;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Reads until the peer closes (or 10 s pass), returning what came.
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

/// Whether process `pid` has ended (gone, or a zombie not yet reaped).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn sigterm_answers_the_request_in_flight_closes_idle_connections_and_exits() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("p").await.unwrap();
    let token = gw.admin_token();

    // A keep-alive connection that served one request and sits idle.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(
        format!("GET /api/projects/p HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 16 << 10];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // A write whose body is half sent when the signal comes.
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(
        format!(
            "PUT /api/projects/p/files/late.txt HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {token}\r\nContent-Length: 10\r\n\r\nhello"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pid = gw.pid().unwrap();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());

    // The idle connection is closed, with nothing more sent on it.
    let rest = read_to_close(&mut idle).await;
    assert!(
        !rest.windows(8).any(|w| w == b"HTTP/1.1"),
        "an answer on the idle connection: {}",
        String::from_utf8_lossy(&rest)
    );
    // New connections are no longer accepted.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(gw.addr).await {
            Err(_) => break,
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting 5 s after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(!ended(pid), "exited with a request in flight");

    // The rest of the body: the write is answered and done, then the
    // connection closes and the gateway exits.
    slow.write_all(b"world").await.unwrap();
    let answer = read_to_close(&mut slow).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 20"), "{answer}");
    assert_eq!(
        std::fs::read_to_string(gw.project_dir("p").join("late.txt")).unwrap(),
        "helloworld"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ended(pid) {
        assert!(
            Instant::now() < deadline,
            "still running 15 s after its last request"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port held a moment longer by another process (a previous gateway still
/// ending) is tried again for a few seconds instead of the start failing;
/// one held for good still fails it, with the reason.
#[tokio::test]
async fn a_port_held_briefly_is_tried_again_at_start() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1200));
        drop(held);
    });
    let t0 = Instant::now();
    let gw = Gateway::builder().listen(addr).start().await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "listened at once on a port still held: {:?}",
        t0.elapsed()
    );
    assert_eq!(
        gw.http()
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    release.join().unwrap();

    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let error = Gateway::builder().listen(addr).start().await.err().unwrap();
    let error = format!("{error:#}");
    assert!(error.contains("cannot listen on"), "{error}");
    drop(held);
}
