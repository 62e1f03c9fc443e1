//! `bench-gateway`: measures the release gateway on loopback, side by side
//! with nginx, and prints a Markdown report for BENCHMARKS.md. Run through
//! `bench/gateway/run.sh`, which installs wrk and nginx and builds this.
//!
//! In one run: the preview proxy (1 KiB upstream answer, `wrk -t2 -c64`)
//! against nginx as a Host-routed reverse proxy to the same upstream (plain
//! `proxy_pass`, and with an upstream keepalive pool); a 4 KiB
//! file GET with a token, on one connection and on 64, against nginx serving
//! the same file statically; 50 MB of terminal output through the PTY and keystroke
//! echo over 500 keys, each round with this crate's Rust client and with a
//! browser-like node client (`term-client.mjs`) against the gateway, wetty
//! and terminado (peers started here, all running `bash --norc
//! --noprofile`); WebSocket echo through the preview proxy against nginx
//! (upgrade headers, keepalive pool) to the same echo dev server, with this
//! crate's client and a browser-like node client; the gateway's RSS with
//! 1,000 idle terminal WebSockets.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tests::gateway::Gateway;
use tokio_tungstenite::tungstenite::Message;

/// Benchmarks the release gateway against nginx; run through `bench/gateway/run.sh`.
#[derive(Debug, Parser)]
#[command(
    name = "bench-gateway",
    about = "Benchmarks the release gateway against nginx: preview proxy, file GET, terminal throughput and echo, RSS with idle terminals"
)]
struct Args {
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// Rounds of each comparison, the targets interleaved in every round
    /// (wrk: gateway and nginx; terminal: each client and server). Every
    /// round is reported, and the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Megabytes of terminal output to push through the PTY.
    #[arg(long, default_value_t = 50)]
    terminal_mb: usize,
    /// Keystrokes for the echo latency.
    #[arg(long, default_value_t = 500)]
    keys: usize,
    /// Idle terminal WebSockets held open for the RSS figure.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Messages of each WebSocket echo series through the proxy.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Run only these parts (comma-separated: proxy, file, terminal, echo,
    /// wsecho, idle).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Keep the CPUs out of deep idle states during the run (Linux PM QoS:
    /// `/dev/cpu_dma_latency` held at 0; needs root). On a VM whose idle
    /// CPUs halt, every wake-up of a sleeping process costs tens of
    /// microseconds, which dominates one-connection latencies.
    #[arg(long)]
    no_deep_idle: bool,
    /// A folder holding the `gateway` and `agent` binaries of another build
    /// (e.g. `git worktree add ../base <commit>` built with `cargo build
    /// --release`). Its gateway runs beside the current one, with its own
    /// project and upstream, and takes part in every proxy and file-GET
    /// round, interleaved with the others.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Also run the node terminal client against the `--baseline` build
    /// (one that takes the token in the WebSocket subprotocol, as the page
    /// sends it: builds from 2026-12-03 on; older ones answer it 401).
    #[arg(long, requires = "baseline")]
    baseline_node: bool,
    /// The folder of the node terminal client (`term-client.mjs`), its
    /// `node_modules` (ws, socket.io-client, wetty) and
    /// `terminado_server.py`.
    #[arg(long, default_value = "bench/gateway")]
    peers_dir: PathBuf,
    /// A Python with terminado and tornado (run.sh makes a venv); without
    /// it terminado is left out.
    #[arg(long)]
    terminado_python: Option<PathBuf>,
    /// nginx's `worker_processes` for the proxy and static peers (`auto`:
    /// one per core, the tuned default; `1` to compare with a gateway run
    /// with `--http-threads 1` as a `--baseline` wrapper).
    #[arg(long, default_value = "auto")]
    nginx_workers: String,
}

impl Args {
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Held open for the whole run: the kernel keeps the latency bound only
    // while the file is open.
    let _qos = if args.no_deep_idle {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .context("open /dev/cpu_dma_latency (--no-deep-idle needs root)")?;
        f.write_all(&0i32.to_ne_bytes())?;
        Some(f)
    } else {
        None
    };
    for tool in ["wrk", "nginx"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()?
            .code()
            != Some(0)
        {
            bail!("{tool} is missing: run bench/gateway/run.sh, which installs it");
        }
    }
    let (gw, up_port) = start_with_upstream(Gateway::builder()).await?;
    let base = match &args.baseline {
        Some(dir) => {
            for name in ["gateway", "agent"] {
                anyhow::ensure!(
                    dir.join(name).is_file(),
                    "{}/{name} is missing",
                    dir.display()
                );
            }
            Some(start_with_upstream(Gateway::builder().bins(dir)).await?)
        }
        None => None,
    };
    let project_dir = gw.project_dir("bench");
    let work = tempfile::tempdir()?;
    let mut report = vec![machine(args.no_deep_idle)?];
    let page: String = "x".repeat(1023) + "\n";

    // nginx beside it: the Host-routed reverse proxy, and a static server of
    // the project folder.
    let proxy_port = tests::free_port();
    let static_port = tests::free_port();
    let plain_port = tests::free_port();
    let ws_proxy_port = tests::free_port();
    let ws_up_port = tests::free_port();
    anyhow::ensure!(
        args.nginx_workers == "auto" || args.nginx_workers.parse::<u16>().is_ok_and(|n| n > 0),
        "--nginx-workers is `auto` or a positive number"
    );
    let conf = NGINX_CONF
        .replace("__WORKERS__", &args.nginx_workers)
        .replace("__WS_PROXY_PORT__", &ws_proxy_port.to_string())
        .replace("__WS_UP_PORT__", &ws_up_port.to_string())
        .replace("__PROXY_PORT__", &proxy_port.to_string())
        .replace("__STATIC_PORT__", &static_port.to_string())
        .replace("__PLAIN_PORT__", &plain_port.to_string())
        .replace("__UP_PORT__", &up_port.to_string())
        .replace("__ROOT__", &project_dir.canonicalize()?.to_string_lossy());
    std::fs::create_dir_all(work.path().join("tmp"))?;
    std::fs::write(work.path().join("nginx.conf"), conf)?;
    let _nginx = Nginx(
        Command::new("nginx")
            .arg("-p")
            .arg(format!("{}/", work.path().display()))
            .args(["-c", "nginx.conf"])
            .stdin(Stdio::null())
            .spawn()
            .context("start nginx")?,
    );
    wait_http(
        &format!("127.0.0.1:{proxy_port}"),
        "up.bench.localhost",
        "/index.html",
    )
    .await?;

    let gw_addr = gw.addr.to_string();
    let token = gw.admin_token();

