//! The gateway's configuration: one clap-derived `Config`, every flag also read
//! from the environment variable beside it, validated before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};

/// The public HTTP/WebSocket API of devgate.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version, about)]
pub struct Config {
    /// Address to serve on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// State store, local project folders and local archives.
    #[arg(long, env = "GATEWAY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// HS256 secret for tokens; when unset a random one is made and kept in the data dir.
    #[arg(long, env = "GATEWAY_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// `local` (projects are folders, the agent a child process) or `kubernetes`.
    #[arg(long, env = "GATEWAY_RUNTIME", value_enum, default_value_t = RuntimeKind::Local)]
    pub runtime: RuntimeKind,

    /// Where hibernation archives go: a folder, or `s3://bucket/prefix`
    /// (default `<data-dir>/archives`).
    #[arg(long, env = "GATEWAY_ARCHIVE")]
    pub archive: Option<String>,

    /// The domain under which preview hosts live.
    #[arg(long, env = "GATEWAY_PREVIEW_DOMAIN", default_value = "localhost")]
    pub preview_domain: String,

    /// `dotted` (`{container}.{project}.{domain}`) or `flat`
    /// (`{container}--{project}.{domain}`, which one wildcard certificate covers).
    #[arg(long, env = "GATEWAY_PREVIEW_HOST_STYLE", value_enum, default_value_t = HostStyle::Dotted)]
    pub preview_host_style: HostStyle,

    /// Port written into preview URLs; default the port of --listen (none when 80).
    #[arg(long, env = "GATEWAY_PREVIEW_PORT")]
    pub preview_port: Option<u16>,

    /// Scheme written into preview URLs.
    #[arg(long, env = "GATEWAY_PREVIEW_SCHEME", default_value = "http")]
    pub preview_scheme: String,

    /// The `agent` binary for the local runtime (default: beside the gateway's executable).
    #[arg(long, env = "GATEWAY_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,

    /// The built demo page served at `/` (default `web-demo/dist` when present).
    #[arg(long, env = "GATEWAY_WEB_DIR")]
    pub web_dir: Option<PathBuf>,

    /// Bundled container templates, one folder each (default `./templates` when present).
    #[arg(long, env = "GATEWAY_TEMPLATES_DIR")]
    pub templates_dir: Option<PathBuf>,

    /// Deprecated (use `--snapshot-keep`): the newest N versions are kept
    /// and older ones removed whatever their age, i.e. `--snapshot-keep N`
    /// with `--snapshot-retention-days 0` unless that is given.
    #[arg(long, env = "GATEWAY_ARCHIVE_KEEP", hide = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub archive_keep: Option<u32>,

    /// Snapshot versions never removed by retention: the newest N (default 3).
    #[arg(long, env = "GATEWAY_SNAPSHOT_KEEP", value_parser = clap::value_parser!(u32).range(1..))]
    pub snapshot_keep: Option<u32>,

    /// Days a snapshot version is kept (or a duration such as `12h`); an
    /// older one is removed unless it is among the newest `--snapshot-keep`
    /// (default 7).
    #[arg(long, env = "GATEWAY_SNAPSHOT_RETENTION_DAYS", value_parser = parse_days)]
    pub snapshot_retention_days: Option<std::time::Duration>,

    /// How often an active project is snapshotted without stopping anything
    /// (reason `scheduled`), e.g. `6h`; `0` or `off` never.
    #[arg(long, env = "GATEWAY_SNAPSHOT_INTERVAL", default_value = "6h", value_parser = parse_duration_or_off)]
    pub snapshot_interval: std::time::Duration,

    /// How old a pack or manifest that no recorded snapshot references must
    /// be before garbage collection removes it (a snapshot in progress
    /// uploads packs before its manifest is recorded).
    #[arg(long, env = "GATEWAY_SNAPSHOT_GC_GRACE", default_value = "1h", value_parser = parse_duration)]
    pub snapshot_gc_grace: std::time::Duration,

    /// How often the elected replica applies retention and collects
    /// unreferenced pack data of every project.
    #[arg(long, env = "GATEWAY_SNAPSHOT_GC_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub snapshot_gc_interval: std::time::Duration,

    /// Most bytes of new packs one snapshot may store (a hostile agent
    /// cannot make the gateway sign more; 413 `payload_too_large` above,
    /// and the snapshot or hibernation fails, changing nothing). Default
    /// 50 GiB.
    #[arg(long, env = "GATEWAY_SNAPSHOT_MAX_BYTES", default_value_t = 50 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_max_bytes: u64,

