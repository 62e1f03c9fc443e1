//! The `agent` binary: parse the config, start tracing, bind, serve until SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match agent::Config::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // One clear line, not clap's multi-line usage dump.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("agent: {}", first.trim_start_matches("error: "));
            return std::process::ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
    };
    agent::init_tracing(&config);
    match agent::serve(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("agent: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
