//! PTY sessions against the real agent: echo, resize, exit codes, detach and
//! reattach by offset with nothing duplicated or missing, the truncated flag,
//! kill, list, and the keep window.

use std::time::Duration;

use proto::v1::process_client::ProcessClient;
use proto::v1::{
    AttachPtyRequest, AttachPtyResponse, AttachStart, Empty, KillPtyRequest, Resize,
    StartPtyRequest, attach_pty_request::Msg, attach_pty_response::Event,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

struct Fixture {
    agent: tests::Agent,
    client: ProcessClient<Channel>,
    _root: tempfile::TempDir,
}

async fn fixture_with(args: &[&str]) -> anyhow::Result<Fixture> {
    let root = tempfile::tempdir()?;
    let agent = tests::Agent::start_with_args(root.path(), &[], args).await?;
    let client = ProcessClient::new(agent.channel().await?);
    Ok(Fixture {
        agent,
        client,
        _root: root,
    })
}

async fn fixture() -> anyhow::Result<Fixture> {
    fixture_with(&[]).await
}

/// One attached client: what it sends, what it received.
struct Attach {
    tx: mpsc::Sender<AttachPtyRequest>,
    rx: tonic::Streaming<AttachPtyResponse>,
    /// The offset after the last byte received.
    next: u64,
    out: Vec<u8>,
    exit: Option<i32>,
    /// The exit event's reason ("" when none).
    reason: String,
    from_offset: u64,
    truncated: bool,
}

impl Fixture {
    async fn start(&mut self, argv: &[&str]) -> anyhow::Result<proto::v1::PtySession> {
        let req = StartPtyRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cols: 80,
            rows: 24,
            ..Default::default()
        };
        Ok(self
            .client
            .start_pty(self.agent.req(req))
            .await?
            .into_inner())
    }

    async fn attach(&mut self, id: &str, offset: Option<u64>) -> anyhow::Result<Attach> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(AttachPtyRequest {
            msg: Some(Msg::Start(AttachStart {
                session_id: id.into(),
                offset,
            })),
        })
        .await?;
        let mut rx = self
            .client
            .attach_pty(self.agent.req(ReceiverStream::new(rx)))
            .await?
            .into_inner();
        let first = rx
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("no started message"))?;
        let Some(Event::Started(started)) = first.event else {
            anyhow::bail!("first message is not started: {first:?}");
        };
        if let Some(o) = offset {
            assert!(started.from_offset >= o);
        }
        Ok(Attach {
            tx,
            rx,
            next: started.from_offset,
            out: Vec::new(),
            exit: None,
            reason: String::new(),
            from_offset: started.from_offset,
            truncated: started.truncated,
        })
    }

    async fn list(&mut self) -> anyhow::Result<Vec<proto::v1::PtySession>> {
        Ok(self
            .client
            .list_pty(self.agent.req(Empty {}))
            .await?
            .into_inner()
            .sessions)
    }
}

impl Attach {
    async fn send(&self, text: &str) -> anyhow::Result<()> {
        self.tx
            .send(AttachPtyRequest {
                msg: Some(Msg::Input(text.as_bytes().to_vec())),
            })
            .await?;
        Ok(())
    }