    /// Base URL at which agents reach this gateway's `/_objects` route (the
    /// packs of a folder archive store), e.g. `http://devgate-gateway.devgate.svc.cluster.local`.
    /// Default: `http://<listen address>` locally; on Kubernetes the
    /// gateway's Service, `http://devgate-gateway.<gateway namespace>.svc.cluster.local`.
    #[arg(long, env = "GATEWAY_OBJECTS_BASE_URL")]
    pub objects_base_url: Option<String>,

    /// The folder archive store is shared by every gateway replica (a
    /// ReadWriteMany volume), or only one replica runs. Required for a
    /// folder archive store on Kubernetes: replicas with a folder each of
    /// their own would each hold part of the packs.
    #[arg(long, env = "GATEWAY_ARCHIVE_SHARED", default_value_t = false, action = clap::ArgAction::Set)]
    pub archive_shared: bool,

    /// Days the command log keeps its entries.
    #[arg(long, env = "GATEWAY_LOG_RETENTION_DAYS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub log_retention_days: u32,

    /// Largest request body accepted for file writes and archive uploads, in bytes (413 above).
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 1 << 30)]
    pub max_body_bytes: u64,

    /// Most entries a zip upload (`POST .../archive`) may hold (413 above;
    /// read from the zip's end record before anything else).
    #[arg(long, env = "GATEWAY_MAX_UPLOAD_ENTRIES", default_value_t = 50_000)]
    pub max_upload_entries: u64,

    /// Most bytes a zip upload may expand to (413 above, nothing written).
    #[arg(long, env = "GATEWAY_MAX_UPLOAD_EXPANDED_BYTES", default_value_t = 1 << 30)]
    pub max_upload_expanded_bytes: u64,

    /// Most expanded bytes per byte of zip upload, over the whole zip, once
    /// it expands past 16 MiB (413 above).
    #[arg(long, env = "GATEWAY_MAX_UPLOAD_RATIO", default_value_t = 100)]
    pub max_upload_ratio: u64,

    /// Seconds a detached terminal session is kept for reattachment (agent
    /// terminals of the local runtime; Kubernetes agents use their own
    /// `AGENT_PTY_KEEP_SECS`, pod-exec shells a fixed 5 minutes).
    #[arg(long, env = "GATEWAY_TERMINAL_KEEP_SECS", default_value_t = 300)]
    pub terminal_keep_secs: u64,

    /// Local runtime: file reads (`GET .../files/...`) open the project's
    /// folder directly, with the agent's resolver, instead of asking its
    /// agent (one process hop less per read). `false`: every file operation
    /// goes through the agent, as on Kubernetes.
    #[arg(long, env = "GATEWAY_LOCAL_READS", default_value_t = true, action = clap::ArgAction::Set)]
    pub local_reads: bool,

    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, env = "GATEWAY_GRACE_SECS", default_value_t = 20)]
    pub grace_secs: u64,

    /// PostgreSQL URL for the state store (default: embedded SQLite in the data dir).
    #[arg(long, env = "GATEWAY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Kubernetes runtime: prefix of each project's namespace.
    #[arg(long, env = "GATEWAY_K8S_NAMESPACE_PREFIX", default_value = "proj-")]
    pub k8s_namespace_prefix: String,

    /// Kubernetes runtime: image of the file-manager pod (the agent).
    #[arg(
        long,
        env = "GATEWAY_AGENT_IMAGE",
        default_value = "devgate/agent:latest"
    )]
    pub agent_image: String,

    /// Minutes without file, terminal, watch or preview activity after
    /// which an active project is hibernated (or a duration such as `90s`);
    /// 0 never hibernates on idleness.
    #[arg(long, env = "GATEWAY_IDLE_HIBERNATE_MINUTES", default_value = "30", value_parser = parse_minutes)]
    pub idle_hibernate_minutes: std::time::Duration,

    /// How often each replica writes a project's activity to the state
    /// store at most, refreshes the projects it holds awake (terminals,
    /// watches), and the elected replica checks for idle projects.
    #[arg(long, env = "GATEWAY_ACTIVITY_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub activity_interval: std::time::Duration,

    /// Seconds a lease in the state store (a project's lock, the election
    /// of the replica that runs the idle loop and GC) outlives its last
    /// renewal: how soon a dead replica's locks are free again.
    #[arg(long, env = "GATEWAY_LEASE_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_secs: u64,

    /// Refuse to start without shared state: a PostgreSQL state store
    /// (`--database-url`) and an explicit secret (`--secret` or
    /// `--secret-file`), so that replicas never run each on their own.
    #[arg(long, env = "GATEWAY_REQUIRE_SHARED_STATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub require_shared_state: bool,

    /// The Kubernetes runtime's flags (`--k8s-*`).
    #[command(flatten)]
    pub kubernetes: crate::runtime::kubernetes::KubernetesArgs,

    /// Base URL at which agents reach this gateway, for cloning bundled
    /// templates (`{url}/templates/<name>.git`); default `http://<listen address>`
    /// (set it to the gateway's Service URL on Kubernetes).
    #[arg(long, env = "GATEWAY_TEMPLATES_BASE_URL")]
    pub templates_base_url: Option<String>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// A file holding the HS256 secret (its first line). Prefer it, or
    /// `GATEWAY_SECRET`, to `--secret`: a command line is readable by every
    /// process on the machine.
    #[arg(long, env = "GATEWAY_SECRET_FILE", conflicts_with = "secret")]
    pub secret_file: Option<PathBuf>,

    /// Seconds a client has to send a request's headers; also how long an idle
    /// keep-alive connection is kept open between requests.
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_secs: u64,

    /// Threads that serve client connections, each with a single-threaded
    /// runtime of its own; a connection stays on one for its whole life.
    /// Unset: one per CPU core. 0: connections are served on the main
    /// runtime's work-stealing workers, which suit handlers that compute
    /// long between awaits better.
    #[arg(long, env = "GATEWAY_HTTP_THREADS", value_parser = clap::value_parser!(u64).range(0..=1024))]
    pub http_threads: Option<u64>,

    /// Proxy a connection's plain preview requests (`GET`/`HEAD` without a
    /// body, no upgrade) as bytes, their heads edited in place, rather than
    /// through hyper's request and header maps; anything else on the
    /// connection is served as before. Same checks, same edits, less CPU.
    #[arg(long, env = "GATEWAY_PREVIEW_FAST_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    pub preview_fast_path: bool,

    /// How long a dev server may take to answer a proxied request: the time
    /// from sending it (after any wait for a dev server just starting; a
    /// request with a body: from its body's end) to the answer's head (the
    /// answer's body may then stream for as long as it likes); past it the
    /// client gets 504. `0` or `off`: no limit.
    #[arg(long, env = "GATEWAY_PREVIEW_ANSWER_TIMEOUT", default_value = "5m", value_parser = parse_duration_or_off)]
    pub preview_answer_timeout: std::time::Duration,

    /// Open client connections allowed in total; above it a new connection
    /// gets 503 and is closed.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Open client connections allowed per client address (IPv6: per /64);
    /// trusted proxies are counted only in the total.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_IP", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_ip: u64,

    /// Peers (comma-separated CIDRs, e.g. the ingress controller's pod range)
    /// whose `X-Forwarded-*` headers are believed; from anyone else they are
    /// replaced.
    #[arg(long, env = "GATEWAY_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Refuse tokens that live longer than this (`exp - iat`, or `exp - now`
    /// without `iat`), e.g. `24h`; unset: no limit.
    #[arg(long, env = "GATEWAY_MAX_TOKEN_TTL", value_parser = parse_duration)]
    pub max_token_ttl: Option<std::time::Duration>,

    /// Bytes of stdout and of stderr an exec answer carries at most (the rest
    /// is dropped and the answer says `"truncated": true`); at most 16 MiB.
    #[arg(long, env = "GATEWAY_MAX_EXEC_OUTPUT", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1..=(16 << 20)))]
    pub max_exec_output: u64,

    /// Bytes of stdout and of stderr kept per command-log entry (head and
    /// tail, `"truncated": true` when cut).
    #[arg(long, env = "GATEWAY_LOG_OUTPUT_CAP", default_value_t = 64 << 10, value_parser = clap::value_parser!(u64).range(256..=(16 << 20)))]
    pub log_output_cap: u64,

    /// Local runtime: run each project as a user of its own (`auto`: when
    /// the gateway runs as root), so projects cannot read each other's files.
    #[arg(long, env = "GATEWAY_ISOLATE_PROJECTS", value_enum, default_value_t = crate::runtime::isolation::IsolationMode::Auto)]
    pub isolate_projects: crate::runtime::isolation::IsolationMode,

    /// Local runtime: the first uid (and gid) given to a project's user.
    #[arg(long, env = "GATEWAY_PROJECT_UID_BASE", default_value_t = 200_000)]
    pub project_uid_base: u32,

    /// Least time between two wakes of one hibernated project by requests
    /// without credentials (public previews, share links); sooner ones get 429.
    #[arg(long, env = "GATEWAY_PUBLIC_WAKE_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub public_wake_interval: std::time::Duration,
}

