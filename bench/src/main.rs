//! `bench-agent`: measures the release agent on loopback against the tools
//! it replaces, and prints a Markdown report for BENCHMARKS.md. It starts
//! moto (S3) and the agent (TCP on 127.0.0.1), then measures 4 KiB reads and
//! writes (one connection: p50/p99; 64 concurrent: ops/s), 100 MiB streamed
//! read and write, archive+upload against `zip -r` + `aws s3 cp`,
//! download+extract against `aws s3 cp` + `unzip`, idle RSS and binary size.

mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use proto::v1::archive_client::ArchiveClient;
use proto::v1::filesystem_client::FilesystemClient;
use proto::v1::{
    ExtractFromS3Request, ReadRequest, S3Location, UploadArchiveRequest, WriteRequest, WriteStart,
    write_request,
};
use tonic::transport::Channel;

/// Benchmarks the release agent; run through `bench/run.sh`.
#[derive(Debug, Parser)]
#[command(name = "bench-agent", about)]
struct Args {
    /// Work directory (trees, zips); default: a new temporary directory.
    #[arg(long, env = "BENCH_DIR")]
    dir: Option<PathBuf>,
    /// Separate directory for the archive comparisons (tree, zips, restores),
    /// served by a second agent, e.g. on tmpfs when the disk is short.
    #[arg(long, env = "BENCH_ARCHIVE_DIR")]
    archive_dir: Option<PathBuf>,
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
    /// Remove each restored tree right after its timed step (the method
    /// before 2026-11-25 15:00), so the next extract runs just after 5,000
    /// files were freed: what a restore soon after a hibernation meets.
    #[arg(long)]
    delete_between: bool,
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

    let s3 = tests::S3Server::start().await?;
    s3.create_bucket(BUCKET).await?;

    let agent_bin = tests::bin("agent");
    let binary_size = std::fs::metadata(&agent_bin)?.len();
    let (agent, port) = start_agent(&agent_bin, &root, &s3).await?;
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

