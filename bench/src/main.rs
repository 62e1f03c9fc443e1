//! `bench-agent`: measures the release agent on loopback against the tools
//! it replaces, and prints a Markdown report for BENCHMARKS.md. It starts
//! moto (S3) and the agent (TCP on 127.0.0.1), then measures 4 KiB reads and
//! writes (one connection: p50/p99; 64 concurrent: ops/s), 100 MiB streamed
//! read and write, hibernation (a snapshot through a gateway, to S3) against
//! `zip -r` + `aws s3 cp`, open against `aws s3 cp` + `unzip`, idle RSS and
//! binary size.

mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use proto::v1::filesystem_client::FilesystemClient;
use proto::v1::{ReadRequest, WriteRequest, WriteStart, write_request};
use tonic::transport::Channel;

/// Benchmarks the release agent; run through `bench/run.sh`.
#[derive(Debug, Parser)]
#[command(name = "bench-agent", about)]
struct Args {
    /// Work directory (trees, zips); default: a new temporary directory.
    #[arg(long, env = "BENCH_DIR")]
    dir: Option<PathBuf>,
    /// Files in the archived tree (node_modules aside).
    #[arg(long, default_value_t = 5000)]
    files: usize,
    /// Approximate size of the archived tree, MB.
    #[arg(long, default_value_t = 100)]
    tree_mb: u64,
    /// Files in the excluded node_modules.
    #[arg(long, default_value_t = 20_000)]
    node_modules_files: usize,
    /// Repetitions of each archive comparison (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Operations of each one-connection latency series.
    #[arg(long, default_value_t = 5000)]
    latency_ops: usize,
}