    /// Reads one event; checks that each chunk starts where the last ended.
    async fn read_one(&mut self) -> anyhow::Result<bool> {
        let msg = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no output for {WAIT:?}; so far: {:?}",
                    String::from_utf8_lossy(&self.out)
                )
            })??;
        match msg.and_then(|m| m.event) {
            Some(Event::Output(o)) => {
                assert_eq!(o.offset, self.next, "chunks are contiguous");
                self.next += o.data.len() as u64;
                self.out.extend_from_slice(&o.data);
                Ok(true)
            }
            Some(Event::Exit(e)) => {
                self.exit = Some(e.code);
                self.reason = e.reason;
                Ok(false)
            }
            Some(Event::Keepalive(_)) => Ok(true),
            Some(Event::Started(_)) => anyhow::bail!("a second started message"),
            None => Ok(false),
        }
    }

    /// Reads until the output holds `needle`.
    async fn read_until(&mut self, needle: &str) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + WAIT;
        while !contains(&self.out, needle.as_bytes()) {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "no {needle:?} within {WAIT:?}; got {:?}",
                String::from_utf8_lossy(&self.out)
            );
            anyhow::ensure!(
                self.read_one().await?,
                "stream ended before {needle:?}; got {:?}",
                String::from_utf8_lossy(&self.out)
            );
        }
        Ok(())
    }

    async fn read_to_exit(&mut self) -> anyhow::Result<i32> {
        while self.read_one().await? {}
        self.exit
            .ok_or_else(|| anyhow::anyhow!("stream ended without exit"))
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[tokio::test]
async fn echo_round_trip_and_default_shell() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let s = f.start(&["sh"]).await?;
    assert!(s.pid > 0);
    let mut a = f.attach(&s.id, None).await?;
    // The quotes keep the typed line (echoed by the terminal) from matching.
    a.send("echo hel''lo-$((6*7))\n").await?;
    a.read_until("hello-42").await?;
    a.send("echo $TERM\n").await?;
    a.read_until("xterm-256color").await?;

    // No argv: the user's shell, with the terminal's TERM.
    let s = f.start(&[]).await?;
    assert!(
        !s.argv.is_empty() && s.argv[0].ends_with("sh"),
        "{:?}",
        s.argv
    );
    let mut a = f.attach(&s.id, None).await?;
    a.send("echo sh''ell-ok\n").await?;
    a.read_until("shell-ok").await?;
    Ok(())
}

#[tokio::test]
async fn resize_shows_in_stty_size() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let s = f.start(&["sh"]).await?;
    let mut a = f.attach(&s.id, None).await?;
    a.send("stty size\n").await?;
    a.read_until("24 80").await?;
    a.tx.send(AttachPtyRequest {
        msg: Some(Msg::Resize(Resize {
            cols: 132,
            rows: 41,
        })),
    })
    .await?;
    a.send("stty size\n").await?;
    a.read_until("41 132").await?;
    let listed = f
        .list()
        .await?
        .into_iter()
        .find(|x| x.id == s.id)
        .expect("listed");
    assert_eq!((listed.cols, listed.rows), (132, 41));

    // Out-of-bounds sizes (the same bounds as at start) are refused and
    // change nothing.
    for (cols, rows) in [(0, 10), (10, 0), (5000, 10), (10, 70_000)] {
        a.tx.send(AttachPtyRequest {
            msg: Some(Msg::Resize(Resize { cols, rows })),
        })
        .await?;
    }
    a.send("echo mark''er; stty size\n").await?;
    a.read_until("marker").await?;
    a.read_until("41 132").await?;
    Ok(())
}

#[tokio::test]
async fn exit_code_also_for_late_attaches() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let s = f.start(&["sh"]).await?;
    let mut a = f.attach(&s.id, Some(0)).await?;
    a.send("echo bye''bye; exit 7\n").await?;
    assert_eq!(a.read_to_exit().await?, 7);
    assert!(contains(&a.out, b"byebye"));

    let listed = f
        .list()
        .await?
        .into_iter()
        .find(|x| x.id == s.id)
        .expect("still listed after exit");
    assert!(listed.exited);
    assert_eq!(listed.exit_code, 7);
    assert_eq!(listed.output_end, a.next);

    // Attaching after the exit replays the output, then the exit.
    let mut late = f.attach(&s.id, Some(0)).await?;
    assert_eq!(late.read_to_exit().await?, 7);
    assert_eq!(late.out, a.out);

    // A signal ends a session with 128 + the signal.
    let s = f.start(&["sleep", "60"]).await?;
    let mut a = f.attach(&s.id, None).await?;
    a.tx.send(AttachPtyRequest {
        msg: Some(Msg::Signal(15)),
    })
    .await?;
    assert_eq!(a.read_to_exit().await?, 128 + 15);
    Ok(())
}

