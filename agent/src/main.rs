//! The `agent` binary: parse the config, start tracing, then either act as
//! init (PID 1, see `agent::init`) or serve until SIGTERM.

use clap::Parser;

fn main() -> std::process::ExitCode {
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
    // The init-container step of a dev pod: copy, and nothing else (as PID 1
    // of its container it must not become the init either).
    if let Some(to) = &config.copy_to {
        return match agent::copy_self(to) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("agent: {error:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    agent::init_tracing(&config);
    // Project files are made with the usual modes (the local gateway runs
    // with umask 077 and the agent inherits it).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    // Not dumpable: another process of the same user (a project's shell)
    // can neither attach to the agent nor read its memory or
    // `/proc/<pid>/environ`. The agent's children become dumpable again at
    // their exec, as usual.
    if let Err(error) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("agent: cannot make the process non-dumpable: {error}");
        return std::process::ExitCode::FAILURE;
    }
    if agent::init::should_run(config.init) {
        return agent::init::run();
    }
    if let Err(error) = agent::init::child_setup() {
        eprintln!("agent: {error:#}");
        return std::process::ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("agent: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(agent::serve(config)) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("agent: {error:#}");
            1
        }
    };
    // Exit without dropping the runtime: dropping it would wait for every
    // blocking task, and a PTY reader blocked on a terminal may never return.
    std::process::exit(code)
}

/// The C library's `pow`, defined in the agent so that it never loads libm.
/// Tokio's scheduler (its poll-time average) is the binary's one import from
/// libm, and a loaded libm is ~0.6 MB of the idle agent's resident memory
/// (the loader runs its IFUNC resolvers, spread over its code); with `pow`
/// defined here the linker (`--as-needed`) leaves libm out. Should another
/// libm function be imported one day, libm is simply linked again.
#[allow(unsafe_code)]
// SAFETY: `no_mangle` exports this as the C symbol `pow`, which then stands
// for libm's in the whole process. It has C's signature
// (`double pow(double, double)`) and C's contract: the `libm` crate is a port
// of musl's `pow`, a pure function of its arguments.
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}