const BUCKET: &str = "bench";
const TOKEN: &str = "bench-token";

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let work = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let root = work.join("root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;

    let mut report = Vec::<String>::new();
    machine(&mut report);

    let s3 = Moto::start(&work).await?;
    s3.create_bucket(BUCKET)?;

    let agent_bin = tests::bin("agent");
    let binary_size = std::fs::metadata(&agent_bin)?.len();
    let (agent, port) = start_agent(&agent_bin, &root).await?;
    let ch = channel(port).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_fresh = rss_kib(agent.0.id())?;

    // --- file operations
    let mut fs = FilesystemClient::new(ch.clone());
    let kib4 = vec![b'x'; 4096];
    write(&mut fs, "ops/4k.bin", kib4.clone()).await?;
    for _ in 0..200 {
        read(&mut fs, "ops/4k.bin").await?; // warm-up
    }
    let lat = series(args.latency_ops, || {
        let mut fs = fs.clone();
        async move { read(&mut fs, "ops/4k.bin").await.map(|_| ()) }
    })
    .await?;
    report.push(format!(
        "| 4 KiB read, one connection | p50 {:.3} ms, p99 {:.3} ms ({} reads) |",
        ms(pct(&lat, 50.0)),
        ms(pct(&lat, 99.0)),
        lat.len()
    ));
    let n_writes = args.latency_ops / 5;
    let lat = series(n_writes, || {
        let mut fs = fs.clone();
        let data = kib4.clone();
        async move { write(&mut fs, "ops/w.bin", data).await }
    })
    .await?;
    report.push(format!(
        "| 4 KiB write (atomic: temp file, fsync, rename), one connection | p50 {:.3} ms, p99 {:.3} ms ({} writes) |",
        ms(pct(&lat, 50.0)),
        ms(pct(&lat, 99.0)),
        lat.len()
    ));
    let (ops, secs) = concurrent(64, 400, &fs, |mut fs, _, _| async move {
        read(&mut fs, "ops/4k.bin").await.map(|_| ())
    })
    .await?;
    report.push(format!("| 4 KiB read, 64 concurrent (one HTTP/2 connection) | {:.0} reads/s ({ops} in {secs:.2} s) |", ops as f64 / secs));
    // Several connections, as a gateway with a connection pool would use.
    let chans = futures::future::try_join_all((0..4).map(|_| channel(port))).await?;
    let (ops, secs) = concurrent(64, 400, &fs, |_, task, _| {
        let mut fs = FilesystemClient::new(chans[task % chans.len()].clone());
        async move { read(&mut fs, "ops/4k.bin").await.map(|_| ()) }
    })
    .await?;
    report.push(format!(
        "| 4 KiB read, 64 concurrent over 4 connections | {:.0} reads/s ({ops} in {secs:.2} s) |",
        ops as f64 / secs
    ));
    let (ops, secs) = concurrent(64, 30, &fs, |mut fs, task, _| {
        let data = kib4.clone();
        async move { write(&mut fs, &format!("ops/c/{task}.bin"), data).await }
    })
    .await?;
    report.push(format!(
        "| 4 KiB write, 64 concurrent | {:.0} writes/s ({ops} in {secs:.2} s) |",
        ops as f64 / secs
    ));

    // The same over a Unix socket (the local runtime's transport).
    {
        let uds = tests::Agent::start(&root, &[]).await?;
        let ufs = FilesystemClient::new(uds.channel().await?);
        let token = uds.token.clone();
        let read_uds = move |mut fs: FilesystemClient<Channel>, token: String| async move {
            let mut stream = fs
                .read(tests::authed(
                    ReadRequest {
                        path: "ops/4k.bin".into(),
                        offset: 0,
                        length: 0,
                    },
                    &token,
                ))
                .await?
                .into_inner();
            while stream.message().await?.is_some() {}
            Ok::<_, anyhow::Error>(())
        };
        for _ in 0..200 {
            read_uds(ufs.clone(), token.clone()).await?;
        }
        let lat = series(args.latency_ops, || read_uds(ufs.clone(), token.clone())).await?;
        report.push(format!(
            "| 4 KiB read, one Unix-socket connection | p50 {:.3} ms, p99 {:.3} ms ({} reads) |",
            ms(pct(&lat, 50.0)),
            ms(pct(&lat, 99.0)),
            lat.len()
        ));
        let (ops, secs) = concurrent(64, 400, &ufs, |fs, _, _| read_uds(fs, token.clone())).await?;
        report.push(format!("| 4 KiB read, 64 concurrent, one Unix-socket connection | {:.0} reads/s ({ops} in {secs:.2} s) |", ops as f64 / secs));
    }

    // --- streams
    let big: Vec<u8> = (0..100u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let t = Instant::now();
    write_chunked(&mut fs, "ops/100m.bin", &big, 1 << 20).await?;
    let w = t.elapsed();
    let t = Instant::now();
    let n = read(&mut fs, "ops/100m.bin").await?;
    let r = t.elapsed();
    if n != big.len() as u64 {
        bail!("read {n} bytes of {}", big.len());
    }
    drop(big);
    report.push(format!(
        "| 100 MiB streamed write | {:.0} MB/s ({:.2} s) |",
        104.8576 / w.as_secs_f64(),
        w.as_secs_f64()
    ));
    report.push(format!(
        "| 100 MiB streamed read | {:.0} MB/s ({:.2} s) |",
        104.8576 / r.as_secs_f64(),
        r.as_secs_f64()
    ));
    std::fs::remove_dir_all(root.join("ops"))?;

    // --- snapshots (through a gateway on S3) vs zip + aws
    let gw = tests::gateway::Gateway::builder()
        .envs(&s3.env())
        .archive(format!("s3://{BUCKET}/snapshots"))
        // No scheduled snapshot racing the timed ones (a project with no
        // version yet is due at once).
        .args(&["--snapshot-interval", "off"])
        .start()
        .await?;
    gw.open_project("bench").await?;
    let proj = gw.project_dir("bench");
    let t = Instant::now();
    let stats = tree::generate(
        &proj,
        args.files,
        args.tree_mb * 1_000_000,
        args.node_modules_files,
    )?;
    // A real history beside it: one commit of everything but node_modules
    // (the snapshots keep `.git`, the zips leave it out). No automatic
    // `git gc`: it would pack the 7,000 loose objects in the background
    // while the runs go on, and the runs would not see the same tree.
    sh(
        &proj,
        "printf 'node_modules/\\n' > .gitignore && git init -q && git add -A && \
         git -c gc.auto=0 -c user.email=bench@example.com -c user.name=bench commit -q -m tree",
        // The folder belongs to the project's user, not to this process.
        &[
            ("GIT_CONFIG_COUNT".into(), "1".into()),
            ("GIT_CONFIG_KEY_0".into(), "safe.directory".into()),
            ("GIT_CONFIG_VALUE_0".into(), "*".into()),
        ],
    )?;
    eprintln!(
        "generated tree and its .git in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The project's agent may run as the project's own user.
    sh(
        &proj,
        &format!("chown -R --reference={0} {0}", proj.display()),
        &[],
    )?;
    // Both sides start from a warm page cache.
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find {} -type f -exec cat {{}} + > /dev/null",
            proj.display()
        ))
        .status()?;

    let aws_env = aws_env(&s3);
    let mut snap_up = Vec::new();
    let mut snap_again = Vec::new();
    let mut cli_up = Vec::new();
    let mut snap_down = Vec::new();
    let mut cli_down = Vec::new();
    let mut uploaded = (0u64, 0u64);
    let mut zip_size = 0u64;
    let mut first_requests = 0usize;
    for run in 0..args.runs {
        // zip -r + aws s3 cp, of the tree without node_modules and .git.
        let zip_path = work.join(format!("cli-{run}.zip"));
        let _ = std::fs::remove_file(&zip_path);
        let t = Instant::now();
        sh(
            &proj,
            &format!(
                "zip -r -q {} . -x '*node_modules/*' '*.git/*' '*__pycache__/*'",
                zip_path.display()
            ),
            &aws_env,
        )?;
        sh(
            &work,
            &format!(
                "aws s3 cp --only-show-errors {} s3://{BUCKET}/cli-{run}.zip",
                zip_path.display()
            ),
            &aws_env,
        )?;
        cli_up.push(t.elapsed());
        zip_size = std::fs::metadata(&zip_path)?.len();

        // Hibernation: a snapshot of everything, node_modules and .git
        // included. Each run's is a first one: a new project holding a copy
        // of the tree (the copy is not timed), so no earlier snapshot helps.
        let name = format!("first{run}");
        gw.open_project(&name).await?;
        let copy = gw.project_dir(&name);
        sh(
            &work,
            &format!(
                "o=$(stat -c %u:%g {1}) && cp -a {0}/. {1}/ && chown -R $o {1} && find {1} -type f -exec cat {{}} + > /dev/null",
                proj.display(),
                copy.display()
            ),
            &[],
        )?;
        let entries = walk_files(&copy)?.len();
        eprintln!("run {run}: {name} holds {entries} files");
        let requests_before = s3.requests()?;
        let t = Instant::now();
        let p = hibernate_project(&gw, &name).await?;
        snap_up.push(t.elapsed());
        if run == 0 {
            first_requests = s3.requests()? - requests_before;
        }
        let up = p["snapshot"]["uploaded_bytes"].as_u64().unwrap_or(0);
        if run == 0 {
            uploaded.0 = up;
        }
        if p["snapshot"]["files"].as_u64() < Some(stats.files as u64) {
            bail!("snapshot holds fewer files than the tree: {p}");
        }
        // The user's sequence: open the project hibernated a moment ago, on
        // what the hibernation left on the disk.
        let t = Instant::now();
        open_project(&gw, &name).await?;
        snap_down.push(t.elapsed());
        // Nothing changed since the restore.
        let t = Instant::now();
        let p = hibernate_project(&gw, &name).await?;
        snap_again.push(t.elapsed());
        uploaded.1 = p["snapshot"]["uploaded_bytes"].as_u64().unwrap_or(0);
        let r = gw.delete(&format!("/api/projects/{name}")).send().await?;
        if !r.status().is_success() {
            bail!("delete {name}: {} {}", r.status(), r.text().await?);
        }

        // aws s3 cp + unzip.
        let dl = work.join(format!("dl-{run}.zip"));
        let out = work.join(format!("restore-cli-{run}"));
        let t = Instant::now();
        sh(
            &work,
            &format!(
                "aws s3 cp --only-show-errors s3://{BUCKET}/cli-{run}.zip {}",
                dl.display()
            ),
            &aws_env,
        )?;
        sh(
            &work,
            &format!("unzip -q {} -d {}", dl.display(), out.display()),
            &aws_env,
        )?;
        cli_down.push(t.elapsed());
        std::fs::remove_dir_all(&out)?;
        std::fs::remove_file(&dl)?;
        std::fs::remove_file(&zip_path)?;
        eprintln!(
            "run {run}: hibernate {:.2}s, zip+cp {:.2}s, open {:.2}s, cp+unzip {:.2}s, unchanged hibernate {:.2}s",
            snap_up[run].as_secs_f64(),
            cli_up[run].as_secs_f64(),
            snap_down[run].as_secs_f64(),
            cli_down[run].as_secs_f64(),
            snap_again[run].as_secs_f64()
        );
    }
    let (su, cu, sd, cd, sa) = (
        median(&snap_up),
        median(&cli_up),
        median(&snap_down),
        median(&cli_down),
        median(&snap_again),
    );
    let runs = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report.push(format!(
        "| first hibernation of a project (snapshot of everything, {:.1} MB uploaded) vs `zip -r` + `aws s3 cp` without node_modules and .git (zip {:.1} MB) | {:.2} s vs {:.2} s: **{:.1}x** (runs: {} s vs {} s) |",
        uploaded.0 as f64 / 1e6,
        zip_size as f64 / 1e6,
        su.as_secs_f64(),
        cu.as_secs_f64(),
        cu.as_secs_f64() / su.as_secs_f64(),
        runs(&snap_up),
        runs(&cli_up)
    ));
    report.push(format!(
        "| hibernate with nothing changed (right after the open below) | {:.2} s (runs: {} s), {} bytes uploaded |",
        sa.as_secs_f64(),
        runs(&snap_again),
        uploaded.1
    ));
    report.push(format!(
        "| open (restore of everything, right after the first hibernation) vs `aws s3 cp` + `unzip` of the smaller zip | {:.2} s vs {:.2} s: **{:.1}x** (runs: {} s vs {} s) |",
        sd.as_secs_f64(),
        cd.as_secs_f64(),
        cd.as_secs_f64() / sd.as_secs_f64(),
        runs(&snap_down),
        runs(&cli_down)
    ));

    report.push(format!(
        "| S3 requests of the first hibernation (every request moto logged: HEAD, GET, PUT, LIST) | {first_requests} |"
    ));

    // The incremental cases, each a hibernation then an open of the same
    // project, as a user's day runs them, after a first hibernation (not
    // timed) of the tree.
    hibernate(&gw).await?;
    open(&gw).await?;
    // 10 source files changed (a few bytes appended to each).
    let sources: Vec<PathBuf> = walk_files(&proj)?
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            !s.contains("node_modules") && !s.contains("/.git/") && s.ends_with(".ts")
        })
        .take(10)
        .collect();
    anyhow::ensure!(sources.len() == 10, "the tree has fewer than 10 .ts files");
    let mut ten = Vec::new();
    let mut ten_up = Vec::new();
    for run in 0..args.runs {
        for f in &sources {
            append(f, format!("\n// edit {run}\n").as_bytes())?;
        }
        let t = Instant::now();
        let p = hibernate(&gw).await?;
        ten.push(t.elapsed());
        ten_up.push(p["snapshot"]["uploaded_bytes"].as_u64().unwrap_or(0));
        open(&gw).await?;
    }
    report.push(format!(
        "| hibernate after 10 source files changed | {:.2} s (runs: {}), {} bytes uploaded (median) |",
        median(&ten).as_secs_f64(),
        ten.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>().join(", "),
        {
            ten_up.sort_unstable();
            ten_up[ten_up.len() / 2]
        }
    ));

    // 1 KiB changed inside a 100 MB file: the file goes in (one hibernation
    // uploads it), then 1 KiB in its middle changes.
    let big_path = proj.join("assets/big.bin");
    std::fs::create_dir_all(proj.join("assets"))?;
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let big: Vec<u8> = (0..100_000_000usize)
        .map(|_| {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state as u8
        })
        .collect();
    std::fs::write(&big_path, &big)?;
    drop(big);
    sh(
        &proj,
        &format!("chown -R --reference={0} {0}", proj.display()),
        &[],
    )?;
    let p = hibernate(&gw).await?;
    let big_first = p["snapshot"]["uploaded_bytes"].as_u64().unwrap_or(0);
    open(&gw).await?;
    let mut kib_up = Vec::new();
    let mut kib_t = Vec::new();
    for run in 0..args.runs {
        {
            use std::io::{Seek as _, SeekFrom, Write as _};
            let mut f = std::fs::OpenOptions::new().write(true).open(&big_path)?;
            f.seek(SeekFrom::Start(50_000_000 + run as u64 * 4096))?;
            f.write_all(&[b'k' + run as u8; 1024])?;
        }
        let t = Instant::now();
        let p = hibernate(&gw).await?;
        kib_t.push(t.elapsed());
        kib_up.push(p["snapshot"]["uploaded_bytes"].as_u64().unwrap_or(0));
        open(&gw).await?;
    }
    report.push(format!(
        "| 1 KiB changed inside a 100 MB file (random bytes; its first hibernation uploaded {:.1} MB) | uploaded per run: {} bytes; hibernate {} s |",
        big_first as f64 / 1e6,
        kib_up.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "),
        kib_t.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>().join(", "),
    ));

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(agent.0.id())?;
    report.push(format!(
        "| agent RSS, idle after start | {:.1} MiB |",
        rss_fresh as f64 / 1024.0
    ));
    report.push(format!(
        "| agent RSS, idle after the benchmark | {:.1} MiB |",
        rss_after as f64 / 1024.0
    ));
    report.push(format!(
        "| release binary size (`target/release/agent`) | {:.1} MB ({binary_size} bytes) |",
        binary_size as f64 / 1e6
    ));

    println!(
        "Tree: {} files, {:.1} MB (94% source-like text, 6% random binary assets), plus {} files in node_modules and a `.git` of one commit of the rest (both in snapshots, left out of the zips). Median of {} runs.\n",
        stats.files,
        stats.bytes as f64 / 1e6,
        stats.node_modules_files,
        args.runs
    );
    println!("| measure | result |\n| --- | --- |");
    for line in report {
        println!("{line}");
    }
    Ok(())
}