#[tokio::test]
async fn reattach_from_offset_loses_and_repeats_nothing() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let s = f.start(&["sh"]).await?;
    let mut a = f.attach(&s.id, Some(0)).await?;
    // Lines are produced while the first client reads part of them, and go
    // on after it dropped its stream (the pause makes sure of that: without
    // it the whole loop can reach the first client before it drops).
    a.send(
        "for i in $(seq 1 3000); do echo line$i; [ $i = 1500 ] && sleep 0.5; done; echo first''-done\n",
    )
    .await?;
    a.read_until("line100\r\n").await?;
    let (part1, at) = (std::mem::take(&mut a.out), a.next);
    drop(a);

    let mut b = f.attach(&s.id, Some(at)).await?;
    assert!(!b.truncated);
    assert_eq!(b.from_offset, at);
    b.read_until("first-done").await?;
    b.send("for i in $(seq 1 500); do echo more$i; done; echo second''-done\n")
        .await?;
    b.read_until("second-done").await?;

    let mut got = part1;
    got.extend_from_slice(&b.out);
    for i in 1..=3000 {
        assert_eq!(count(&got, format!("line{i}\r\n").as_bytes()), 1, "line{i}");
    }
    for i in 1..=500 {
        assert_eq!(count(&got, format!("more{i}\r\n").as_bytes()), 1, "more{i}");
    }
    // In order, too: compare with the whole output from a third client.
    let mut c = f.attach(&s.id, Some(0)).await?;
    assert!(!c.truncated);
    while c.next < b.next {
        assert!(c.read_one().await?);
    }
    assert_eq!(&c.out[..got.len()], &got[..]);
    Ok(())
}

#[tokio::test]
async fn an_attached_client_that_falls_behind_loses_nothing() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    // About 7.9 MB, well over the ring plus every buffer on the way
    // (the client's 2 MiB HTTP/2 window included), produced at once.
    const LINES: usize = 1_000_000;
    let s = f
        .start(&["sh", "-c", &format!("read go; seq 1 {LINES}; echo END")])
        .await?;
    let mut a = f.attach(&s.id, Some(0)).await?;
    a.send("go\n").await?;
    // Read nothing until the session's output stops growing: the producer
    // waits for this client. Had it not, the ring would have overwritten
    // bytes this client has not read, and the offsets below would jump.
    let deadline = std::time::Instant::now() + WAIT;
    let mut last = 0;
    loop {
        let list = f.list().await?;
        let end = list
            .iter()
            .find(|x| x.id == s.id)
            .map_or(0, |x| x.output_end);
        if end >= 1 << 20 && end == last {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "output never settled ({end} bytes)"
        );
        last = end;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last < 7_000_000,
        "the producer waited for the client ({last} bytes out)"
    );
    assert_eq!(a.read_to_exit().await?, 0);
    let text = String::from_utf8(a.out)?;
    let numbers: Vec<&str> = text
        .split("\r\n")
        .skip_while(|l| *l != "1")
        .take_while(|l| *l != "END")
        .collect();
    assert_eq!(numbers.len(), LINES);
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(n.parse::<usize>()?, i + 1);
    }
    Ok(())
}

