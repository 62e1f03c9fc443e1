//! The state store: projects, containers, archive versions and the command
//! log, behind the object-safe [`Store`] trait (embedded SQLite by default,
//! PostgreSQL for several gateway replicas). Domain types live here; the
//! JSON shapes of the contract are built from them in `api`.
//!
//! The store is also how replicas coordinate (see ARCHITECTURE.md,
//! "Replicas"): a project's status changes only by compare-and-set
//! ([`Store::transition`]), leases with an expiry serialise lifecycle steps
//! and elect the replica that runs the idle loop and GC, the write gate
//! ([`Store::enter_write`]) lets a hibernation on one replica wait for file
//! changes in flight on every other, and activity is shared in the store.

pub mod postgres;
pub mod sqlite;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// A project's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectStatus {
    Created,
    Starting,
    Active,
    Hibernating,
    Hibernated,
    Restoring,
    Failed,
}

impl ProjectStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectStatus::Created => "created",
            ProjectStatus::Starting => "starting",
            ProjectStatus::Active => "active",
            ProjectStatus::Hibernating => "hibernating",
            ProjectStatus::Hibernated => "hibernated",
            ProjectStatus::Restoring => "restoring",
            ProjectStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<ProjectStatus> {
        Some(match s {
            "created" => ProjectStatus::Created,
            "starting" => ProjectStatus::Starting,
            "active" => ProjectStatus::Active,
            "hibernating" => ProjectStatus::Hibernating,
            "hibernated" => ProjectStatus::Hibernated,
            "restoring" => ProjectStatus::Restoring,
            "failed" => ProjectStatus::Failed,
            _ => return None,
        })
    }
}

/// The outcome of [`Store::transition`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The status was one of those expected; the project as it is now.
    Done(Project),
    /// The status was this other one; nothing changed.
    Refused(ProjectStatus),
}

/// The answer of [`Store::enter_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteEntry {
    /// The change may go ahead: the project is active and no hibernation
    /// holds its writes. Only then must [`Store::leave_write`] follow.
    pub allowed: bool,
    /// The project's status when entering (`None`: no such project).
    pub status: Option<ProjectStatus>,
    /// Identifies the store session that holds the entry; a session lost
    /// meanwhile (PostgreSQL reconnected) released it.
    pub session: u64,
}

/// A user project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub status: ProjectStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub hibernated_at: Option<DateTime<Utc>>,
}

/// A dev server's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    Pending,
    Stopped,
    Starting,
    Running,
    Failed,
}

impl ContainerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Pending => "pending",
            ContainerStatus::Stopped => "stopped",
            ContainerStatus::Starting => "starting",
            ContainerStatus::Running => "running",
            ContainerStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<ContainerStatus> {
        Some(match s {
            "pending" => ContainerStatus::Pending,
            "stopped" => ContainerStatus::Stopped,
            "starting" => ContainerStatus::Starting,
            "running" => ContainerStatus::Running,
            "failed" => ContainerStatus::Failed,
            _ => return None,
        })
    }
}

/// Where a container's files came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub git: String,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

/// A dev server of a project; its files live in `/{name}/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub project: String,
    pub name: String,
    pub status: ContainerStatus,
    /// The port the dev server is declared to listen on.
    pub port: u16,
    /// Other ports it serves (an HMR socket, an API), reachable as
    /// `{port}-{name}` preview hosts; no other port is.
    pub ports: Vec<u16>,
    pub start: String,
    pub install: Option<String>,
    pub env: BTreeMap<String, String>,
    pub public: bool,
    pub template: Option<Template>,
    pub created_at: DateTime<Utc>,
    /// It was running when the project was last hibernated, so that
    /// `POST /open {"start_containers": true}` can start it again.
    pub running_at_hibernation: bool,
}

/// One verified version of a project's files: a snapshot (its manifest's
/// id in `snapshot`), or a zip archive of a version hibernated before
/// snapshots (`snapshot` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveVersion {
    pub project: String,
    /// Increases with each version of the project.
    pub version: i64,
    /// The object key (S3) or file name (folder) within the archive
    /// location: the manifest's, for a snapshot.
    pub key: String,
    /// Bytes: of the zip, or of the files of a snapshot.
    pub size: u64,
    /// Hex sha256 of a zip; empty for a snapshot (its id is its hash).
    pub sha256: String,
    pub files: u64,
    pub created_at: DateTime<Utc>,
    /// The snapshot's id (blake3 of its stored manifest, hex).
    pub snapshot: Option<String>,
    /// Why it was taken: `hibernate`, `scheduled` or `manual`.
    pub reason: String,
    /// Bytes the snapshot added to the store (new packs and its manifest).
    pub uploaded_bytes: u64,
}