/// Which lifecycle implementation drives projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    Local,
    Kubernetes,
}

/// Where hibernation archives live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveLocation {
    Folder(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl ArchiveLocation {
    /// Parses `s3://bucket/prefix` or a folder path.
    pub fn parse(s: &str) -> Result<ArchiveLocation, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("archive location {s:?} names no bucket"));
            }
            let prefix = prefix.trim_matches('/').to_owned();
            return Ok(ArchiveLocation::S3 {
                bucket: bucket.to_owned(),
                prefix,
            });
        }
        if s.contains("://") {
            return Err(format!(
                "archive location {s:?} is neither a folder nor s3://bucket/prefix"
            ));
        }
        if s.is_empty() {
            return Err("archive location is empty".into());
        }
        Ok(ArchiveLocation::Folder(PathBuf::from(s)))
    }
}

impl Config {
    /// Checks everything that can be checked before binding; the error is one line.
    pub fn validate(&self) -> Result<(), String> {
        if !crate::ids::is_dns_label_domain(&self.preview_domain) {
            return Err(format!(
                "--preview-domain {:?} is not a domain name",
                self.preview_domain
            ));
        }
        if let Some(a) = &self.archive {
            ArchiveLocation::parse(a)?;
        }
        if let Some(s) = &self.secret
            && s.is_empty()
        {
            return Err("--secret is empty".into());
        }
        if let Some(bin) = &self.agent_bin
            && !bin.is_file()
        {
            return Err(format!("--agent-bin {} is not a file", bin.display()));
        }
        if let Some(dir) = &self.web_dir
            && !dir.is_dir()
        {
            return Err(format!("--web-dir {} is not a directory", dir.display()));
        }
        if let Some(dir) = &self.templates_dir
            && !dir.is_dir()
        {
            return Err(format!(
                "--templates-dir {} is not a directory",
                dir.display()
            ));
        }
        if self.preview_scheme != "http" && self.preview_scheme != "https" {
            return Err("--preview-scheme must be http or https".into());
        }
        if self.runtime == RuntimeKind::Kubernetes {
            // The runtime's own checks (quantities, names), without the
            // secret it needs only later.
            crate::runtime::kubernetes::Settings::new(
                &self.kubernetes,
                &self.k8s_namespace_prefix,
                &self.agent_image,
                b"",
            )?;
        }
        if self.require_shared_state {
            if self.database_url.is_none() {
                return Err("--require-shared-state: no --database-url (GATEWAY_DATABASE_URL); replicas would each keep their own state".into());
            }
            if self.secret.is_none() && self.secret_file.is_none() {
                return Err("--require-shared-state: no --secret or --secret-file (GATEWAY_SECRET, GATEWAY_SECRET_FILE); replicas would each make their own".into());
            }
        }
        if self.runtime == RuntimeKind::Kubernetes
            && matches!(self.archive_location(), ArchiveLocation::Folder(_))
            && !self.archive_shared
        {
            return Err("a folder archive store on Kubernetes needs --archive-shared (GATEWAY_ARCHIVE_SHARED=true): the folder must be one volume every gateway replica mounts (ReadWriteMany), or only one replica may run; otherwise use --archive s3://bucket/prefix".into());
        }
        if let Some(u) = &self.objects_base_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(format!("--objects-base-url {u:?} is not an http(s) URL"));
        }
        if self.snapshot_gc_interval.is_zero() {
            return Err("--snapshot-gc-interval must be more than 0".into());
        }
        if self.activity_interval.is_zero() {
            return Err("--activity-interval must be more than 0".into());
        }
        if self.runtime == RuntimeKind::Kubernetes && self.database_url.is_none() {
            // Allowed: SQLite in the data dir works for a single gateway replica.
            tracing::debug!("kubernetes runtime with the embedded state store");
        }
        Ok(())
    }

    /// Versions never removed by retention (`--snapshot-keep`, or the
    /// deprecated `--archive-keep`; 3).
    pub fn snapshot_keep(&self) -> usize {
        self.snapshot_keep.or(self.archive_keep).unwrap_or(3) as usize
    }

    /// How long a version is kept (`--snapshot-retention-days`; 7 days, or
    /// none when only the deprecated `--archive-keep` is given, as before).
    pub fn snapshot_retention(&self) -> std::time::Duration {
        match (self.snapshot_retention_days, self.archive_keep) {
            (Some(d), _) => d,
            (None, Some(_)) => std::time::Duration::ZERO,
            (None, None) => std::time::Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// Where agents reach the `/_objects` route of a gateway listening on
    /// `port`: `--objects-base-url`, else the gateway's Service on
    /// Kubernetes (project NetworkPolicies allow egress to the gateway's
    /// pods on its port), else the listen address (loopback when it is
    /// unspecified).
    pub fn objects_base_url(&self, port: u16) -> String {
        if let Some(u) = &self.objects_base_url {
            return u.trim_end_matches('/').to_owned();
        }
        if self.runtime == RuntimeKind::Kubernetes {
            return format!(
                "http://{}.{}.svc.cluster.local",
                crate::runtime::kubernetes::objects::GATEWAY_APP,
                self.kubernetes.gateway_namespace
            );
        }
        let ip = match self.listen.ip() {
            ip if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        };
        format!("http://{}", std::net::SocketAddr::new(ip, port))
    }

    /// The archive location, `<data-dir>/archives` by default.
    pub fn archive_location(&self) -> ArchiveLocation {
        match &self.archive {
            Some(a) => ArchiveLocation::parse(a)
                .unwrap_or_else(|_| ArchiveLocation::Folder(self.data_dir.join("archives"))),
            None => ArchiveLocation::Folder(self.data_dir.join("archives")),
        }
    }

    /// The demo page's folder, when one is configured or `web-demo/dist` exists.
    pub fn web_dir(&self) -> Option<PathBuf> {
        match &self.web_dir {
            Some(d) => Some(d.clone()),
            None => Some(PathBuf::from("web-demo/dist")).filter(|d| d.join("index.html").is_file()),
        }
    }

    /// The templates folder, when one is configured or `./templates` exists.
    pub fn templates_dir(&self) -> Option<PathBuf> {
        match &self.templates_dir {
            Some(d) => Some(d.clone()),
            None => Some(PathBuf::from("templates")).filter(|d| d.is_dir()),
        }
    }

    /// The agent binary for the local runtime.
    pub fn agent_bin(&self) -> PathBuf {
        if let Some(b) = &self.agent_bin {
            return b.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("agent")))
            .unwrap_or_else(|| PathBuf::from("agent"))
    }

    /// A config with defaults over `data_dir`, for tests. Its project uids
    /// start at a random base: gateways of one test run may share a
    /// machine, as two gateways only may with bases of their own.
    pub fn for_data_dir(data_dir: &Path) -> Config {
        let mut c = Config::parse_from(["gateway"]);
        c.data_dir = data_dir.to_path_buf();
        c.project_uid_base = 500_000_000 + rand::random_range(0..500_000u32) * 2048;
        c
    }
}

