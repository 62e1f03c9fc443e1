//! PID 1 duty: a tini-style init in front of the server.
//!
//! As PID 1 (or with `--init`), the agent does not serve itself: it starts
//! itself again (same executable, same arguments, plus [`CHILD_ENV`]) as its
//! only direct child, reaps every process that gets re-parented to it with
//! `waitpid(-1)`, forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and
//! SIGUSR2 to the server, and exits with the server's exit code.
//!
//! Why two processes: a `waitpid(-1)` reaper in the server process would race
//! the process module, which waits for each child it spawned to get its exit
//! status; a reaper that steals such a status loses a user's exit code. In
//! the split, the server's own children stay the server's, and only orphans
//! (double-forked daemons, grandchildren of killed shells) reach the init.
//! Outside PID 1 the init also makes itself a child subreaper, so `--init`
//! behaves the same in tests as in a pod.

use std::process::ExitCode;

use rustix::process::{Pid, Signal, WaitOptions};
use tokio::signal::unix::{SignalKind, signal};

/// Set in the server child's environment (to the init's pid) so it serves
/// instead of re-spawning.
pub(crate) const CHILD_ENV: &str = "AGENT_INIT_CHILD";

/// In the server child of an init: ask for SIGTERM when the init dies, so a
/// killed init (SIGKILL) does not leave the server running unsupervised.
pub fn child_setup() -> anyhow::Result<()> {
    let Some(init) = std::env::var_os(CHILD_ENV) else {
        return Ok(());
    };
    rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
    // The init may have died before the line above: then our parent changed.
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get().to_string());
    anyhow::ensure!(
        parent.as_deref() == init.to_str(),
        "the init that started this server is gone"
    );
    Ok(())
}

/// Whether this process should be the init: PID 1 or `--init`, unless it is
/// already the server child of an init.
pub fn should_run(flag: bool) -> bool {
    std::env::var_os(CHILD_ENV).is_none() && (flag || std::process::id() == 1)
}

/// Runs the init until the server child exits; returns the child's code
/// (128 + signal number when a signal ended it).
pub fn run() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("agent: cannot start the init runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(supervise()) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("agent: init: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn supervise() -> anyhow::Result<u8> {
    use anyhow::Context as _;
    if std::process::id() != 1 {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .context("cannot become a child subreaper")?;
    }
    // Handlers first, so that no SIGCHLD or SIGTERM between the spawn and
    // the loop is lost (as PID 1, an unhandled SIGTERM is simply dropped).
    let mut chld = signal(SignalKind::child())?;
    let forwarded = [
        (SignalKind::terminate(), Signal::TERM),
        (SignalKind::interrupt(), Signal::INT),
        (SignalKind::hangup(), Signal::HUP),
        (SignalKind::quit(), Signal::QUIT),
        (SignalKind::user_defined1(), Signal::USR1),
        (SignalKind::user_defined2(), Signal::USR2),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (kind, sig) in forwarded {
        let mut stream = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        });
    }

    let exe = std::env::current_exe().context("cannot find the agent executable")?;
    let child = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(CHILD_ENV, std::process::id().to_string())
        .spawn()
        .context("cannot start the agent server")?;
    let server = Pid::from_child(&child);
    // The child is reaped below by waitpid(-1), never through `child`.
    drop(child);
    tracing::debug!(
        pid = server.as_raw_nonzero().get(),
        "init started the agent server"
    );

    loop {
        if let Some(code) = reap(server) {
            // Orphans that are still running keep running; as PID 1 our exit
            // ends the container and the kernel kills them anyway.
            return Ok(code);
        }
        tokio::select! {
            _ = chld.recv() => {}
            Some(sig) = rx.recv() => {
                tracing::info!(signal = sig.as_raw(), "forwarding signal to the agent server");
                if let Err(error) = rustix::process::kill_process(server, sig) {
                    tracing::warn!(%error, "cannot forward signal");
                }
            }
        }
    }
}

/// Reaps every exited child; returns the server's exit code once it is gone.
fn reap(server: Pid) -> Option<u8> {
    let mut server_code = None;
    loop {
        // `wait`, i.e. waitpid(-1): any child. (rustix's `waitpid(None, ..)`
        // is waitpid(0), our own process group only, which orphans are not in.)
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => {
                if pid == server {
                    let code = match (status.exit_status(), status.terminating_signal()) {
                        (Some(c), _) => c,
                        (None, Some(s)) => 128 + s,
                        (None, None) => 1,
                    };
                    server_code = Some(u8::try_from(code).unwrap_or(1));
                } else {
                    tracing::debug!(pid = pid.as_raw_nonzero().get(), "reaped orphan");
                }
            }
            // No exited child right now (None), or no children at all (ECHILD).
            Ok(None) | Err(_) => return server_code,
        }
    }
}
