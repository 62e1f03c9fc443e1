//! The Git service: `git clone` into a directory of the root, with progress
//! lines streamed to the caller. The clone goes into a hidden staging
//! directory and is renamed into place only when it succeeded, so a failed
//! or cancelled clone leaves no directory behind.

use std::collections::HashMap;
use std::io;
use std::process::{ExitStatus, Stdio};

use cap_fs_ext::DirExt as _;
use cap_std::fs::Dir;
use proto::v1::git_server::Git;
use proto::v1::{CloneDone, CloneRequest, CloneResponse, clone_response};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::State;
use crate::error::{Error, Result};
use devgate_fs::Root;

/// Lines of git's stderr kept to explain a failure.
const KEEP_LINES: usize = 8;

pub(crate) struct GitService {
    state: State,
}

impl GitService {
    pub(crate) fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Git for GitService {
    async fn clone(
        &self,
        request: Request<CloneRequest>,
    ) -> Result<Response<BoxStream<CloneResponse>>, Status> {
        let req = request.into_inner();
        let rel = Root::clean(&req.dir).map_err(Error::from)?;
        if rel.is_empty() {
            return Err(
                Error::InvalidArgument("dir must name a directory inside the root".into()).into(),
            );
        }
        check_ref(&req.r#ref)?;
        check_url(&req.url, &self.state.root)?;
        target_is_free(&self.state.root, &rel)?;

        let (tx, rx) = mpsc::channel(16);
        let state = self.state.clone();
        self.state.tasks.spawn(async move {
            let staging = format!(
                "{}{}",
                devgate_fs::temp::CLONE_PREFIX,
                uuid::Uuid::new_v4().simple()
            );
            let res = tokio::select! {
                res = run_clone(&state, &req, &rel, &staging, &tx) => res,
                _ = tx.closed() => Err(Error::Unavailable("clone cancelled by the caller".into())),
                _ = state.shutdown.cancelled() => Err(Error::Unavailable("agent shutting down".into())),
            };
            // Dropping `run_clone` killed git (kill_on_drop); what it wrote goes.
            if res.is_err() {
                let root = state.root.clone();
                let staging = staging.clone();
                let _ = tokio::task::spawn_blocking(move || remove_all(root.dir(), &staging)).await;
            }
            let msg = match res {
                Ok(done) => {
                    tracing::info!(dir = %rel, commit = %done.commit, files = done.files, "cloned");
                    Ok(CloneResponse { event: Some(clone_response::Event::Done(done)) })
                }
                Err(e) => {
                    tracing::info!(error = %e, dir = %rel, "clone failed");
                    Err(Status::from(e))
                }
            };
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn run_clone(
    state: &State,
    req: &CloneRequest,
    rel: &str,
    staging: &str,
    tx: &mpsc::Sender<Result<CloneResponse, Status>>,
) -> Result<CloneDone> {
    let root = &state.root;
    let mut argv: Vec<String> = ["git", "clone", "--progress"].map(String::from).into();
    if req.shallow {
        argv.extend(["--depth".into(), "1".into()]);
    }
    if !req.r#ref.is_empty() {
        argv.extend(["--branch".into(), req.r#ref.clone()]);
    }
    argv.extend(["--".into(), req.url.clone(), staging.to_owned()]);

    let (status, tail) = run_git(&argv, root, rel, staging, Some(tx)).await?;
    if !status.success() {
        return Err(Error::FailedPrecondition(format!(
            "git clone failed: {}",
            tail.join(" | ")
        )));
    }

    let argv: Vec<String> = ["git", "-C", staging, "rev-parse", "HEAD"]
        .map(String::from)
        .into();
    let (out, status) = capture_git(&argv, root).await?;
    if !status.success() {
        return Err(Error::Internal(
            "git rev-parse HEAD failed after clone".into(),
        ));
    }
    let commit = out.trim().to_owned();

    let root2 = root.clone();
    let (staging2, rel2, drop_git) = (staging.to_owned(), rel.to_owned(), req.drop_git_dir);
    let files = tokio::task::spawn_blocking(move || -> Result<u64> {
        let dir = root2.dir().open_dir_nofollow(&staging2)?;
        if drop_git {
            remove_all(&dir, ".git")?;
        }
        let files = count_files(&dir, true)?;
        // The target was free before the clone; an empty directory there is
        // replaced, anything else is a conflict.
        target_is_free(&root2, &rel2)?;
        if let Ok(m) = root2.dir().symlink_metadata(&rel2)
            && m.is_dir()
        {
            root2
                .dir()
                .remove_dir(&rel2)
                .map_err(|e| crate::error::io_error(&rel2, e))?;
        }
        let (parent, name) = root2.open_parent(&rel2, true).map_err(Error::from)?;
        root2
            .dir()
            .rename(&staging2, &parent, &name)
            .map_err(|e| crate::error::io_error(&rel2, e))?;
        Ok(files)
    })
    .await
    .map_err(|e| Error::Internal(format!("clone task failed: {e}")))??;
    Ok(CloneDone { commit, files })
}

/// Runs git with stderr piped; each progress line (git separates updates
/// with `\r`) goes to `tx`. Returns the exit status and the last lines.
async fn run_git(
    argv: &[String],
    root: &Root,
    rel: &str,
    staging: &str,
    tx: Option<&mpsc::Sender<Result<CloneResponse, Status>>>,
) -> Result<(ExitStatus, Vec<String>)> {
    let mut cmd = crate::process::command(argv, root.path(), &git_env())?;
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_error)?;
    // git runs helpers (remote-https, index-pack) in its process group: a
    // cancelled clone kills them all, not just git.
    let mut group = crate::process::spawn::GroupGuard::new(child.id());
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::Internal("git stderr not piped".into()))?;
    let mut tail: Vec<String> = Vec::new();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    let mut last_sent = String::new();
    loop {
        let n = stderr.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|&b| b == b'\r' || b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1])
                .trim()
                .replace(staging, rel);
            if line.is_empty() || line == last_sent {
                continue;
            }
            if let Some(tx) = tx {
                let msg = CloneResponse {
                    event: Some(clone_response::Event::Progress(line.clone())),
                };
                // A gone caller is noticed by the select around the clone.
                let _ = tx.send(Ok(msg)).await;
            }
            if tail.len() == KEEP_LINES {
                tail.remove(0);
            }
            tail.push(line.clone());
            last_sent = line;
        }
    }
    let status = child.wait().await?;
    group.disarm();
    Ok((status, tail))
}

async fn capture_git(argv: &[String], root: &Root) -> Result<(String, ExitStatus)> {
    let mut cmd = crate::process::command(argv, root.path(), &git_env())?;
    cmd.stdout(Stdio::piped());
    let out = cmd.output().await.map_err(spawn_error)?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status,
    ))
}

