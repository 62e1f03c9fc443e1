//! Conversions between PostgreSQL's values and the store's types: rows to
//! records, times to unix milliseconds and back, driver errors to
//! [`Error`].

use chrono::{DateTime, TimeZone as _, Utc};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use crate::error::Error;
use crate::store::{
    ArchiveVersion, CommandLogEntry, Container, ContainerStatus, Project, ProjectStatus, Share,
};

pub(super) fn db(e: tokio_postgres::Error) -> Error {
    Error::Store(Box::new(e))
}

pub(super) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

pub(super) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

// `Row::get` panics on a column type mismatch; the columns and their types
// are fixed by the migrations (`schema.rs`) and read back in the same order.

pub(super) const PROJECT_COLS: &str = "id, name, status, created_at, updated_at, hibernated_at";

pub(super) fn project_row(r: &Row) -> Project {
    let status: String = r.get(2);
    Project {
        id: r.get(0),
        name: r.get(1),
        status: ProjectStatus::parse(&status).unwrap_or(ProjectStatus::Failed),
        created_at: from_ms(r.get(3)),
        updated_at: from_ms(r.get(4)),
        hibernated_at: r.get::<_, Option<i64>>(5).map(from_ms),
    }
}

pub(super) const CONTAINER_COLS: &str = "project, name, status, port, start, install, env, public, template, created_at, ports, running_at_hibernation";

pub(super) fn container_row(r: &Row) -> Container {
    let status: String = r.get(2);
    let env: String = r.get(6);
    let template: Option<String> = r.get(8);
    Container {
        project: r.get(0),
        name: r.get(1),
        status: ContainerStatus::parse(&status).unwrap_or(ContainerStatus::Failed),
        port: u16::try_from(r.get::<_, i32>(3)).unwrap_or_default(),
        start: r.get(4),
        install: r.get(5),
        env: serde_json::from_str(&env).unwrap_or_default(),
        public: r.get(7),
        template: template.and_then(|t| serde_json::from_str(&t).ok()),
        created_at: from_ms(r.get(9)),
        ports: serde_json::from_str(r.get::<_, &str>(10)).unwrap_or_default(),
        running_at_hibernation: r.get(11),
    }
}

pub(super) const SHARE_COLS: &str =
    "id, project, container, label, secret_sha256, created_by, created_at, expires_at, wake";

pub(super) fn share_row(r: &Row) -> Share {
    Share {
        id: r.get(0),
        project: r.get(1),
        container: r.get(2),
        label: r.get(3),
        secret_sha256: r.get(4),
        created_by: r.get(5),
        created_at: from_ms(r.get(6)),
        expires_at: from_ms(r.get(7)),
        wake: r.get(8),
    }
}

pub(super) fn log_row(r: &Row) -> CommandLogEntry {
    CommandLogEntry {
        id: r.get(0),
        project: r.get(1),
        ts: from_ms(r.get(2)),
        label: r.get(3),
        command: r.get(4),
        exit_code: r.get(5),
        duration_ms: r.get::<_, i64>(6) as u64,
        stdout: r.get(7),
        stderr: r.get(8),
        truncated: r.get(9),
    }
}

pub(super) fn archive_row(r: &Row) -> ArchiveVersion {
    ArchiveVersion {
        project: r.get(0),
        version: r.get(1),
        key: r.get(2),
        size: r.get::<_, i64>(3) as u64,
        sha256: r.get(4),
        files: r.get::<_, i64>(5) as u64,
        created_at: from_ms(r.get(6)),
        snapshot: r.get(7),
        reason: r.get(8),
        uploaded_bytes: r.get::<_, i64>(9) as u64,
    }
}