fn machine(report: &mut Vec<String>) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    report.push(format!("| machine | {cores} cores, {cpu} |"));
}

async fn start_agent(bin: &Path, root: &Path) -> Result<(tests::Proc, u16)> {
    let port = tests::free_port();
    let child = Command::new(bin)
        .arg("--root")
        .arg(root)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("AGENT_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("spawn agent")?;
    let proc = tests::Proc(child);
    tests::eventually(Duration::from_secs(20), "agent to listen", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await?;
    Ok((proc, port))
}

async fn channel(port: u16) -> Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .tcp_nodelay(true)
            .connect()
            .await?,
    )
}

async fn read(fs: &mut FilesystemClient<Channel>, path: &str) -> Result<u64> {
    let mut stream = fs
        .read(tests::authed(
            ReadRequest {
                path: path.into(),
                offset: 0,
                length: 0,
            },
            TOKEN,
        ))
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(m) = stream.message().await? {
        if let Some(proto::v1::read_response::Event::Data(d)) = m.event {
            n += d.len() as u64;
        }
    }
    Ok(n)
}

async fn write(fs: &mut FilesystemClient<Channel>, path: &str, data: Vec<u8>) -> Result<()> {
    let msgs = vec![
        WriteRequest {
            msg: Some(write_request::Msg::Start(WriteStart {
                path: path.into(),
                make_parents: true,
                ..Default::default()
            })),
        },
        WriteRequest {
            msg: Some(write_request::Msg::Data(data)),
        },
    ];
    fs.write(tests::authed(futures::stream::iter(msgs), TOKEN))
        .await?;
    Ok(())
}