    // --- archives
    let (work, root, ch, _archive_agent) = match &args.archive_dir {
        Some(dir) => {
            let root = dir.join("root");
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root)?;
            let (a, port) = start_agent(&agent_bin, &root, &s3).await?;
            (dir.clone(), root, channel(port).await?, Some(a))
        }
        None => (work.clone(), root.clone(), ch.clone(), None),
    };
    let proj = root.join("proj");
    let t = Instant::now();
    let stats = tree::generate(
        &proj,
        args.files,
        args.tree_mb * 1_000_000,
        args.node_modules_files,
    )?;
    eprintln!("generated tree in {:.1} s", t.elapsed().as_secs_f64());
    // Both sides start from a warm page cache.
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find {} -type f -exec cat {{}} + > /dev/null",
            proj.display()
        ))
        .status()?;

    let mut archive = ArchiveClient::new(ch.clone());
    let aws_env = aws_env(&s3);
    let mut agent_up = Vec::new();
    let mut cli_up = Vec::new();
    let mut agent_down = Vec::new();
    let mut cli_down = Vec::new();
    let mut agent_on_zip = Vec::new();
    let mut sizes = (0u64, 0u64);
    let mut restored = Vec::new();
    for run in 0..args.runs {
        // Agent: archive + multipart upload in one call.
        let t = Instant::now();
        let s = archive
            .upload(tests::authed(
                UploadArchiveRequest {
                    options: Some(proto::v1::ArchiveOptions {
                        path: "proj".into(),
                        ..Default::default()
                    }),
                    location: Some(S3Location {
                        bucket: BUCKET.into(),
                        key: format!("agent-{run}.zip"),
                    }),
                },
                TOKEN,
            ))
            .await?
            .into_inner();
        agent_up.push(t.elapsed());
        sizes.0 = s.size;
        if s.files != stats.files as u64 {
            bail!("agent archived {} files, expected {}", s.files, stats.files);
        }

        // zip -r + aws s3 cp.
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
        sizes.1 = std::fs::metadata(&zip_path)?.len();

        // Agent: ranged parallel download + checked parallel extract.
        let dest = format!("restore-agent-{run}");
        let t = Instant::now();
        let x = archive
            .extract_from_s3(tests::authed(
                ExtractFromS3Request {
                    path: dest.clone(),
                    location: Some(S3Location {
                        bucket: BUCKET.into(),
                        key: format!("agent-{run}.zip"),
                    }),
                },
                TOKEN,
            ))
            .await?
            .into_inner();
        agent_down.push(t.elapsed());
        if x.files != stats.files as u64 {
            bail!(
                "agent extracted {} files, expected {}",
                x.files,
                stats.files
            );
        }
        // Restored trees are removed only after the last run: ext4 searches
        // past recently freed inodes when it allocates new ones, so a timed
        // extract right after removing 5,000 files measured the removal too
        // (both tools slowed 2-4x over consecutive runs).
        restored.push(root.join(&dest));
        if args.delete_between {
            clear(&mut restored)?;
        }

        // The agent on the archive zip -r made (same input as unzip's).
        let dest = format!("restore-agent-zip-{run}");
        let t = Instant::now();
        archive
            .extract_from_s3(tests::authed(
                ExtractFromS3Request {
                    path: dest.clone(),
                    location: Some(S3Location {
                        bucket: BUCKET.into(),
                        key: format!("cli-{run}.zip"),
                    }),
                },
                TOKEN,
            ))
            .await?;
        agent_on_zip.push(t.elapsed());
        restored.push(root.join(&dest));
        if args.delete_between {
            clear(&mut restored)?;
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
        restored.push(out);
        if args.delete_between {
            clear(&mut restored)?;
        }
        std::fs::remove_file(&dl)?;
        std::fs::remove_file(&zip_path)?;
        eprintln!(
            "run {run}: agent up {:.2}s, zip+cp {:.2}s, agent down {:.2}s, cp+unzip {:.2}s",
            agent_up[run].as_secs_f64(),
            cli_up[run].as_secs_f64(),
            agent_down[run].as_secs_f64(),
            cli_down[run].as_secs_f64()
        );
    }
    clear(&mut restored)?;
    let (au, cu, ad, cd, az) = (
        median(&agent_up),
        median(&cli_up),
        median(&agent_down),
        median(&cli_down),
        median(&agent_on_zip),
    );
    report.push(format!(
        "| archive + upload: agent (zip {:.1} MB) vs `zip -r` + `aws s3 cp` (zip {:.1} MB) | {:.2} s vs {:.2} s: **{:.1}x** |",
        sizes.0 as f64 / 1e6,
        sizes.1 as f64 / 1e6,
        au.as_secs_f64(),
        cu.as_secs_f64(),
        cu.as_secs_f64() / au.as_secs_f64()
    ));
    report.push(format!(
        "| download + extract: agent vs `aws s3 cp` + `unzip` | {:.2} s vs {:.2} s: **{:.1}x** |",
        ad.as_secs_f64(),
        cd.as_secs_f64(),
        cd.as_secs_f64() / ad.as_secs_f64()
    ));
    report.push(format!(
        "| download + extract by the agent of the `zip -r` archive | {:.2} s ({:.1}x `aws s3 cp` + `unzip`) |",
        az.as_secs_f64(),
        cd.as_secs_f64() / az.as_secs_f64()
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
        "Tree: {} files, {:.1} MB (94% source-like text, 6% random binary assets), plus {} files in node_modules (excluded). Median of {} runs.\n",
        stats.files,
        stats.bytes as f64 / 1e6,
        stats.node_modules_files,
        args.runs
    );
    println!("| measure | result |\n| --- | --- |");
    for line in report {
        println!("{line}");
    }
    if args.archive_dir.is_some() {
        std::fs::remove_dir_all(&root)?;
    }
    Ok(())
}

/// Removes the restored trees listed so far.
fn clear(restored: &mut Vec<PathBuf>) -> Result<()> {
    for dir in restored.drain(..) {
        std::fs::remove_dir_all(dir)?;
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

async fn start_agent(bin: &Path, root: &Path, s3: &tests::S3Server) -> Result<(tests::Proc, u16)> {
    let port = tests::free_port();
    let child = Command::new(bin)
        .arg("--root")
        .arg(root)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("AGENT_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .envs(s3.env())
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

fn aws_env(s3: &tests::S3Server) -> Vec<(String, String)> {
    let mut env = s3.env();
    env.push(("AWS_DEFAULT_REGION".into(), tests::S3_REGION.into()));
    env
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