    if args.runs("proxy") {
        eprintln!("== preview proxy vs nginx");
        let host = "Host: up.bench.localhost";
        let gw_url = format!("http://{gw_addr}/index.html");
        let ng_url = format!("http://127.0.0.1:{proxy_port}/index.html");
        let plain_url = format!("http://127.0.0.1:{plain_port}/index.html");
        check_body(&gw_url, "up.bench.localhost", &page).await?;
        check_body(&plain_url, "up.bench.localhost", &page).await?;
        let mut urls = vec![
            ("gateway", gw_url),
            ("nginx-keepalive", ng_url),
            ("nginx-plain", plain_url),
        ];
        if let Some((b, _)) = &base {
            let url = format!("http://{}/index.html", b.addr);
            check_body(&url, "up.bench.localhost", &page).await?;
            urls.insert(1, ("baseline", url));
        }
        // Who serves each target, for its CPU and context switches per
        // request: the gateway process, or nginx's workers (the upstream's
        // CPU, the same for all, is left out).
        let workers = children(_nginx.0.id());
        let pids: Vec<Vec<u32>> = urls
            .iter()
            .map(|(name, _)| match *name {
                "gateway" => gw.pid().into_iter().collect(),
                "baseline" => base
                    .as_ref()
                    .and_then(|(b, _)| b.pid())
                    .into_iter()
                    .collect(),
                _ => workers.clone(),
            })
            .collect();
        let (r, rounds, runs) = compare(&args, 2, 64, host, &urls, &pids)?;
        // Round by round (the targets of a round ran back to back): how the
        // gateway's req/s compares with nginx keepalive's.
        let keepalive = urls.len() - 2;
        let ratios: Vec<String> = runs[0]
            .iter()
            .zip(&runs[keepalive])
            .map(|(g, n)| format!("{:.2}", g.rps / n.rps))
            .collect();
        let g = r[0];
        let (n, p) = (r[urls.len() - 2], r[urls.len() - 1]);
        let verdict = |o: &Wrk| {
            format!(
                "**{:.2}×**, p99 {}",
                g.rps / o.rps,
                if g.p99_ms <= o.p99_ms {
                    "no worse"
                } else {
                    "worse"
                }
            )
        };
        let spent = |w: &Wrk| format!("{:.1} µs | {:.2} + {:.2}", w.cpu_us, w.sleeps, w.preempted);
        let base_row = match &base {
            Some(_) => format!(
                "| baseline build (`--baseline`) | {:.0} | {:.2} ms | {:.2} ms | {} | {} ({:+.1}% req/s) |\n",
                r[1].rps,
                r[1].p50_ms,
                r[1].p99_ms,
                spent(&r[1]),
                verdict(&r[1]),
                100.0 * (g.rps / r[1].rps - 1.0),
            ),
            None => String::new(),
        };
        report.push(format!(
            "### Preview proxy, 1 KiB upstream answer, `wrk -t2 -c64 -d{}s` (median of {} rounds)\n\n\
             | | req/s | p50 | p99 | CPU / request | switches / request (sleeps + preempted) | gateway vs it |\n|---|---|---|---|---|---|---|\n\
             | gateway | {:.0} | {:.2} ms | {:.2} ms | {} | |\n\
             {base_row}\
             | nginx, plain `proxy_pass` (a new upstream connection per request) | {:.0} | {:.2} ms | {:.2} ms | {} | {} |\n\
             | nginx, upstream `keepalive 64` pool (`proxy_http_version 1.1`, `Connection \"\"`) | {:.0} | {:.2} ms | {:.2} ms | {} | {} |\n\n\
             Gateway / nginx keepalive, req/s round by round: {}.\n\n\
             nginx's `worker_processes`: {}. CPU and context switches are the proxy's own \
             (the gateway process, or nginx's workers: {} of them) over the round's wrk run, \
             per request served, from `/proc`; the upstream's are left out.\n\n\
             Every round, req/s: {rounds}\n",
            args.duration,
            args.rounds,
            g.rps,
            g.p50_ms,
            g.p99_ms,
            spent(&g),
            p.rps,
            p.p50_ms,
            p.p99_ms,
            spent(&p),
            verdict(&p),
            n.rps,
            n.p50_ms,
            n.p99_ms,
            spent(&n),
            verdict(&n),
            ratios.join(", "),
            args.nginx_workers,
            workers.len(),
        ));
    }