async fn write_chunked(
    fs: &mut FilesystemClient<Channel>,
    path: &str,
    data: &[u8],
    chunk: usize,
) -> Result<()> {
    let start = WriteRequest {
        msg: Some(write_request::Msg::Start(WriteStart {
            path: path.into(),
            make_parents: true,
            ..Default::default()
        })),
    };
    let chunks: Vec<Vec<u8>> = data.chunks(chunk).map(<[u8]>::to_vec).collect();
    let msgs = std::iter::once(start).chain(chunks.into_iter().map(|c| WriteRequest {
        msg: Some(write_request::Msg::Data(c)),
    }));
    fs.write(tests::authed(futures::stream::iter(msgs), TOKEN))
        .await?;
    Ok(())
}

/// Runs `op` up to `n` times (at most ~20 s) one after the other; the
/// latency of each, sorted.
async fn series<F, Fut>(n: usize, mut op: F) -> Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    // Bounded in time too: a slow transport still gives its percentiles.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        op().await?;
        lat.push(t.elapsed());
        if t > deadline {
            break;
        }
    }
    lat.sort();
    Ok(lat)
}

/// `tasks` tasks each running `op` `per_task` times; total ops and seconds.
async fn concurrent<F, Fut>(
    tasks: usize,
    per_task: usize,
    fs: &FilesystemClient<Channel>,
    op: F,
) -> Result<(usize, f64)>
where
    F: Fn(FilesystemClient<Channel>, usize, usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let futs: Vec<Fut> = (0..per_task).map(|i| op(fs.clone(), task, i)).collect();
        set.spawn(async move {
            for f in futs {
                f.await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok((tasks * per_task, t.elapsed().as_secs_f64()))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i]
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?)
}

fn aws_env(s3: &Moto) -> Vec<(String, String)> {
    let mut env = s3.env();
    env.push(("AWS_DEFAULT_REGION".into(), tests::S3_REGION.into()));
    env
}

/// moto (S3) on loopback, its request log in a file so that the benchmark
/// can count the requests of one operation.
struct Moto {
    endpoint: String,
    log: PathBuf,
    _proc: tests::Proc,
}

impl Moto {
    async fn start(work: &Path) -> Result<Moto> {
        let port = tests::free_port();
        let log = work.join("moto.log");
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            // Each request's log line reaches the file when it is served.
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("start moto (pip install 'moto[server]')")?;
        let proc = tests::Proc(child);
        tests::eventually(Duration::from_secs(30), "moto to listen", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await?;
        Ok(Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            _proc: proc,
        })
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", tests::S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", tests::S3_SECRET_KEY),
            ("AWS_REGION", tests::S3_REGION),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn create_bucket(&self, bucket: &str) -> Result<()> {
        let status = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{}/{bucket}", self.endpoint)])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "cannot create bucket {bucket}");
        Ok(())
    }

    /// Requests served so far (one access-log line each).
    fn requests(&self) -> Result<usize> {
        Ok(std::fs::read_to_string(&self.log)?
            .lines()
            .filter(|l| l.contains(" HTTP/1.1\" "))
            .count())
    }
}

/// Every regular file under `dir`, sorted.
fn walk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn append(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(data)?;
    Ok(())
}

fn sh(dir: &Path, cmd: &str, env: &[(String, String)]) -> Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .status()
        .with_context(|| format!("run {cmd}"))?;
    if !status.success() {
        bail!("{cmd}: {status}");
    }
    Ok(())
}

async fn hibernate(gw: &tests::gateway::Gateway) -> Result<serde_json::Value> {
    hibernate_project(gw, "bench").await
}

async fn hibernate_project(gw: &tests::gateway::Gateway, name: &str) -> Result<serde_json::Value> {
    let r = gw
        .post(&format!("/api/projects/{name}/hibernate"))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("hibernate: {} {}", r.status(), r.text().await?);
    }
    Ok(r.json().await?)
}

async fn open(gw: &tests::gateway::Gateway) -> Result<()> {
    open_project(gw, "bench").await
}

async fn open_project(gw: &tests::gateway::Gateway, name: &str) -> Result<()> {
    let r = gw
        .post(&format!("/api/projects/{name}/open"))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("open: {} {}", r.status(), r.text().await?);
    }
    Ok(())
}
