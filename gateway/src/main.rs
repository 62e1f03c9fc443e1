//! The `gateway` binary: parse and validate the config, start tracing, bind,
//! serve until SIGTERM/SIGINT.

use clap::Parser as _;

// Every proxied request and file read allocates headers, buffers and futures.
// In a perf profile of the preview benchmark, glibc's malloc and free took
// about 8.6% of the gateway's samples; with mimalloc about 4%.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(error) => {
            eprintln!("gateway: cannot listen on {}: {error}", config.listen);
            return std::process::ExitCode::FAILURE;
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