fn spawn_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        Error::Unavailable("git is not installed in the agent's image".into())
    } else {
        Error::Io(e)
    }
}

/// Git must never wait for a password on a terminal nobody sees.
fn git_env() -> HashMap<String, String> {
    HashMap::from([
        ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
        ("GIT_ASKPASS".to_owned(), "true".to_owned()),
        ("LC_ALL".to_owned(), "C".to_owned()),
    ])
}

/// The target must be absent or an empty directory.
fn target_is_free(root: &Root, rel: &str) -> Result<()> {
    match root.dir().symlink_metadata(rel) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(crate::error::io_error(rel, e)),
        Ok(m) if m.is_dir() => {
            let mut entries = root
                .dir()
                .read_dir(rel)
                .map_err(|e| crate::error::io_error(rel, e))?;
            if entries.next().is_some() {
                Err(Error::AlreadyExists(format!("{rel} is not empty")))
            } else {
                Ok(())
            }
        }
        Ok(_) => Err(Error::AlreadyExists(rel.to_owned())),
    }
}

fn check_ref(r: &str) -> Result<()> {
    if r.starts_with('-') || r.contains('\0') || r.chars().any(char::is_whitespace) {
        return Err(Error::InvalidArgument(format!("bad ref {r:?}")));
    }
    Ok(())
}

/// Remote URLs (https, http, ssh, git, `user@host:path`) are allowed. A
/// local repository (`file://`) only when it lies inside the root: a clone
/// must not become a way to read files outside it. Transports that run
/// commands (`ext::`) and option-like URLs are refused.
fn check_url(url: &str, root: &Root) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidArgument(format!("bad url {url:?}: {why}")));
    if url.is_empty() {
        return bad("empty");
    }
    if url.starts_with('-') || url.contains('\0') || url.chars().any(char::is_control) {
        return bad("not a url");
    }
    let lower = url.to_ascii_lowercase();
    for scheme in [
        "https://",
        "http://",
        "ssh://",
        "git://",
        "git+ssh://",
        "ssh+git://",
    ] {
        if lower.starts_with(scheme) {
            return Ok(());
        }
    }
    if let Some(path) = lower
        .strip_prefix("file://")
        .map(|_| &url["file://".len()..])
    {
        let canon = std::fs::canonicalize(path)
            .map_err(|_| Error::InvalidArgument(format!("bad url {url:?}: no such repository")))?;
        return match canon.strip_prefix(root.path()) {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::PathOutsideRoot(format!(
                "{url}: a local repository must lie inside the root"
            ))),
        };
    }
    // scp-like `user@host:path`: a colon before any slash, not a transport.
    if let Some((host, _)) = url.split_once(':')
        && !host.is_empty()
        && !host.contains('/')
        && !url.contains("::")
    {
        return Ok(());
    }
    bad("unsupported transport (use https, ssh, git or file inside the root)")
}

/// Counts regular files and symlinks, never following links; `.git` at the
/// top is not part of the checkout.
fn count_files(dir: &Dir, top: bool) -> io::Result<u64> {
    let mut n = 0;
    for entry in dir.entries()? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if top && entry.file_name() == ".git" {
                continue;
            }
            n += count_files(&entry.open_dir()?, false)?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}

/// Removes a directory tree (or a file) under `dir`; a missing one is fine.
fn remove_all(dir: &Dir, name: &str) -> io::Result<()> {
    match dir.symlink_metadata(name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => dir.remove_dir_all(name),
        Ok(_) => dir.remove_file(name),
    }
}