/// One command the gateway ran for a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandLogEntry {
    /// Increases with each entry of the store; `?before=` pages by it. Set by
    /// the store (0 in an entry not stored yet).
    pub id: i64,
    #[serde(skip)]
    pub project: String,
    pub ts: DateTime<Utc>,
    pub label: String,
    pub command: String,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub stdout: String,
    pub stderr: String,
    /// Whether `stdout` or `stderr` was cut (to its head and tail).
    pub truncated: bool,
}

impl CommandLogEntry {
    /// An entry for `command`, run now for `project` under `label`: no exit
    /// code, no output yet (the builders below add them).
    pub fn new(project: &str, label: impl Into<String>, command: impl Into<String>) -> Self {
        CommandLogEntry {
            id: 0,
            project: project.to_owned(),
            ts: Utc::now(),
            label: label.into(),
            command: command.into(),
            exit_code: None,
            duration_ms: 0,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
        }
    }

    /// How long it took.
    pub fn took(mut self, elapsed: std::time::Duration) -> Self {
        self.duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// How long it took, in milliseconds.
    pub fn took_ms(mut self, ms: u64) -> Self {
        self.duration_ms = ms;
        self
    }

    /// Its exit code and output.
    pub fn exited(mut self, code: i32, stdout: String, stderr: String) -> Self {
        self.exit_code = Some(code);
        self.stdout = stdout;
        self.stderr = stderr;
        self
    }

    /// Exit code 0 with `summary` as its output.
    pub fn succeeded(self, summary: String) -> Self {
        self.exited(0, summary, String::new())
    }

    /// Exit code 1 with the error as its output on stderr.
    pub fn failed(self, error: &impl std::fmt::Display) -> Self {
        self.exited(1, String::new(), error.to_string())
    }

    /// [`Self::succeeded`] with `summary` of the value, or [`Self::failed`].
    pub fn outcome<T, E: std::fmt::Display>(
        self,
        result: &std::result::Result<T, E>,
        summary: impl FnOnce(&T) -> String,
    ) -> Self {
        match result {
            Ok(v) => self.succeeded(summary(v)),
            Err(e) => self.failed(e),
        }
    }
}

/// Which page of a command log: the `limit` newest entries with an id
/// below `before` (all when `None`), answered oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPage {
    pub limit: u32,
    pub before: Option<i64>,
}

/// A share link: a preview of one container for people without an
/// account, until it expires or is revoked (deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Public id (in the URL and the API).
    pub id: String,
    pub project: String,
    pub container: String,
    pub label: Option<String>,
    /// SHA-256 (hex) of the link's secret; the secret itself is never stored.
    pub secret_sha256: String,
    /// The `sub` of the token that made it.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Whether a request through it may wake a hibernated project.
    pub wake: bool,
}

/// A one-time preview code (`POST .../preview-link`), valid once, briefly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewCode {
    /// SHA-256 (hex) of the code; the code itself is never stored.
    pub code_sha256: String,
    pub project: String,
    pub container: String,
    /// The `sub` of the token that asked for it.
    pub sub: String,
    /// When the code stops being valid.
    pub expires_at: DateTime<Utc>,
    /// The expiry of the token that asked for it: the cookie never outlives it.
    pub token_exp: u64,
}