#[tokio::test]
async fn truncated_when_the_ring_no_longer_reaches_back() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    // 1.5 MB into a 1 MiB ring with nobody attached.
    let s = f
        .start(&[
            "sh",
            "-c",
            "head -c 1500000 /dev/zero | tr '\\0' x; echo; echo END; sleep 60",
        ])
        .await?;
    let id = s.id.clone();
    let client = f.client.clone();
    tests::eventually(WAIT, "1.5 MB of output", || {
        let mut client = client.clone();
        let req = f.agent.req(Empty {});
        let id = id.clone();
        async move {
            let list = client.list_pty(req).await.ok()?.into_inner();
            list.sessions
                .into_iter()
                .find(|x| x.id == id && x.output_end >= 1_500_000)
                .map(|_| ())
        }
    })
    .await?;
    let mut a = f.attach(&s.id, Some(10)).await?;
    assert!(a.truncated);
    assert!(a.from_offset > 10);
    let listed = f
        .list()
        .await?
        .into_iter()
        .find(|x| x.id == s.id)
        .expect("listed");
    assert!(listed.output_start > 0);
    assert!(listed.output_end - listed.output_start <= 1 << 20);
    a.read_until("END").await?;

    // An offset the session never reached is a client error.
    let err = f
        .attach(&s.id, Some(u64::MAX / 2))
        .await
        .err()
        .expect("offset past the end");
    let status = err.downcast::<tonic::Status>()?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn kill_and_list() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let one = f.start(&["sh"]).await?;
    let two = f.start(&["sleep", "60"]).await?;
    let list = f.list().await?;
    assert_eq!(list.len(), 2);
    let l2 = list.iter().find(|x| x.id == two.id).expect("two listed");
    assert_eq!(l2.argv, vec!["sleep", "60"]);
    assert_eq!(l2.pid, two.pid);
    assert!(!l2.exited);

    let mut a = f.attach(&one.id, None).await?;
    let mut b = f.attach(&one.id, None).await?;
    tests::eventually(WAIT, "two attached clients", || {
        let mut client = f.client.clone();
        let req = f.agent.req(Empty {});
        let id = one.id.clone();
        async move {
            let s = client.list_pty(req).await.ok()?.into_inner().sessions;
            s.into_iter()
                .find(|x| x.id == id && x.attached == 2)
                .map(|_| ())
        }
    })
    .await?;
    f.client
        .kill_pty(f.agent.req(KillPtyRequest {
            session_id: one.id.clone(),
            signal: 0,
            reason: "hibernated".into(),
        }))
        .await?;
    // Every attached client gets the exit (SIGHUP: 128 + 1), with the reason.
    assert_eq!(a.read_to_exit().await?, 129);
    assert_eq!(b.read_to_exit().await?, 129);
    assert_eq!(
        (a.reason.as_str(), b.reason.as_str()),
        ("hibernated", "hibernated")
    );
    let listed = f
        .list()
        .await?
        .into_iter()
        .find(|x| x.id == one.id)
        .expect("listed after kill");
    assert!(listed.exited);

    // Killing an ended session forgets it.
    f.client
        .kill_pty(f.agent.req(KillPtyRequest {
            session_id: one.id.clone(),
            signal: 0,
            reason: String::new(),
        }))
        .await?;
    assert!(f.list().await?.iter().all(|x| x.id != one.id));
    let err = f
        .client
        .kill_pty(f.agent.req(KillPtyRequest {
            session_id: one.id.clone(),
            signal: 0,
            reason: String::new(),
        }))
        .await
        .expect_err("unknown session");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(wait_gone(one.pid).await, "the shell is gone");

    // A process that ignores SIGHUP is killed after the grace period.
    let stubborn = f
        .start(&["sh", "-c", "trap '' HUP; echo ready; sleep 60"])
        .await?;
    let mut c = f.attach(&stubborn.id, Some(0)).await?;
    c.read_until("ready").await?;
    f.client
        .kill_pty(f.agent.req(KillPtyRequest {
            session_id: stubborn.id.clone(),
            signal: 0,
            reason: String::new(),
        }))
        .await?;
    assert_eq!(c.read_to_exit().await?, 128 + 9);
    assert_eq!(c.reason, "", "no reason given, none told");
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_refused() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let err = f
        .attach("nope", None)
        .await
        .err()
        .expect("unknown session")
        .downcast::<tonic::Status>()?;
    assert_eq!(err.code(), tonic::Code::NotFound);

    let sh = || vec!["sh".to_owned()];
    let refused = [
        (
            "cwd outside root",
            StartPtyRequest {
                argv: sh(),
                cwd: "../..".into(),
                ..Default::default()
            },
        ),
        (
            "huge terminal",
            StartPtyRequest {
                argv: sh(),
                cols: 100_000,
                ..Default::default()
            },
        ),
        (
            "missing program",
            StartPtyRequest {
                argv: vec!["/no/such/program".into()],
                ..Default::default()
            },
        ),
    ];
    for (why, req) in refused {
        let err = f.client.start_pty(f.agent.req(req)).await.expect_err(why);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{why}");
    }
    assert!(
        f.list().await?.is_empty(),
        "failed starts leave nothing behind"
    );

    // The first message must be `start`.
    let (tx, rx) = mpsc::channel(1);
    tx.send(AttachPtyRequest {
        msg: Some(Msg::Input(b"x".to_vec())),
    })
    .await?;
    let err = f
        .client
        .attach_pty(f.agent.req(ReceiverStream::new(rx)))
        .await
        .expect_err("no start");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn detached_session_ends_after_the_keep_window() -> anyhow::Result<()> {
    let mut f = fixture_with(&["--pty-keep-secs", "1"]).await?;
    let s = f.start(&["sh"]).await?;
    // One that ends on its own while nobody is attached.
    let ends = f.start(&["sh", "-c", "sleep 0.2; exit 3"]).await?;
    let mut a = f.attach(&s.id, None).await?;
    a.send("echo still''here\n").await?;
    a.read_until("stillhere").await?;
    drop(a);
    tests::eventually(WAIT, "the ended session to report its exit", || {
        let mut client = f.client.clone();
        let req = f.agent.req(Empty {});
        let id = ends.id.clone();
        async move {
            let list = client.list_pty(req).await.ok()?.into_inner().sessions;
            list.into_iter()
                .find(|x| x.id == id && x.exited && x.exit_code == 3)
                .map(|_| ())
        }
    })
    .await?;
    tests::eventually(WAIT, "both sessions to be ended and forgotten", || {
        let mut client = f.client.clone();
        let req = f.agent.req(Empty {});
        async move {
            client
                .list_pty(req)
                .await
                .ok()?
                .into_inner()
                .sessions
                .is_empty()
                .then_some(())
        }
    })
    .await?;
    assert!(wait_gone(s.pid).await);
    Ok(())
}