/// Starts `tracing` with `RUST_LOG` (default `info`) in the configured format, on stderr.
/// A CIDR (`10.0.0.0/8`) or a single address (`10.0.0.1`).
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or CIDR"))
}

/// Minutes (a bare number), or a duration such as `90s`.
fn parse_minutes(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if let Ok(minutes) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(minutes.saturating_mul(60)));
    }
    parse_duration(s)
}

/// Days (a bare number), or a duration such as `12h`.
fn parse_days(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if let Ok(days) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(
            days.saturating_mul(24 * 3600),
        ));
    }
    parse_duration(s)
}

/// A duration as [`parse_duration`], or `off` (zero).
fn parse_duration_or_off(s: &str) -> Result<std::time::Duration, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(std::time::Duration::ZERO);
    }
    parse_duration(s)
}

/// A duration such as `90s`, `5m`, `6h`, `7d` or `1h 30m` (humantime's
/// format); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 90s, 5m or 6h: {e}"))
}

pub fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: escape codes in a log file or `kubectl
    // logs` are noise, and writing them cost every request span a little.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// How preview host names are made from a container and a project (the
/// names themselves: `preview::host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HostStyle {
    /// `{container}.{project}.{domain}`: two labels below the domain.
    #[default]
    Dotted,
    /// `{container}--{project}.{domain}`: one label, for one wildcard certificate.
    Flat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_state_is_required_when_asked() {
        let mut c = Config::parse_from(["gateway", "--require-shared-state", "true"]);
        assert!(c.validate().unwrap_err().contains("--database-url"));
        c.database_url = Some("host=db".into());
        assert!(c.validate().unwrap_err().contains("--secret"));
        c.secret = Some("a secret of enough length".into());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn retention_and_the_deprecated_archive_keep() {
        let c = Config::parse_from(["gateway"]);
        assert_eq!(c.snapshot_keep(), 3);
        assert_eq!(c.snapshot_retention().as_secs(), 7 * 86400);
        assert_eq!(c.snapshot_interval.as_secs(), 6 * 3600);
        // The old flag meant "the newest N, whatever their age".
        let c = Config::parse_from(["gateway", "--archive-keep", "2"]);
        assert_eq!(
            (c.snapshot_keep(), c.snapshot_retention().as_secs()),
            (2, 0)
        );
        let c = Config::parse_from([
            "gateway",
            "--archive-keep",
            "2",
            "--snapshot-keep",
            "5",
            "--snapshot-retention-days",
            "1",
        ]);
        assert_eq!(
            (c.snapshot_keep(), c.snapshot_retention().as_secs()),
            (5, 86400)
        );
        let c = Config::parse_from(["gateway", "--snapshot-interval", "off"]);
        assert!(c.snapshot_interval.is_zero());
    }

    #[test]
    fn agents_reach_the_object_route_at_the_service_on_kubernetes() {
        let local = Config::parse_from(["gateway", "--listen", "0.0.0.0:0"]);
        assert_eq!(local.objects_base_url(4321), "http://127.0.0.1:4321");
        let k8s = Config::parse_from([
            "gateway",
            "--runtime",
            "kubernetes",
            "--k8s-gateway-namespace",
            "platform",
        ]);
        assert_eq!(
            k8s.objects_base_url(8080),
            "http://devgate-gateway.platform.svc.cluster.local"
        );
        let set = Config::parse_from([
            "gateway",
            "--runtime",
            "kubernetes",
            "--objects-base-url",
            "http://gw.internal:8080/",
        ]);
        assert_eq!(set.objects_base_url(1), "http://gw.internal:8080");
    }

    #[test]
    fn a_folder_store_on_kubernetes_must_be_declared_shared() {
        let mut c = Config::parse_from(["gateway", "--runtime", "kubernetes"]);
        let e = c.validate().unwrap_err();
        assert!(e.contains("--archive-shared"), "{e}");
        c.archive = Some("s3://bucket/prefix".into());
        assert_eq!(c.validate(), Ok(()));
        c.archive = None;
        c.archive_shared = true;
        assert_eq!(c.validate(), Ok(()));
        c.objects_base_url = Some("gw:8080".into());
        assert!(c.validate().unwrap_err().contains("--objects-base-url"));
        // The local runtime: one gateway, its own folder.
        let c = Config::parse_from(["gateway"]);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.snapshot_max_bytes, 50 << 30);
    }

    #[test]
    fn archive_locations() {
        assert_eq!(
            ArchiveLocation::parse("s3://b/p/q/").unwrap(),
            ArchiveLocation::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        assert_eq!(
            ArchiveLocation::parse("s3://b").unwrap(),
            ArchiveLocation::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert!(ArchiveLocation::parse("s3:///x").is_err());
        assert_eq!(
            parse_minutes("30"),
            Ok(std::time::Duration::from_secs(1800))
        );
        assert_eq!(parse_minutes("90s"), Ok(std::time::Duration::from_secs(90)));
        assert!(parse_minutes("soon").is_err());
        assert_eq!(
            parse_days("7"),
            Ok(std::time::Duration::from_secs(7 * 86400))
        );
        assert_eq!(
            parse_days("12h"),
            Ok(std::time::Duration::from_secs(12 * 3600))
        );
        assert_eq!(parse_duration_or_off("off"), Ok(std::time::Duration::ZERO));
        assert_eq!(parse_duration_or_off("0"), Ok(std::time::Duration::ZERO));
        assert_eq!(
            parse_duration_or_off("6h"),
            Ok(std::time::Duration::from_secs(6 * 3600))
        );
        assert!(ArchiveLocation::parse("http://x").is_err());
        assert_eq!(
            ArchiveLocation::parse("/a").unwrap(),
            ArchiveLocation::Folder("/a".into())
        );
    }
}
