//! The one function that builds every child process of the agent, and the
//! signals we send to them.
//!
//! Every module that starts a process (Run, background processes, git, the
//! PTY sessions) goes through here, so that all children get the same
//! environment policy, working-directory check and process-group set-up.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::{Error, Result};
use devgate_fs::Root;

/// Environment variables of the agent itself that no child inherits: the
/// agent's shared token and any S3 credentials of the environment it was
/// started in belong to the platform, not to the user's code running in the
/// project.
const WITHHELD_PREFIXES: &[&str] = &["AGENT_", "AWS_"];

/// In a dev pod (`--start`) the agent's environment is the container's own
/// (its env and its Secret, given by the user) plus the agent's settings:
/// only `AGENT_*` is the platform's there, so `AWS_*` passes to the
/// container's processes as it does in any container.
const WITHHELD_IN_DEV_POD: &[&str] = &["AGENT_"];

static DEV_POD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says the agent runs as PID 1 of a dev pod (`--start`): children inherit
/// the container's environment, `AGENT_*` aside ([`WITHHELD_IN_DEV_POD`]).
pub(crate) fn in_dev_pod() {
    DEV_POD.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn withheld() -> &'static [&'static str] {
    if DEV_POD.load(std::sync::atomic::Ordering::Relaxed) {
        WITHHELD_IN_DEV_POD
    } else {
        WITHHELD_PREFIXES
    }
}

/// Resolves a client-given working directory (relative to the root, `""` =
/// the root) to a host path, refusing anything that leaves the root or is not
/// a directory. Every cwd of every child goes through this.
pub(crate) fn resolve_cwd(root: &Root, cwd: &str) -> Result<PathBuf> {
    let rel = Root::clean(cwd).map_err(Error::from)?;
    Ok(root.host_path(&rel)?)
}

/// Builds the command for `argv` (program and arguments) in `cwd` (a host
/// path already checked by [`resolve_cwd`]) with `env` added on top of the
/// agent's own environment (minus the agent's secrets, see
/// [`WITHHELD_PREFIXES`]).
///
/// The child leads a new process group (its pgid is its pid), so
/// [`signal_group`] reaches it and everything it starts. Stdin, stdout and
/// stderr are `/dev/null` until the caller says otherwise, and the child is
/// killed (SIGKILL, the leader only) if its `Child` handle is dropped before
/// it was waited for: callers that want the whole group gone on every path
/// signal the group themselves.
pub(crate) fn command(
    argv: &[String],
    cwd: &Path,
    env: &HashMap<String, String>,
) -> Result<tokio::process::Command> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::InvalidArgument("argv is empty".into()))?;
    if program.is_empty() {
        return Err(Error::InvalidArgument("argv[0] is empty".into()));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(Error::InvalidArgument("argv contains a NUL byte".into()));
    }
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(child_env(env)?)
        .current_dir(cwd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    Ok(cmd)
}

/// The PTY flavour of [`command`]: the same environment policy and cwd,
/// plus `TERM=xterm-256color`. portable-pty makes the child a session leader
/// with the PTY as its controlling terminal (so its pgid is its pid too).
pub(crate) fn pty_command(
    argv: &[String],
    cwd: &Path,
    env: &HashMap<String, String>,
) -> Result<portable_pty::CommandBuilder> {
    if argv.first().is_none_or(|p| p.is_empty()) {
        return Err(Error::InvalidArgument("argv is empty".into()));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(Error::InvalidArgument("argv contains a NUL byte".into()));
    }
    let child_env = child_env(env)?;
    // portable-pty reports a missing program only as text; look it up
    // ourselves so the client gets a clear InvalidArgument.
    let path = child_env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    if !program_exists(&argv[0], cwd, path.as_deref()) {
        return Err(Error::InvalidArgument(format!(
            "program not found: {}",
            argv[0]
        )));
    }
    let mut cmd =
        portable_pty::CommandBuilder::from_argv(argv.iter().map(OsString::from).collect());
    cmd.env_clear();
    for (k, v) in child_env {
        cmd.env(k, v);
    }
    // The agent's own TERM (if any) describes some other terminal.
    if !env.contains_key("TERM") {
        cmd.env("TERM", "xterm-256color");
    }
    cmd.cwd(cwd);
    Ok(cmd)
}