async fn wait_gone(pid: u32) -> bool {
    tests::eventually(WAIT, "process to exit", || async move {
        gone(pid).then_some(())
    })
    .await
    .is_ok()
}

/// Gone = no longer exists, or a zombie left for whatever reaps orphans.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// `--max-pty-sessions`: a start beyond the running sessions' limit is
/// refused (RESOURCE_EXHAUSTED, `limit_reached`) and starts nothing; once a
/// session ends, a new one starts.
#[tokio::test]
async fn running_sessions_are_limited() -> anyhow::Result<()> {
    let mut f = fixture_with(&["--max-pty-sessions", "2"]).await?;
    let one = f.start(&["sleep", "300"]).await?;
    f.start(&["sleep", "300"]).await?;
    let err = f
        .start(&["sleep", "300"])
        .await
        .expect_err("over the limit");
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status
            .metadata()
            .get(proto::ERROR_CODE_METADATA_KEY)
            .unwrap(),
        proto::LIMIT_REACHED
    );
    assert_eq!(f.list().await?.len(), 2);
    f.client
        .kill_pty(f.agent.req(KillPtyRequest {
            session_id: one.id.clone(),
            signal: 0,
            reason: String::new(),
        }))
        .await?;
    // The killed session is still listed (exited); it no longer counts.
    let started = f.start(&["sleep", "300"]).await?;
    assert!(f.list().await?.iter().any(|s| s.id == started.id));
    Ok(())
}