/// The gateway's persistent state. Every method is a short transaction; an
/// implementation must not block the async runtime.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a new project; `Error::Conflict` when the id exists.
    async fn create_project(&self, project: &Project) -> Result<()>;
    /// The project with this id, if any.
    async fn get_project(&self, id: &str) -> Result<Option<Project>>;
    /// Every project, ordered by id.
    async fn list_projects(&self) -> Result<Vec<Project>>;
    /// Compare-and-set of a project's status: sets `to` (and `updated_at`;
    /// `hibernated_at` too when `to` is `hibernated`) only when the status is
    /// one of `from`. Every lifecycle status change goes through it, so two
    /// replicas can never both move a project out of one state.
    /// `Error::NotFound` when absent.
    async fn transition(
        &self,
        id: &str,
        from: &[ProjectStatus],
        to: ProjectStatus,
        at: DateTime<Utc>,
    ) -> Result<Transition>;
    /// Removes a project with its containers, archive versions and command log.
    async fn delete_project(&self, id: &str) -> Result<()>;

    /// Inserts a container; `Error::Conflict` when the name exists in the project.
    async fn create_container(&self, container: &Container) -> Result<()>;
    /// Replaces a container's fields; `Error::NotFound` when absent.
    async fn update_container(&self, container: &Container) -> Result<()>;
    /// One container of a project.
    async fn get_container(&self, project: &str, name: &str) -> Result<Option<Container>>;
    /// A project's containers, ordered by creation.
    async fn list_containers(&self, project: &str) -> Result<Vec<Container>>;
    /// Removes a container's record (not its files).
    async fn delete_container(&self, project: &str, name: &str) -> Result<()>;

    /// Records a verified archive version.
    async fn add_archive(&self, archive: &ArchiveVersion) -> Result<()>;
    /// A project's archive versions, newest first.
    async fn list_archives(&self, project: &str) -> Result<Vec<ArchiveVersion>>;
    /// Forgets one archive version (after its object was removed).
    async fn delete_archive(&self, project: &str, version: i64) -> Result<()>;

    /// Appends to a project's command log.
    async fn append_log(&self, entry: &CommandLogEntry) -> Result<()>;
    /// One page of a project's command log, oldest first.
    async fn list_logs(&self, project: &str, page: LogPage) -> Result<Vec<CommandLogEntry>>;
    /// Removes command-log entries older than `before`; answers how many.
    async fn prune_logs(&self, before: DateTime<Utc>) -> Result<u64>;

    /// Records a share link; `Error::Conflict` when the id exists.
    async fn create_share(&self, share: &Share) -> Result<()>;
    /// One share link by id (expired ones included).
    async fn get_share(&self, id: &str) -> Result<Option<Share>>;
    /// A container's share links that have not expired at `now`, oldest first.
    async fn list_shares(
        &self,
        project: &str,
        container: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Share>>;
    /// Revokes (removes) a share link of that container; `false` when there was none.
    async fn delete_share(&self, project: &str, container: &str, id: &str) -> Result<bool>;
    /// Removes share links and preview codes that expired before `before`.
    async fn prune_previews(&self, before: DateTime<Utc>) -> Result<u64>;

    /// Records a one-time preview code.
    async fn add_preview_code(&self, code: &PreviewCode) -> Result<()>;
    /// Takes (removes) a preview code by its hash: answered at most once,
    /// and only while it is valid at `now`.
    async fn take_preview_code(
        &self,
        code_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PreviewCode>>;

    /// Takes the lease `name` for `holder` until `until`, or renews it:
    /// succeeds when nobody holds it, its holder's expiry is at or before
    /// `now`, or `holder` holds it already. Answers whether `holder` holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Gives up a lease `holder` holds (nothing when another holds it).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;
    /// Who holds the lease at `now`, if anyone (an expired lease is free).
    async fn lease_holder(&self, name: &str, now: DateTime<Utc>) -> Result<Option<String>>;

    /// Records activity on a project at `at` (kept when newer than the
    /// recorded one).
    async fn touch_project(&self, id: &str, at: DateTime<Utc>) -> Result<()>;
    /// Active projects whose last activity (or, with none recorded, their
    /// last status change) is before `before`, ordered by id.
    async fn idle_projects(&self, before: DateTime<Utc>) -> Result<Vec<String>>;
    /// The last recorded activity on a project.
    async fn last_activity(&self, id: &str) -> Result<Option<DateTime<Utc>>>;

    /// Enters a change of a project's files (write, delete, move, upload,
    /// exec), with the project's status read in the same step. Allowed only
    /// when the project is active and no [`Store::close_writes`] holds its
    /// gate; an allowed entry holds the gate shared until `leave_write`.
    /// One process (SQLite) has nothing to share: the entry only reads the
    /// status, and the in-process gate (`state::WriteGates`) does the rest.
    async fn enter_write(&self, project: &str) -> Result<WriteEntry>;
    /// Leaves an allowed entry; `false` when its session was lost meanwhile
    /// (the gate was not held to the end: the change must not be
    /// acknowledged).
    async fn leave_write(&self, project: &str, session: u64) -> Result<bool>;
    /// Closes the project's gate to new changes if no change holds it on any
    /// replica: `Some(session)` when closed, `None` when changes are in
    /// flight (call again).
    async fn close_writes(&self, project: &str) -> Result<Option<u64>>;
    /// Whether the gate closed in `session` is still closed (its session
    /// lives).
    async fn writes_still_closed(&self, project: &str, session: u64) -> Result<bool>;
    /// Opens the gate closed in `session` again.
    async fn open_writes(&self, project: &str, session: u64) -> Result<()>;

    /// Checks the store answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;
}
