//! The embedded state store: one SQLite file in the data dir, numbered
//! migrations tracked in `PRAGMA user_version`, every call run on the
//! blocking pool so the async runtime never waits on disk.

use std::path::Path;
use std::sync::{Arc, Mutex};

mod rows;
mod schema;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension as _, params};

use rows::{
    CONTAINER_COLS, SHARE_COLS, archive_row, container_row, db, from_ms, is_unique_violation, ms,
    project_row, share_row,
};
use schema::MIGRATIONS;

use super::{
    ArchiveVersion, CommandLogEntry, Container, LogPage, PreviewCode, Project, ProjectStatus,
    Share, Store, Transition, WriteEntry,
};
use crate::error::{Error, Result};

/// SQLite behind the [`Store`] trait.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory database, for unit tests.
    pub fn in_memory() -> anyhow::Result<SqliteStore> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> anyhow::Result<SqliteStore> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
            tracing::info!(version = i + 1, "state store migrated");
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A poisoned lock means a panic mid-call; SQLite's own transactions
            // kept the file consistent, so the connection is still usable.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Store(Box::new(e)))?
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_project(&self, p: &Project) -> Result<()> {
        let p = p.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO projects (id, name, status, created_at, updated_at, hibernated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    p.id,
                    p.name,
                    p.status.as_str(),
                    ms(p.created_at),
                    ms(p.updated_at),
                    p.hibernated_at.map(ms)
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::Conflict(format!("project {} exists", p.id))
                } else {
                    db(e)
                }
            })?;
            Ok(())
        })
        .await
    }

    async fn get_project(&self, id: &str) -> Result<Option<Project>> {
        let id = id.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT id, name, status, created_at, updated_at, hibernated_at FROM projects WHERE id = ?1",
                [id],
                project_row,
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn list_projects(&self) -> Result<Vec<Project>> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT id, name, status, created_at, updated_at, hibernated_at FROM projects ORDER BY id")
                .map_err(db)?;
            let rows = st.query_map([], project_row).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
        .await
    }

    async fn transition(
        &self,
        id: &str,
        from: &[ProjectStatus],
        to: ProjectStatus,
        at: DateTime<Utc>,
    ) -> Result<Transition> {
        let (id, from) = (id.to_owned(), from.to_vec());
        self.with(move |c| {
            // One connection behind a mutex, and one transaction: nothing
            // runs between the read and the write.
            let tx = c.transaction().map_err(db)?;
            let current: Option<String> = tx
                .query_row("SELECT status FROM projects WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db)?;
            let Some(current) = current else {
                return Err(Error::NotFound(format!("project {id} not found")));
            };
            let current = ProjectStatus::parse(&current).unwrap_or(ProjectStatus::Failed);
            if !from.contains(&current) {
                return Ok(Transition::Refused(current));
            }
            tx.execute(
                "UPDATE projects SET status = ?2, updated_at = ?3,
                 hibernated_at = CASE WHEN ?2 = 'hibernated' THEN ?3 ELSE hibernated_at END
                 WHERE id = ?1",
                params![id, to.as_str(), ms(at)],
            )
            .map_err(db)?;
            let p = tx
                .query_row(
                    "SELECT id, name, status, created_at, updated_at, hibernated_at FROM projects WHERE id = ?1",
                    [&id],
                    project_row,
                )
                .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(Transition::Done(p))
        })
        .await
    }

    async fn delete_project(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.with(move |c| {
            c.execute("DELETE FROM projects WHERE id = ?1", [id])
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn create_container(&self, k: &Container) -> Result<()> {
        let k = k.clone();
        self.with(move |c| {
            c.execute(
                &format!("INSERT INTO containers ({CONTAINER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![
                    k.project, k.name, k.status.as_str(), k.port, k.start, k.install,
                    serde_json::to_string(&k.env).unwrap_or_default(), k.public,
                    k.template.as_ref().and_then(|t| serde_json::to_string(t).ok()),
                    ms(k.created_at), serde_json::to_string(&k.ports).unwrap_or_default(),
                    k.running_at_hibernation
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::Conflict(format!("container {} exists", k.name))
                } else {
                    db(e)
                }
            })?;
            Ok(())
        })
        .await
    }

    async fn update_container(&self, k: &Container) -> Result<()> {
        let k = k.clone();
        self.with(move |c| {
            let n = c
                .execute(
                    "UPDATE containers SET status = ?3, port = ?4, start = ?5, install = ?6, env = ?7,
                     public = ?8, template = ?9, ports = ?10, running_at_hibernation = ?11
                     WHERE project = ?1 AND name = ?2",
                    params![
                        k.project, k.name, k.status.as_str(), k.port, k.start, k.install,
                        serde_json::to_string(&k.env).unwrap_or_default(), k.public,
                        k.template.as_ref().and_then(|t| serde_json::to_string(t).ok()),
                        serde_json::to_string(&k.ports).unwrap_or_default(),
                        k.running_at_hibernation
                    ],
                )
                .map_err(db)?;
            if n == 0 {
                return Err(Error::NotFound(format!("container {} not found", k.name)));
            }
            Ok(())
        })
        .await
    }

    async fn get_container(&self, project: &str, name: &str) -> Result<Option<Container>> {
        let (project, name) = (project.to_owned(), name.to_owned());
        self.with(move |c| {
            c.query_row(
                &format!(
                    "SELECT {CONTAINER_COLS} FROM containers WHERE project = ?1 AND name = ?2"
                ),
                [project, name],
                container_row,
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn list_containers(&self, project: &str) -> Result<Vec<Container>> {
        let project = project.to_owned();
        self.with(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {CONTAINER_COLS} FROM containers WHERE project = ?1 ORDER BY created_at, name"
                ))
                .map_err(db)?;
            let rows = st.query_map([project], container_row).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
        .await
    }

    async fn delete_container(&self, project: &str, name: &str) -> Result<()> {
        let (project, name) = (project.to_owned(), name.to_owned());
        self.with(move |c| {
            c.execute(
                "DELETE FROM containers WHERE project = ?1 AND name = ?2",
                [project, name],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn add_archive(&self, a: &ArchiveVersion) -> Result<()> {
        let a = a.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO archives (project, version, key, size, sha256, files, created_at, snapshot, reason, uploaded_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    a.project,
                    a.version,
                    a.key,
                    a.size as i64,
                    a.sha256,
                    a.files as i64,
                    ms(a.created_at),
                    a.snapshot,
                    a.reason,
                    a.uploaded_bytes as i64
                ],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn list_archives(&self, project: &str) -> Result<Vec<ArchiveVersion>> {
        let project = project.to_owned();
        self.with(move |c| {
            let mut st = c
                .prepare(
                    "SELECT project, version, key, size, sha256, files, created_at, snapshot, reason, uploaded_bytes FROM archives
                     WHERE project = ?1 ORDER BY version DESC",
                )
                .map_err(db)?;
            let rows = st.query_map([project], archive_row).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
        .await
    }

    async fn delete_archive(&self, project: &str, version: i64) -> Result<()> {
        let project = project.to_owned();
        self.with(move |c| {
            c.execute(
                "DELETE FROM archives WHERE project = ?1 AND version = ?2",
                params![project, version],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn append_log(&self, e: &CommandLogEntry) -> Result<()> {
        let e = e.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO command_log (project, ts, label, command, exit_code, duration_ms, stdout, stderr, truncated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![e.project, ms(e.ts), e.label, e.command, e.exit_code, e.duration_ms as i64,
                    e.stdout, e.stderr, e.truncated],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn list_logs(&self, project: &str, page: LogPage) -> Result<Vec<CommandLogEntry>> {
        let project = project.to_owned();
        self.with(move |c| {
            // The newest `limit` below the cursor, then turned oldest first.
            let mut st = c
                .prepare(
                    "SELECT seq, project, ts, label, command, exit_code, duration_ms, stdout, stderr, truncated
                     FROM command_log WHERE project = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
                )
                .map_err(db)?;
            let rows = st
                .query_map(
                    params![project, page.before.unwrap_or(i64::MAX), page.limit],
                    |r| {
                        Ok(CommandLogEntry {
                            id: r.get(0)?,
                            project: r.get(1)?,
                            ts: from_ms(r.get(2)?),
                            label: r.get(3)?,
                            command: r.get(4)?,
                            exit_code: r.get(5)?,
                            duration_ms: r.get::<_, i64>(6)? as u64,
                            stdout: r.get(7)?,
                            stderr: r.get(8)?,
                            truncated: r.get(9)?,
                        })
                    },
                )
                .map_err(db)?;
            let mut entries = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?;
            entries.reverse();
            Ok(entries)
        })
        .await
    }

    async fn prune_logs(&self, before: DateTime<Utc>) -> Result<u64> {
        self.with(move |c| {
            let n = c
                .execute("DELETE FROM command_log WHERE ts < ?1", [ms(before)])
                .map_err(db)?;
            Ok(n as u64)
        })
        .await
    }

    async fn create_share(&self, sh: &Share) -> Result<()> {
        let sh = sh.clone();
        self.with(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO shares ({SHARE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                params![
                    sh.id,
                    sh.project,
                    sh.container,
                    sh.label,
                    sh.secret_sha256,
                    sh.created_by,
                    ms(sh.created_at),
                    ms(sh.expires_at),
                    sh.wake
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::Conflict(format!("share {} exists", sh.id))
                } else {
                    db(e)
                }
            })?;
            Ok(())
        })
        .await
    }

    async fn get_share(&self, id: &str) -> Result<Option<Share>> {
        let id = id.to_owned();
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {SHARE_COLS} FROM shares WHERE id = ?1"),
                [id],
                share_row,
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn list_shares(
        &self,
        project: &str,
        container: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Share>> {
        let (project, container) = (project.to_owned(), container.to_owned());
        self.with(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {SHARE_COLS} FROM shares WHERE project = ?1 AND container = ?2
                     AND expires_at > ?3 ORDER BY created_at, id"
                ))
                .map_err(db)?;
            let rows = st
                .query_map(params![project, container, ms(now)], share_row)
                .map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
        .await
    }

    async fn delete_share(&self, project: &str, container: &str, id: &str) -> Result<bool> {
        let (project, container, id) = (project.to_owned(), container.to_owned(), id.to_owned());
        self.with(move |c| {
            let n = c
                .execute(
                    "DELETE FROM shares WHERE id = ?1 AND project = ?2 AND container = ?3",
                    params![id, project, container],
                )
                .map_err(db)?;
            Ok(n > 0)
        })
        .await
    }

    async fn prune_previews(&self, before: DateTime<Utc>) -> Result<u64> {
        self.with(move |c| {
            let a = c
                .execute("DELETE FROM shares WHERE expires_at < ?1", [ms(before)])
                .map_err(db)?;
            let b = c
                .execute(
                    "DELETE FROM preview_codes WHERE expires_at < ?1",
                    [ms(before)],
                )
                .map_err(db)?;
            Ok((a + b) as u64)
        })
        .await
    }

    async fn add_preview_code(&self, code: &PreviewCode) -> Result<()> {
        let code = code.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO preview_codes (code_sha256, project, container, sub, expires_at, token_exp)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    code.code_sha256,
                    code.project,
                    code.container,
                    code.sub,
                    ms(code.expires_at),
                    code.token_exp as i64
                ],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn take_preview_code(
        &self,
        code_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PreviewCode>> {
        let hash = code_sha256.to_owned();
        self.with(move |c| {
            // DELETE ... RETURNING: the row goes in the same statement that
            // reads it, so two requests with one code cannot both get it.
            c.query_row(
                "DELETE FROM preview_codes WHERE code_sha256 = ?1
                 RETURNING code_sha256, project, container, sub, expires_at, token_exp",
                [hash],
                |r| {
                    Ok(PreviewCode {
                        code_sha256: r.get(0)?,
                        project: r.get(1)?,
                        container: r.get(2)?,
                        sub: r.get(3)?,
                        expires_at: from_ms(r.get(4)?),
                        token_exp: r.get::<_, i64>(5)? as u64,
                    })
                },
            )
            .optional()
            .map(|code| code.filter(|code| code.expires_at > now))
            .map_err(db)
        })
        .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with(move |c| {
            let n = c
                .execute(
                    "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                     WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4",
                    params![name, holder, ms(until), ms(now)],
                )
                .map_err(db)?;
            Ok(n == 1)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with(move |c| {
            c.execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                [name, holder],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn lease_holder(&self, name: &str, now: DateTime<Utc>) -> Result<Option<String>> {
        let name = name.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT holder FROM leases WHERE name = ?1 AND expires_at > ?2",
                params![name, ms(now)],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn touch_project(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        let id = id.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE projects SET last_activity = MAX(COALESCE(last_activity, 0), ?2) WHERE id = ?1",
                params![id, ms(at)],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn idle_projects(&self, before: DateTime<Utc>) -> Result<Vec<String>> {
        self.with(move |c| {
            let mut st = c
                .prepare(
                    "SELECT id FROM projects WHERE status = 'active'
                     AND COALESCE(last_activity, updated_at) < ?1 ORDER BY id",
                )
                .map_err(db)?;
            let rows = st.query_map([ms(before)], |r| r.get(0)).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
        .await
    }

    async fn last_activity(&self, id: &str) -> Result<Option<DateTime<Utc>>> {
        let id = id.to_owned();
        self.with(move |c| {
            let v: Option<Option<i64>> = c
                .query_row(
                    "SELECT last_activity FROM projects WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            Ok(v.flatten().map(from_ms))
        })
        .await
    }

    async fn enter_write(&self, project: &str) -> Result<WriteEntry> {
        // One process: the in-process gate orders hibernations and writes;
        // the store answers the status.
        let status = self.get_project(project).await?.map(|p| p.status);
        Ok(WriteEntry {
            allowed: status == Some(ProjectStatus::Active),
            status,
            session: 0,
        })
    }

    async fn leave_write(&self, _project: &str, _session: u64) -> Result<bool> {
        Ok(true)
    }

    async fn close_writes(&self, _project: &str) -> Result<Option<u64>> {
        Ok(Some(0))
    }

    async fn writes_still_closed(&self, _project: &str, _session: u64) -> Result<bool> {
        Ok(true)
    }

    async fn open_writes(&self, _project: &str, _session: u64) -> Result<()> {
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db))
            .await
    }
}

#[cfg(test)]
mod tests;