    if args.runs("file") {
        eprintln!("== 4 KiB file GET vs nginx static");
        let data: Vec<u8> = (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect();
        put(&gw, "f4k.bin", &data).await?;
        let auth = format!("Authorization: Bearer {token}");
        let mut urls = vec![
            (
                "gateway",
                format!("http://{gw_addr}/api/projects/bench/files/f4k.bin"),
            ),
            (
                "nginx-static",
                format!("http://127.0.0.1:{static_port}/f4k.bin"),
            ),
        ];
        if let Some((b, _)) = &base {
            put(b, "f4k.bin", &data).await?;
            // Both gateways accept the same token: the baseline's is signed
            // with its own secret, so the header names each one's.
            urls.insert(
                1,
                (
                    "baseline",
                    format!("http://{}/api/projects/bench/files/f4k.bin", b.addr),
                ),
            );
        }
        let headers: Vec<String> = urls
            .iter()
            .map(|(name, _)| match (name, &base) {
                (&"baseline", Some((b, _))) => {
                    format!("Authorization: Bearer {}", b.admin_token())
                }
                _ => auth.clone(),
            })
            .collect();
        // One connection (latency), then 64 (throughput, as the proxy runs).
        for (threads, conns, what) in [(1, 1, "one connection"), (2, 64, "64 connections")] {
            let (r, rounds, _) = compare_with(&args, threads, conns, &headers, &urls, &[])?;
            let g = r[0];
            let n = r[urls.len() - 1];
            let row = |name: &str, w: &Wrk, vs: String| {
                format!(
                    "| {name} | {:.0} | {:.3} ms | {:.3} ms | {vs} |\n",
                    w.rps, w.p50_ms, w.p99_ms
                )
            };
            let mut table = row(
                "gateway (`GET /api/projects/p/files/f4k.bin`, bearer token)",
                &g,
                String::new(),
            );
            if base.is_some() {
                let vs = format!("{:.1}%", 100.0 * g.rps / r[1].rps);
                table += &row("baseline build (`--baseline`)", &r[1], vs);
            }
            let vs = format!("**{:.0}%**", 100.0 * g.rps / n.rps);
            table += &row("nginx (static file)", &n, vs);
            report.push(format!(
                "### 4 KiB file GET with a token, {what}, `wrk -t{threads} -c{conns} -d{}s` (median of {} rounds)\n\n\
                 | | req/s | p50 | p99 | gateway / it |\n|---|---|---|---|---|\n\
                 {table}\n\
                 Non-2xx answers in the median gateway run: {}. Every round: {rounds}\n",
                args.duration, args.rounds, g.errors,
            ));
        }
    }

    if args.runs("terminal") || args.runs("echo") {
        let peers = TermPeers::start(&args).await?;
        let load0 = loadavg();
        let file = project_dir.join("big.txt");
        let file = if args.runs("terminal") {
            write_text(&file, args.terminal_mb * 1_000_000)?;
            if let Some((b, _)) = &base {
                std::fs::copy(&file, b.project_dir("bench").join("big.txt"))?;
            }
            Some(file.canonicalize()?)
        } else {
            None
        };
        // The node client runs the same bash as the peers on every server,
        // so readline's echo is the same work.
        let bash = "exec%20bash%20--norc%20--noprofile";
        let mut clients = vec![("Rust client → gateway".to_owned(), Client::Rust(&gw))];
        if let Some((b, _)) = &base {
            clients.push((
                "Rust client → baseline gateway (`--baseline`)".into(),
                Client::Rust(b),
            ));
        }
        if peers.node.is_some() {
            clients.push((
                "node `ws` → gateway".into(),
                Client::Node(
                    "devgate",
                    format!("ws://{gw_addr}/api/projects/bench/terminal?cmd={bash}"),
                    token.clone(),
                    file.clone(),
                ),
            ));
            // The baseline build only when asked: an old one predates the
            // token in the WebSocket subprotocol (the way the page and this
            // client send it) and answers the node client 401.
            if args.baseline_node
                && let Some((b, _)) = &base
            {
                clients.push((
                    "node `ws` → baseline gateway (`--baseline`)".into(),
                    Client::Node(
                        "devgate",
                        format!("ws://{}/api/projects/bench/terminal?cmd={bash}", b.addr),
                        b.admin_token(),
                        file.as_ref()
                            .map(|_| b.project_dir("bench").join("big.txt")),
                    ),
                ));
            }
        }
        if let Some(w) = &peers.wetty {
            clients.push((
                format!("node `socket.io` → wetty {}", w.version),
                Client::Node(
                    "wetty",
                    format!("http://127.0.0.1:{}/socket.io", w.port),
                    String::new(),
                    file.clone(),
                ),
            ));
        }
        if let Some(t) = &peers.terminado {
            clients.push((
                format!("node `ws` → terminado {}", t.version),
                Client::Node(
                    "terminado",
                    format!("ws://127.0.0.1:{}/websocket", t.port),
                    String::new(),
                    file.clone(),
                ),
            ));
        }
        if file.is_some() {
            clients.push((
                "no server: `cat` on a PTY, read by a Rust loop (the floor)".into(),
                Client::Floor,
            ));
        }
        let names: Vec<String> = clients.iter().map(|(n, _)| n.clone()).collect();
        // The server side of each client's target, for the CPU time it spends
        // on a run: the gateway and its agent, or the peer's process.
        let gw_pids = |g: &Gateway| {
            [
                pid_with_arg(&g.data_dir),
                pid_with_arg(&g.project_dir("bench")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<u32>>()
        };
        let servers: Vec<Vec<u32>> = names
            .iter()
            .map(|n| {
                if n.starts_with("no server") {
                    Vec::new()
                } else if n.contains("wetty") {
                    peers.wetty.iter().map(|p| p.child.id()).collect()
                } else if n.contains("terminado") {
                    peers.terminado.iter().map(|p| p.child.id()).collect()
                } else if n.contains("baseline") {
                    base.as_ref().map(|(b, _)| gw_pids(b)).unwrap_or_default()
                } else {
                    gw_pids(&gw)
                }
            })
            .collect();
        let mut cpu = vec![Vec::new(); names.len()];
        // Every round runs each client once, interleaved.
        let mut mbs = vec![Vec::new(); names.len()];
        let mut echo = vec![Vec::new(); names.len()];
        for round in 0..args.rounds {
            if file.is_some() {
                eprintln!("== terminal throughput, round {round}");
                for (i, (name, client)) in clients.iter().enumerate() {
                    let cpu0 = cpu_secs(&servers[i]);
                    let v = match client {
                        Client::Floor => {
                            let file = project_dir.join("big.txt");
                            let (bytes, secs) =
                                tokio::task::spawn_blocking(move || bare_pty(&file)).await??;
                            eprintln!("  {name}: {:.1} MB/s", bytes as f64 / 1e6 / secs);
                            bytes as f64 / 1e6 / secs
                        }
                        Client::Rust(g) => {
                            let (bytes, secs) = terminal_throughput(g, "cat big.txt").await?;
                            eprintln!("  {name}: {:.1} MB/s", bytes as f64 / 1e6 / secs);
                            bytes as f64 / 1e6 / secs
                        }
                        Client::Node(proto, url, token, file) => {
                            let file = file.as_deref().context("no file")?;
                            let r = peers.client(proto, url, token, "throughput", file, 0)?;
                            let got = r["bytes"].as_f64().unwrap_or_default();
                            // `\n` becomes `\r\n` on the way: never fewer bytes than the file.
                            anyhow::ensure!(
                                got >= (args.terminal_mb * 1_000_000) as f64,
                                "{name}: only {got} bytes of output"
                            );
                            let v = r["mb_s"].as_f64().unwrap_or_default();
                            eprintln!("  {name}: {v:.1} MB/s in {} messages", r["frames"]);
                            v
                        }
                    };
                    mbs[i].push(v);
                    cpu[i].push(cpu_secs(&servers[i]) - cpu0);
                }
            }
            if args.runs("echo") {
                eprintln!("== keystroke echo, round {round}");
                for (i, (name, client)) in clients.iter().enumerate() {
                    let p = match client {
                        Client::Floor => continue,
                        Client::Rust(g) => {
                            let mut lat = echo_latency(g, args.keys).await?;
                            lat.sort_by(f64::total_cmp);
                            (pct(&lat, 50.0), pct(&lat, 99.0))
                        }
                        Client::Node(proto, url, token, _) => {
                            let r = peers.client(
                                proto,
                                url,
                                token,
                                "echo",
                                Path::new(""),
                                args.keys,
                            )?;
                            (
                                r["p50_ms"].as_f64().unwrap_or_default(),
                                r["p99_ms"].as_f64().unwrap_or_default(),
                            )
                        }
                    };
                    eprintln!("  {name}: p50 {:.3} ms, p99 {:.3} ms", p.0, p.1);
                    echo[i].push(p);
                }
            }
        }
        if let Some(file) = &file {
            std::fs::remove_file(file)?;
            if let Some((b, _)) = &base {
                std::fs::remove_file(b.project_dir("bench").join("big.txt"))?;
            }
        }
        let load = format!(
            "Load average (1/5/15 min) before the terminal parts: {load0}; after: {}. {}\n",
            loadavg(),
            peers.notes.join(" "),
        );
        if file.is_some() {
            let mut t = format!(
                "### Terminal output, every round\n\n{load}\n`cat` of a {} MB text file (lines of 100 bytes) at a shell prompt; MB/s of \
                 output received (the PTY turns `\\n` into `\\r\\n`: {} bytes). The Rust client (`tokio-tungstenite`) \
                 opens a session running `cat big.txt` and times the session frame to the exit frame. The node client \
                 (`bench/gateway/term-client.mjs`, one message at a time as a page reads them) types \
                 `cat FILE; echo __DO\"\"NE__` into `bash --norc --noprofile` and times the keystroke to the marker.\n\n\
                 The floor row is `cat` on a PTY of the bench's own, read in 64 KiB reads by a plain loop: \
                 no server, no socket, no client (a PTY read gives at most 4 KiB, and each refill of the \
                 terminal's 4 KiB buffer is a hand-off through a kernel worker).\n\n\
                 The last column is the CPU time the server side spent during the run (user + system, from \
                 `/proc`: the gateway and its agent, or the peer's process; not the shell, `cat` or the kernel's \
                 PTY work, which are the same for all).\n\n\
                 | client → server | MB/s per round | median | server CPU s per run |\n|---|---|---|---|\n",
                args.terminal_mb,
                args.terminal_mb * 1_010_000,
            );
            for ((name, v), c) in names.iter().zip(&mbs).zip(&cpu) {
                let rounds: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
                let c: Vec<String> = if name.starts_with("no server") {
                    vec!["–".into()]
                } else {
                    c.iter().map(|x| format!("{x:.2}")).collect()
                };
                t.push_str(&format!(
                    "| {name} | {} | **{:.1}** | {} |\n",
                    rounds.join(" / "),
                    med(v),
                    c.join(" / "),
                ));
            }
            if let (Some(node), Some(wetty)) = (
                names
                    .iter()
                    .position(|n| n.starts_with("node `ws` → gateway")),
                names.iter().position(|n| n.contains("wetty")),
            ) {
                let (g, w) = (med(&mbs[node]), med(&mbs[wetty]));
                t.push_str(&format!(
                    "\nIssue 14's target, through the node client: ≥ 2× wetty and ≥ 100 MB/s. Median {g:.1} MB/s = **{:.2}× wetty**: {}.\n",
                    g / w,
                    if g >= 2.0 * w && g >= 100.0 { "met" } else { "not met" },
                ));
            }
            report.push(t);
        }
        if args.runs("echo") {
            let mut t = format!(
                "### Keystroke echo, every round\n\n{load}\n{} keys typed one at a time at a bash prompt (readline echoes each; \
                 Ctrl-U every 50), time from the send to the first output holding the key. The Rust client types into \
                 the gateway's default shell; the node client into `bash --norc --noprofile` on every server.\n\n\
                 | client → server | p50 per round (ms) | p99 per round (ms) | median p50 |\n|---|---|---|---|\n",
                args.keys,
            );
            for (name, v) in names.iter().zip(&echo).filter(|(_, v)| !v.is_empty()) {
                let p50: Vec<String> = v.iter().map(|x| format!("{:.3}", x.0)).collect();
                let p99: Vec<String> = v.iter().map(|x| format!("{:.3}", x.1)).collect();
                let m: Vec<f64> = v.iter().map(|x| x.0).collect();
                t.push_str(&format!(
                    "| {name} | {} | {} | **{:.3}** |\n",
                    p50.join(" / "),
                    p99.join(" / "),
                    med(&m),
                ));
            }
            report.push(t);
        }
    }

    if args.runs("wsecho") {
        eprintln!("== WebSocket echo through the proxy vs nginx");
        let base = base.as_ref().map(|(b, _)| b);
        report.push(ws_echo(&args, &gw, base, ws_up_port, ws_proxy_port).await?);
    }

    if args.runs("idle") {
        eprintln!("== {} idle terminals", args.idle);
        let gw_pid = pid_with_arg(&gw.data_dir).context("gateway process not found")?;
        let before = rss_kib(gw_pid)?;
        let t0 = Instant::now();
        let mut open: Vec<Ws> = Vec::with_capacity(args.idle);
        let mut pending = futures::stream::iter((0..args.idle).map(|_| {
            let addr = gw_addr.clone();
            let token = token.clone();
            async move {
                let url = format!("ws://{addr}/api/projects/bench/terminal?token={token}&cmd=cat");
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
                session(&mut ws).await?;
                Ok::<_, anyhow::Error>(ws)
            }
        }))
        .buffer_unordered(16);
        while let Some(ws) = pending.next().await {
            open.push(ws?);
        }
        let opened_in = t0.elapsed();
        // Let allocations settle, then read the RSS with all of them open.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let with = rss_kib(gw_pid)?;
        let agent_rss = pid_with_arg(&project_dir).and_then(|p| rss_kib(p).ok());
        report.push(format!(
            "### Idle terminals\n\n{} terminal WebSockets open at once (each a PTY session running `cat`, \
             opened 16 at a time in {:.1} s): gateway RSS **{:.1} MB** (it was {:.1} MB before them){}.\n",
            open.len(),
            opened_in.as_secs_f64(),
            with as f64 / 1024.0,
            before as f64 / 1024.0,
            agent_rss.map(|a| format!("; the agent holding the PTYs: {:.1} MB", a as f64 / 1024.0)).unwrap_or_default(),
        ));
        for mut ws in open {
            let _ = ws.close(None).await;
        }
    }

    // Stop the dev servers through the API, so each ends with its process
    // group (nginx's workers, node); a container that never started answers
    // an error, which changes nothing.
    for g in std::iter::once(&gw).chain(base.as_ref().map(|(b, _)| b)) {
        for c in ["up", "wsup"] {
            let _ = g
                .post(&format!("/api/projects/bench/containers/{c}/stop"))
                .send()
                .await;
        }
    }
    println!("{}", report.join("\n"));
    Ok(())
}

/// An nginx master stopped with SIGTERM on drop: a SIGKILLed master would
/// leave its workers running.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// A terminal client of the terminal parts: this crate's, against a
/// gateway; or the node one, with its protocol, URL and token.
enum Client<'a> {
    /// No server: `cat` on a PTY of this process, read by a plain loop
    /// (the floor the kernel's PTY sets on this machine).
    Floor,
    Rust(&'a Gateway),
    /// Protocol, URL, token, and which copy of the file to `cat` (each
    /// gateway's shells run as its project's own user).
    Node(&'static str, String, String, Option<PathBuf>),
}

/// A peer server started for the terminal parts, stopped (SIGTERM, then
/// its PTYs' shells get SIGHUP) on drop.
struct Peer {
    child: std::process::Child,
    port: u16,
    version: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The terminal parts' node client and peer servers; a missing one is left
/// out with a note for the report.
struct TermPeers {
    /// `node` and the client script, when both are there.
    node: Option<(String, PathBuf)>,
    wetty: Option<Peer>,
    terminado: Option<Peer>,
    notes: Vec<String>,
}

impl TermPeers {
    async fn start(args: &Args) -> Result<TermPeers> {
        let mut notes = Vec::new();
        let dir = args
            .peers_dir
            .canonicalize()
            .with_context(|| format!("{}", args.peers_dir.display()))?;
        let script = dir.join("term-client.mjs");
        let node_ok = node_has(&dir, "require('ws'); require('socket.io-client')");
        let node = if node_ok && script.is_file() {
            let v = Command::new("node").arg("--version").output()?;
            let v = String::from_utf8_lossy(&v.stdout).trim().to_owned();
            notes.push(format!("Node client: node {v}."));
            Some((v, script))
        } else {
            notes.push(format!(
                "The node client did not run: node or its packages missing in {} (run.sh installs them).",
                dir.display()
            ));
            None
        };
        let wetty_bin = dir.join("node_modules/.bin/wetty");
        let wetty = if node.is_some() && wetty_bin.is_file() {
            let port = tests::free_port();
            let version = package_version(&dir.join("node_modules/wetty/package.json"));
            let child = Command::new(&wetty_bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--command", "bash --norc --noprofile"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("start wetty")?;
            let p = Peer {
                child,
                port,
                version,
            };
            wait_port(port).await?;
            notes.push(format!(
                "wetty {} (npm) runs `bash --norc --noprofile` as root on its own PTY (node-pty); the node client uses socket.io's websocket transport and acknowledges every 256 KiB as wetty's page does.",
                p.version
            ));
            Some(p)
        } else {
            notes.push("wetty did not run: not installed (run.sh installs it).".into());
            None
        };
        let terminado = match &args.terminado_python {
            Some(py) if node.is_some() => {
                let port = tests::free_port();
                let v = Command::new(py)
                    .args([
                        "-c",
                        "import terminado, tornado; print(terminado.__version__, tornado.version)",
                    ])
                    .output()?;
                let v = String::from_utf8_lossy(&v.stdout).trim().to_owned();
                let (version, tornado) = v.split_once(' ').unwrap_or((&v, "?"));
                let child = Command::new(py)
                    .arg(dir.join("terminado_server.py"))
                    .arg(port.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context("start terminado")?;
                let p = Peer {
                    child,
                    port,
                    version: version.to_owned(),
                };
                wait_port(port).await?;
                notes.push(format!(
                    "terminado {version} on tornado {tornado} (`bench/gateway/terminado_server.py`, one `bash --norc --noprofile` per socket)."
                ));
                Some(p)
            }
            _ => {
                notes.push(
                    "terminado did not run: no `--terminado-python` (run.sh passes its venv)."
                        .into(),
                );
                None
            }
        };
        Ok(TermPeers {
            node,
            wetty,
            terminado,
            notes,
        })
    }

    /// Runs the node client once; its JSON answer.
    fn client(
        &self,
        proto: &str,
        url: &str,
        token: &str,
        mode: &str,
        file: &Path,
        keys: usize,
    ) -> Result<Value> {
        let (_, script) = self.node.as_ref().context("no node client")?;
        let (file, keys) = (file.to_string_lossy(), keys.to_string());
        let a = [
            "--proto", proto, "--url", url, "--token", token, "--mode", mode, "--file", &file,
            "--keys", &keys,
        ];
        node_client(script, &a, &format!("node client ({proto} {mode})"))
    }
}

/// Whether `node` runs the script `requires` (its `require`s) in `dir`.
fn node_has(dir: &Path, requires: &str) -> bool {
    Command::new("node")
        .args(["-e", requires])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a node client script, which must succeed; its one JSON line.
fn node_client(script: &Path, args: &[&str], what: &str) -> Result<Value> {
    let out = Command::new("node")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("run node")?;
    anyhow::ensure!(out.status.success(), "{what} failed: {}", out.status);
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn package_version(path: &Path) -> String {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

async fn wait_port(port: u16) -> Result<()> {
    tests::eventually(
        Duration::from_secs(30),
        &format!("a peer to listen on {port}"),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await
}

/// `cat file` on a PTY of its own, its master read in 64 KiB reads until
/// the end of output: the bytes and seconds from the spawn. No server, no
/// socket, no client: what the kernel's PTY gives on this machine.
fn bare_pty(file: &Path) -> Result<(usize, f64)> {
    use std::io::Read as _;
    let pair = portable_pty::native_pty_system()
        .openpty(portable_pty::PtySize {
            rows: 24,
            cols: 80,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| anyhow::anyhow!("openpty: {e:#}"))?;
    let mut reader = pair
        .master
        .try_clone_reader()
        .map_err(|e| anyhow::anyhow!("pty reader: {e:#}"))?;
    let mut cmd = portable_pty::CommandBuilder::new("cat");
    cmd.arg(file);
    let t0 = Instant::now();
    let mut child = pair
        .slave
        .spawn_command(cmd)
        .map_err(|e| anyhow::anyhow!("spawn cat: {e:#}"))?;
    // Our copy of the slave must close, or the read never ends.
    drop(pair.slave);
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // EIO once `cat` exited and closed the terminal.
            Err(_) => break,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "cat on a pty: {status:?}");
    Ok((bytes, secs))
}

/// The fields of `/proc/{pid}/stat` after the command name (which may hold
/// spaces): `[0]` is the state (field 3 of the whole line), `[1]` the parent.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU seconds of these processes (all their threads).
fn cpu_secs(pids: &[u32]) -> f64 {
    // /proc counts in USER_HZ, 100 a second on Linux.
    let tick = 100.0;
    pids.iter()
        .filter_map(|&pid| {
            // utime and stime, the 14th and 15th fields of the whole line.
            let f = stat_fields(pid)?;
            let u: f64 = f.get(11)?.parse().ok()?;
            let s: f64 = f.get(12)?.parse().ok()?;
            Some((u + s) / tick)
        })
        .sum()
}

/// `/proc/loadavg`'s three averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

const UPSTREAM_CONF: &str = r#"user root;
worker_processes 1;
daemon off;
pid nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp; uwsgi_temp_path tmp; scgi_temp_path tmp;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:__PORT__;
    root www;
  }
}
"#;

const NGINX_CONF: &str = r#"user root;
worker_processes __WORKERS__;
daemon off;
pid nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp; uwsgi_temp_path tmp; scgi_temp_path tmp;
  keepalive_requests 1000000;
  sendfile on;
  # The tuned proxy an operator would compare with: a pool of idle upstream
  # connections (`keepalive 64`, one per wrk connection), HTTP/1.1 to the
  # upstream and no `Connection: close` forwarded.
  upstream up_bench { server 127.0.0.1:__UP_PORT__; keepalive 64; keepalive_requests 1000000; }
  map $host $preview {
    hostnames;
    default "";
    up.bench.localhost up_bench;
  }
  map $host $preview_plain {
    hostnames;
    default "";
    up.bench.localhost 127.0.0.1:__UP_PORT__;
  }
  server {
    listen 127.0.0.1:__PROXY_PORT__;
    location / {
      if ($preview = "") { return 404; }
      proxy_pass http://$preview;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
    }
  }
  # The same routing with nginx's defaults for `proxy_pass`: HTTP/1.0 and a
  # new connection to the upstream for every request.
  server {
    listen 127.0.0.1:__PLAIN_PORT__;
    location / {
      if ($preview_plain = "") { return 404; }
      proxy_pass http://$preview_plain;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }
  server {
    listen 127.0.0.1:__STATIC_PORT__;
    root __ROOT__;
  }
  # WebSockets through the keepalive proxy, as nginx's documentation sets
  # them up: HTTP/1.1, Upgrade passed on, `Connection: upgrade` only for an
  # upgrade (other requests keep the pool's connections).
  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }
  upstream ws_bench { server 127.0.0.1:__WS_UP_PORT__; keepalive 64; }
  map $host $preview_ws {
    hostnames;
    default "";
    wsup.bench.localhost ws_bench;
  }
  server {
    listen 127.0.0.1:__WS_PROXY_PORT__;
    location / {
      if ($preview_ws = "") { return 404; }
      proxy_pass http://$preview_ws;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }
  }
}
"#;

/// Machine and method, for the report's head.
fn machine(no_deep_idle: bool) -> Result<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or_default();
    let out = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let idle = if no_deep_idle {
        "deep idle states off (`--no-deep-idle`: PM QoS 0)".to_owned()
    } else {
        format!(
            "CPU idle driver {} (deep idle allowed)",
            out("cat /sys/devices/system/cpu/cpuidle/current_driver")
        )
    };
    Ok(format!(
        "Machine: {cores} cores ({cpu}), {mem_gib:.0} GiB, kernel {}; {}; {}; {idle}. Everything (wrk, nginx, the \
         gateway, the agent, the upstream) shares these cores on loopback.\n",
        out("uname -r"),
        out("nginx -v 2>&1"),
        out("wrk -v 2>&1"),
    ))
}

/// Starts a gateway with project `bench` and its public container `up`: an
/// nginx (one worker) serving a 1 KiB file, run as the container's start
/// command like any dev server. Returns the gateway and the upstream's port.
async fn start_with_upstream(builder: tests::gateway::GatewayBuilder) -> Result<(Gateway, u16)> {
    // The idle part holds 1,000 terminals from one loopback address, past
    // the default per-address cap (256): raise it (the baseline build
    // ignores a variable it does not know).
    let gw = builder
        .env("RUST_LOG", "warn")
        .env("GATEWAY_MAX_CONNECTIONS_PER_IP", "4096")
        .start()
        .await?;
    gw.open_project("bench").await?;
    let up_port = tests::free_port();
    let page: String = "x".repeat(1023) + "\n";
    put(&gw, "up/www/index.html", page.as_bytes()).await?;
    put(&gw, "up/nginx.conf.in", UPSTREAM_CONF.as_bytes()).await?;
    tests::devserver::start_container(
        &gw,
        "bench",
        &json!({"name": "up", "port": up_port, "public": true,
            "start": "mkdir -p tmp && sed \"s/__PORT__/$PORT/\" nginx.conf.in > nginx.conf && exec nginx -p \"$PWD/\" -c nginx.conf"}),
    )
    .await?;
    wait_http(
        &format!("127.0.0.1:{up_port}"),
        "up.bench.localhost",
        "/index.html",
    )
    .await?;
    Ok((gw, up_port))
}

async fn put(gw: &Gateway, path: &str, data: &[u8]) -> Result<()> {
    let r = gw
        .put(&format!("/api/projects/bench/files/{path}"))
        .body(data.to_vec())
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "PUT {path}: {}", r.status());
    Ok(())
}

/// Raw HTTP/1.1 GET with a Host header; answers status and body.
async fn raw_get(addr: &str, host: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| buf[i + 4..].to_vec())
        .unwrap_or_default();
    Ok((status, body))
}

async fn wait_http(addr: &str, host: &str, path: &str) -> Result<()> {
    tests::eventually(
        Duration::from_secs(30),
        &format!("{addr} to answer"),
        || async {
            raw_get(addr, host, path)
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ())
        },
    )
    .await
}

async fn check_body(url: &str, host: &str, want: &str) -> Result<()> {
    let rest = url.strip_prefix("http://").context("http url")?;
    let (addr, path) = rest.split_once('/').context("url path")?;
    let (status, body) = raw_get(addr, host, &format!("/{path}")).await?;
    anyhow::ensure!(
        status == 200 && body == want.as_bytes(),
        "{url} answered {status}"
    );
    Ok(())
}

/// One wrk result.
#[derive(Debug, Clone, Copy, Default)]
struct Wrk {
    /// Non-2xx answers (and socket error lines) seen.
    errors: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// What the processes serving the target spent per request over the
    /// run (when they were given): CPU time (user + system, µs), and how
    /// often one of their threads went to sleep (voluntary context
    /// switches) or was preempted (involuntary).
    cpu_us: f64,
    sleeps: f64,
    preempted: f64,
}

/// CPU time and context switches of a set of processes, all their threads
/// (from `/proc`; switches of threads that ended in between are lost).
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_s: f64,
    sleeps: u64,
    preempted: u64,
}

fn usage(pids: &[u32]) -> Usage {
    let mut u = Usage {
        cpu_s: cpu_secs(pids),
        ..Usage::default()
    };
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            for line in status.lines() {
                let count = |prefix: &str| {
                    line.strip_prefix(prefix)
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                if let Some(n) = count("voluntary_ctxt_switches:") {
                    u.sleeps += n;
                } else if let Some(n) = count("nonvoluntary_ctxt_switches:") {
                    u.preempted += n;
                }
            }
        }
    }
    u
}

/// The processes whose parent is `parent` (nginx's workers).
fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(parent))
        .collect()
}

fn wrk(threads: usize, conns: usize, secs: u64, header: &str, url: &str) -> Result<Wrk> {
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &conns.to_string(),
            "-d",
            &format!("{secs}s"),
            "--latency",
            "-H",
            header,
            url,
        ])
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "wrk failed: {text}");
    let mut w = Wrk::default();
    // Errors are reported with the figures, not hidden and not fatal.
    for line in text.lines() {
        if let Some(n) = line.trim().strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += n.trim().parse::<u64>().unwrap_or(0);
        }
        if line.trim().starts_with("Socket errors:") {
            eprintln!("  wrk against {url}: {}", line.trim());
            w.errors += 1;
        }
    }
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("50%"), Some(v)) => w.p50_ms = ms(v)?,
            (Some("99%"), Some(v)) => w.p99_ms = ms(v)?,
            (Some("Requests/sec:"), Some(v)) => w.rps = v.parse()?,
            _ => {}
        }
    }
    anyhow::ensure!(w.rps > 0.0, "no Requests/sec in wrk's output:\n{text}");
    Ok(w)
}

