//! The `gateway` binary: parse and validate the config, start tracing, bind,
//! serve until SIGTERM/SIGINT.

use clap::Parser as _;

// Every proxied request and file read allocates headers, buffers and futures.
// In a perf profile of the preview benchmark, glibc's malloc and free took
// about 8.6% of the gateway's samples; with mimalloc about 4%.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Raises the soft limit of open files to the hard one: every client
/// connection is a descriptor (an upgraded preview connection two), and the
/// default soft limit (1024) is far below `--max-connections`.
fn raise_open_files_limit(max_connections: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(%error, "cannot raise the open files limit");
        }
    }
    let current = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if current < max_connections.saturating_mul(2) {
        tracing::warn!(
            open_files = current,
            max_connections,
            "the open files limit is below twice --max-connections; connections beyond it fail at accept"
        );
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match gateway::Config::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // One clear line, not clap's multi-line usage dump.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("gateway: {}", first.trim_start_matches("error: "));
            return std::process::ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
    };
    if let Err(msg) = config.validate() {
        eprintln!("gateway: {msg}");
        return std::process::ExitCode::from(2);
    }
    gateway::init_tracing(&config);
    // Everything the gateway creates (state, archives, templates, homes) is
    // its own user's alone unless made otherwise on purpose: with a user
    // per project, the data dir is searchable by them. Agents set their own
    // umask back to 022 for the project's files.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    raise_open_files_limit(config.max_connections);
    // The process is not dumpable: another process of the same user (a
    // project's shell in the local runtime) cannot read its memory or
    // `/proc/<pid>/environ`, where `GATEWAY_SECRET` and S3 keys may be.
    if let Err(error) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(%error, "cannot make the gateway non-dumpable");
    }
    if std::env::args().any(|a| a == "--secret" || a.starts_with("--secret=")) {
        // `/proc/<pid>/cmdline` is readable by every process on the machine.
        tracing::warn!(
            "--secret on the command line is readable by every local process; use GATEWAY_SECRET or --secret-file"
        );
    }
    if config.secret.as_ref().is_some_and(|s| s.len() < 16) {
        // Allowed (tests and demos use short ones), but worth a word.
        tracing::warn!("--secret is shorter than 16 bytes; use a long random one in production");
    }
    // A port still held for a moment (a previous process ending, another
    // one's brief use of it) is tried again, five times half a second apart,
    // as nginx does, before giving up.
    let mut tries = 0;
    let listener = loop {
        match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => break l,
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && tries < 5 => {
                tries += 1;
                tracing::warn!(%error, listen = %config.listen, "address in use; trying again in 0.5 s");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(error) => {
                eprintln!("gateway: cannot listen on {}: {error}", config.listen);
                return std::process::ExitCode::FAILURE;
            }
        }
    };
    match gateway::run(listener, config, gateway::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
