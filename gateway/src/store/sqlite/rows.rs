//! Conversions between SQLite's values and the store's types: rows to
//! records, times to unix milliseconds and back, driver errors to
//! [`Error`].

use chrono::{DateTime, TimeZone as _, Utc};

use crate::error::Error;
use crate::store::{ArchiveVersion, Container, ContainerStatus, Project, ProjectStatus, Share};

pub(super) fn db(e: rusqlite::Error) -> Error {
    Error::Store(Box::new(e))
}

pub(super) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

pub(super) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

pub(super) fn project_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    let status: String = r.get(2)?;
    Ok(Project {
        id: r.get(0)?,
        name: r.get(1)?,
        status: ProjectStatus::parse(&status).unwrap_or(ProjectStatus::Failed),
        created_at: from_ms(r.get(3)?),
        updated_at: from_ms(r.get(4)?),
        hibernated_at: r.get::<_, Option<i64>>(5)?.map(from_ms),
    })
}

pub(super) const CONTAINER_COLS: &str = "project, name, status, port, start, install, env, public, template, created_at, ports, running_at_hibernation";

pub(super) fn container_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Container> {
    let status: String = r.get(2)?;
    let env: String = r.get(6)?;
    let template: Option<String> = r.get(8)?;
    Ok(Container {
        project: r.get(0)?,
        name: r.get(1)?,
        status: ContainerStatus::parse(&status).unwrap_or(ContainerStatus::Failed),
        port: r.get(3)?,
        start: r.get(4)?,
        install: r.get(5)?,
        env: serde_json::from_str(&env).unwrap_or_default(),
        public: r.get(7)?,
        template: template.and_then(|t| serde_json::from_str(&t).ok()),
        created_at: from_ms(r.get(9)?),
        ports: serde_json::from_str(&r.get::<_, String>(10)?).unwrap_or_default(),
        running_at_hibernation: r.get(11)?,
    })
}

pub(super) const SHARE_COLS: &str =
    "id, project, container, label, secret_sha256, created_by, created_at, expires_at, wake";

pub(super) fn share_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Share> {
    Ok(Share {
        id: r.get(0)?,
        project: r.get(1)?,
        container: r.get(2)?,
        label: r.get(3)?,
        secret_sha256: r.get(4)?,
        created_by: r.get(5)?,
        created_at: from_ms(r.get(6)?),
        expires_at: from_ms(r.get(7)?),
        wake: r.get(8)?,
    })
}

pub(super) fn archive_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ArchiveVersion> {
    Ok(ArchiveVersion {
        project: r.get(0)?,
        version: r.get(1)?,
        key: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        sha256: r.get(4)?,
        files: r.get::<_, i64>(5)? as u64,
        created_at: from_ms(r.get(6)?),
        snapshot: r.get(7)?,
        reason: r.get(8)?,
        uploaded_bytes: r.get::<_, i64>(9)? as u64,
    })
}