fn ms(v: &str) -> Result<f64> {
    let (num, unit) = v.split_at(
        v.find(|c: char| c.is_ascii_alphabetic())
            .context("latency unit")?,
    );
    let n: f64 = num.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        other => bail!("unknown latency unit {other}"),
    })
}

/// Alternates the targets' runs (after a warm-up of each); the median
/// round of each target by req/s.
/// `wrk` against each URL in turn, `args.rounds` times (the URLs
/// interleaved in every round, after a 2 s warm-up of each). Returns each
/// URL's median run and every round's req/s, for the report.
/// `pids[i]`, when given, are the processes serving URL `i`: what they
/// spend per request goes in its results.
fn compare(
    args: &Args,
    threads: usize,
    conns: usize,
    header: &str,
    urls: &[(&str, String)],
    pids: &[Vec<u32>],
) -> Result<(Vec<Wrk>, String, Vec<Vec<Wrk>>)> {
    let headers = vec![header.to_string(); urls.len()];
    compare_with(args, threads, conns, &headers, urls, pids)
}

/// [`compare`] with one header per URL.
fn compare_with(
    args: &Args,
    threads: usize,
    conns: usize,
    headers: &[String],
    urls: &[(&str, String)],
    pids: &[Vec<u32>],
) -> Result<(Vec<Wrk>, String, Vec<Vec<Wrk>>)> {
    for ((_, url), header) in urls.iter().zip(headers) {
        wrk(threads, conns, 2, header, url)?;
    }
    let mut runs = vec![Vec::new(); urls.len()];
    for round in 0..args.rounds {
        for (i, ((name, url), header)) in urls.iter().zip(headers).enumerate() {
            let serving = pids.get(i).map(Vec::as_slice).unwrap_or_default();
            let before = usage(serving);
            let mut w = wrk(threads, conns, args.duration, header, url)?;
            let after = usage(serving);
            if !serving.is_empty() {
                let requests = w.rps * args.duration as f64;
                w.cpu_us = (after.cpu_s - before.cpu_s) * 1e6 / requests;
                w.sleeps = after.sleeps.saturating_sub(before.sleeps) as f64 / requests;
                w.preempted = after.preempted.saturating_sub(before.preempted) as f64 / requests;
            }
            eprintln!("  round {round}: {name} {w:?}");
            runs[i].push(w);
        }
    }
    let rounds = urls
        .iter()
        .zip(&runs)
        .map(|((name, _), r)| {
            let v: Vec<String> = r
                .iter()
                .map(|w| {
                    let spent = if w.cpu_us > 0.0 {
                        format!(
                            ", {:.1} µs CPU, {:.2} + {:.2} switches",
                            w.cpu_us, w.sleeps, w.preempted
                        )
                    } else {
                        String::new()
                    };
                    format!("{:.0} (p50 {:.3} ms{spent})", w.rps, w.p50_ms)
                })
                .collect();
            format!("{name} {}", v.join(" / "))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let medians = runs.iter().cloned().map(median).collect();
    Ok((medians, rounds, runs))
}

/// The median of `v` (the upper one of an even count).
fn med(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn median(mut v: Vec<Wrk>) -> Wrk {
    v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    v[v.len() / 2]
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A text file of `bytes` bytes in lines of 100 characters.
fn write_text(path: &Path, bytes: usize) -> Result<()> {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut line = [0u8; 100];
    let mut written = 0;
    let mut n = 0usize;
    while written < bytes {
        for (i, b) in line.iter_mut().enumerate().take(99) {
            *b = alphabet[(n + i * 7) % alphabet.len()];
        }
        line[99] = b'\n';
        n += 1;
        let take = (bytes - written).min(100);
        f.write_all(&line[..take])?;
        written += take;
    }
    f.flush()?;
    Ok(())
}

async fn connect(gw: &Gateway, query: &str) -> Result<Ws> {
    let url = format!(
        "ws://{}/api/projects/bench/terminal?token={}&{query}",
        gw.addr,
        gw.admin_token()
    );
    Ok(tokio_tungstenite::connect_async(url).await?.0)
}

async fn session(ws: &mut Ws) -> Result<Value> {
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
        Some(Ok(Message::Text(t))) => Ok(serde_json::from_str(&t)?),
        other => bail!("expected the session frame, got {other:?}"),
    }
}

/// Bytes of output and seconds from the session frame to the exit frame.
async fn terminal_throughput(gw: &Gateway, cmd: &str) -> Result<(usize, f64)> {
    let mut ws = connect(gw, &format!("cmd={}", cmd.replace(' ', "%20"))).await?;
    session(&mut ws).await?;
    let t0 = Instant::now();
    let mut bytes = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await? {
            Some(Ok(Message::Binary(b))) => bytes += b.len(),
            Some(Ok(Message::Text(t))) if t.contains("\"exit\"") => break,
            Some(Ok(_)) => {}
            other => bail!("terminal ended early: {other:?}"),
        }
    }
    Ok((bytes, t0.elapsed().as_secs_f64()))
}

/// Reads until nothing arrives for `quiet`.
async fn drain(ws: &mut Ws, quiet: Duration) -> Result<()> {
    while let Ok(m) = tokio::time::timeout(quiet, ws.next()).await {
        if m.is_none() {
            bail!("terminal closed");
        }
    }
    Ok(())
}

/// Milliseconds from each keystroke's send to its echo.
async fn echo_latency(gw: &Gateway, keys: usize) -> Result<Vec<f64>> {
    let mut ws = connect(gw, "").await?;
    session(&mut ws).await?;
    drain(&mut ws, Duration::from_millis(500)).await?;
    let mut lat = Vec::with_capacity(keys);
    for i in 0..keys {
        if i > 0 && i % 50 == 0 {
            // Clear the line (Ctrl-U) so readline keeps a short one.
            ws.send(Message::binary(vec![0x15])).await?;
            drain(&mut ws, Duration::from_millis(100)).await?;
        }
        let t0 = Instant::now();
        ws.send(Message::binary(b"a".to_vec())).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
                Some(Ok(Message::Binary(b))) if b.contains(&b'a') => break,
                Some(Ok(_)) => {}
                other => bail!("terminal ended: {other:?}"),
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = ws.close(None).await;
    Ok(lat)
}

/// The process whose command line has `arg` as one of its arguments.
fn pid_with_arg(arg: &Path) -> Option<u32> {
    let want = arg.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if pid != std::process::id() && cmdline.split(|b| *b == 0).any(|a| a == want) {
            return Some(pid);
        }
    }
    None
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status")))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .context("no VmRSS")
}

/// The WebSocket echo part: a public container `wsup` of the project runs
/// `ws-echo-server.mjs` (node, the `ws` package copied into the project like
/// any dev server's dependencies); each round measures, one after the
/// other, the Rust client and the node client through the gateway's preview
/// host and through nginx's keepalive proxy to the same server (and through
/// the `--baseline` gateway to its own such server).
async fn ws_echo(
    args: &Args,
    gw: &Gateway,
    base: Option<&Gateway>,
    up_port: u16,
    nginx_port: u16,
) -> Result<String> {
    ws_echo_server(args, gw, up_port).await?;
    let mut targets = vec![("gateway", gw.addr.port()), ("nginx keepalive", nginx_port)];
    if let Some(b) = base {
        ws_echo_server(args, b, tests::free_port()).await?;
        targets.insert(1, ("baseline", b.addr.port()));
    }
    let dir = args.peers_dir.canonicalize()?;
    let host = "wsup.bench.localhost";
    let node_ok = node_has(&dir, "require('ws')");
    // (client, server) -> every round's (p50, p99) in ms.
    let mut runs: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for round in 0..args.rounds {
        for &(name, port) in &targets {
            let url = format!("ws://127.0.0.1:{port}/");
            let rust = ws_echo_rust(&url, host, args.messages).await?;
            eprintln!(
                "  round {round}: Rust -> {name}: p50 {:.3} p99 {:.3} ms",
                rust.0, rust.1
            );
            push_run(&mut runs, format!("Rust → {name}"), rust);
            if node_ok {
                let n = args.messages.to_string();
                let v = node_client(
                    &dir.join("ws-echo-client.mjs"),
                    &["--url", &url, "--host", host, "--n", &n],
                    &format!("ws-echo-client ({name})"),
                )?;
                let node = (
                    v["p50_ms"].as_f64().context("p50_ms")?,
                    v["p99_ms"].as_f64().context("p99_ms")?,
                );
                eprintln!(
                    "  round {round}: node -> {name}: p50 {:.3} p99 {:.3} ms",
                    node.0, node.1
                );
                push_run(&mut runs, format!("node `ws` → {name}"), node);
            }
        }
    }
    let mut t = format!(
        "### WebSocket echo through the preview proxy, every round\n\n\
         One WebSocket to the echo dev server `wsup` (node, `ws-echo-server.mjs`), through the gateway's \
         preview host and through nginx's keepalive proxy (upgrade headers passed on); {} text messages of \
         64 bytes sent one at a time after 100 unmeasured, each timed from its send to its echo. Clients: \
         this crate's (tokio-tungstenite) and a browser-like one (`ws-echo-client.mjs`, node `ws` with its \
         defaults){}. In every round the targets run one after the other.\n\n\
         | client → proxy | p50 per round (ms) | p99 per round (ms) | median p50 / p99 |\n|---|---|---|---|\n",
        args.messages,
        if node_ok {
            ""
        } else {
            "; the node client did not run (no `ws` package)"
        },
    );
    for (name, v) in &runs {
        let p50: Vec<String> = v.iter().map(|x| format!("{:.3}", x.0)).collect();
        let p99: Vec<String> = v.iter().map(|x| format!("{:.3}", x.1)).collect();
        t.push_str(&format!(
            "| {name} | {} | {} | **{:.3} / {:.3}** |\n",
            p50.join(" / "),
            p99.join(" / "),
            med(&v.iter().map(|x| x.0).collect::<Vec<_>>()),
            med(&v.iter().map(|x| x.1).collect::<Vec<_>>()),
        ));
    }
    Ok(t)
}

/// Starts the echo dev server `wsup` in `gw`'s project `bench`, on `up_port`.
async fn ws_echo_server(args: &Args, gw: &Gateway, up_port: u16) -> Result<()> {
    let dir = args.peers_dir.canonicalize()?;
    let ws_pkg = dir.join("node_modules/ws");
    anyhow::ensure!(
        ws_pkg.join("package.json").is_file(),
        "{} is missing (run.sh installs it)",
        ws_pkg.display()
    );
    for sub in ["", "lib"] {
        for e in std::fs::read_dir(ws_pkg.join(sub))? {
            let path = e?.path();
            if path.is_file() {
                let name = path.file_name().context("file name")?.to_string_lossy();
                let to = if sub.is_empty() {
                    format!("wsup/node_modules/ws/{name}")
                } else {
                    format!("wsup/node_modules/ws/{sub}/{name}")
                };
                put(gw, &to, &std::fs::read(&path)?).await?;
            }
        }
    }
    put(
        gw,
        "wsup/echo.mjs",
        &std::fs::read(dir.join("ws-echo-server.mjs"))?,
    )
    .await?;
    tests::devserver::start_container(
        gw,
        "bench",
        &json!({"name": "wsup", "port": up_port, "public": true, "start": "exec node echo.mjs"}),
    )
    .await?;
    wait_port(up_port).await?;

    Ok(())
}

fn push_run(runs: &mut Vec<(String, Vec<(f64, f64)>)>, name: String, r: (f64, f64)) {
    match runs.iter_mut().find(|(n, _)| *n == name) {
        Some((_, v)) => v.push(r),
        None => runs.push((name, vec![r])),
    }
}

/// One WebSocket, `n` text messages of 64 bytes one at a time (after 100
/// unmeasured): the p50 and p99 of send-to-echo, in ms.
async fn ws_echo_rust(url: &str, host: &str, n: usize) -> Result<(f64, f64)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = url.into_client_request()?;
    req.headers_mut().insert("host", host.parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let msg = "x".repeat(64);
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let t = Instant::now();
        ws.send(Message::text(msg.clone())).await?;
        loop {
            match ws.next().await.context("the echo socket closed")?? {
                Message::Text(got) => {
                    anyhow::ensure!(got.as_str() == msg, "the echo differs from the message");
                    break;
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => bail!("unexpected message {other:?}"),
            }
        }
        if i >= 100 {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let _ = ws.close(None).await;
    times.sort_by(f64::total_cmp);
    Ok((pct(&times, 50.0), pct(&times, 99.0)))
}