/// Whether `program` names an executable file: as a path (relative to
/// `cwd`) when it holds a `/`, else found in `path` like `execvp` would.
fn program_exists(program: &str, cwd: &Path, path: Option<&std::ffi::OsStr>) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let is_exe = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return is_exe(&cwd.join(program));
    }
    let path = path.unwrap_or_else(|| std::ffi::OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(path).any(|dir| is_exe(&cwd.join(dir).join(program)))
}

/// The default program of a terminal: `$SHELL`, else `/bin/bash`, else `/bin/sh`.
pub(crate) fn default_shell() -> String {
    if let Ok(shell) = std::env::var("SHELL")
        && !shell.is_empty()
        && Path::new(&shell).exists()
    {
        return shell;
    }
    if Path::new("/bin/bash").exists() {
        "/bin/bash".into()
    } else {
        "/bin/sh".into()
    }
}

/// Kills a process group with SIGKILL when dropped, unless disarmed: a call
/// dropped by its client (a cancelled clone or run) takes the helpers and
/// children it started with it, not just the leader (`kill_on_drop` reaches
/// only the leader).
pub(crate) struct GroupGuard(Option<u32>);

impl GroupGuard {
    /// Guards the group led by `pgid` (a child's id; `None` guards nothing).
    pub(crate) fn new(pgid: Option<u32>) -> GroupGuard {
        GroupGuard(pgid)
    }

    /// The leader ended by itself: leave the group alone.
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = signal_group(pgid, libc::SIGKILL);
        }
    }
}

/// Sends `signal` (a signal number) to the process group `pgid`. An already
/// gone group is not an error.
pub(crate) fn signal_group(pgid: u32, signal: i32) -> Result<()> {
    let pid = pid(pgid)?;
    let sig = rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| Error::InvalidArgument(format!("unknown signal {signal}")))?;
    match rustix::process::kill_process_group(pid, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(Error::Io(e.into())),
    }
}

/// Whether any process (zombies included) is left in the group `pgid`.
pub(crate) fn group_alive(pgid: u32) -> bool {
    match pid(pgid) {
        Ok(p) => rustix::process::test_kill_process_group(p).is_ok(),
        Err(_) => false,
    }
}

fn pid(raw: u32) -> Result<rustix::process::Pid> {
    // pid 0 and negative pids would address our own group or every process.
    i32::try_from(raw)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .filter(|p| p.as_raw_nonzero().get() > 1)
        .ok_or_else(|| Error::InvalidArgument(format!("bad pid {raw}")))
}

/// The agent's environment minus its secrets, with `extra` on top.
fn child_env(extra: &HashMap<String, String>) -> Result<Vec<(OsString, OsString)>> {
    for (k, v) in extra {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "bad environment variable name or value: {k:?}"
            )));
        }
    }
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !withheld().iter().any(|p| k.starts_with(p)) && !extra.contains_key(k.as_ref())
        })
        .collect();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_withholds_secrets_and_adds_extra() {
        let extra = HashMap::from([("FOO".to_owned(), "bar".to_owned())]);
        let env = child_env(&extra).unwrap();
        assert!(env.iter().any(|(k, v)| k == "FOO" && v == "bar"));
        assert!(
            !env.iter()
                .any(|(k, _)| k.to_string_lossy().starts_with("AGENT_"))
        );
        let bad = HashMap::from([("A=B".to_owned(), "x".to_owned())]);
        assert!(child_env(&bad).is_err());
    }

    #[test]
    fn refuses_our_own_group() {
        assert!(signal_group(0, 15).is_err());
        assert!(signal_group(1, 15).is_err());
        assert!(signal_group(u32::MAX, 15).is_err());
    }
}
