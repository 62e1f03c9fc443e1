//! The state store in PostgreSQL, for several gateway replicas: the same
//! tables and semantics as the SQLite store, numbered migrations recorded in
//! `devgate_schema` and applied under an advisory lock (replicas starting
//! together migrate once), one pipelined connection that is re-made when it
//! drops. TLS follows the URL's `sslmode` (`prefer` by default: TLS when the
//! server offers it; `require`; `disable`), with server certificates checked
//! against the system's roots (`SSL_CERT_FILE` adds one) and Mozilla's.

pub mod relay;
mod rows;
mod schema;

use chrono::{DateTime, Utc};
use tokio::sync::RwLock;
use tokio_postgres::Client;

use rows::{
    CONTAINER_COLS, PROJECT_COLS, SHARE_COLS, archive_row, container_row, db, from_ms,
    is_unique_violation, log_row, ms, project_row, share_row,
};
pub use schema::SCHEMA_VERSION;
use schema::migrate;

use super::{
    ArchiveVersion, CommandLogEntry, Container, LogPage, PreviewCode, Project, ProjectStatus,
    Share, Store, Transition, WriteEntry,
};
use crate::error::{Error, Result};

/// The advisory-lock key of a project's write gate: 64 bits of a hash of
/// the id (a collision only makes two projects wait for each other's writes).
fn write_gate_key(project: &str) -> i64 {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(format!("devgate write gate {project}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// PostgreSQL behind the [`Store`] trait.
///
/// The write gate is a session-level advisory lock on the one connection:
/// file changes hold it shared (PostgreSQL counts each hold, so many
/// changes of one replica share it), a hibernation exclusively. Session
/// locks end with the session: a replica that dies releases them at once,
/// and a replica whose connection was re-made knows (the `session` number
/// changed) that what it held is gone.
pub struct PostgresStore {
    url: String,
    client: RwLock<Client>,
    session: std::sync::atomic::AtomicU64,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`, or key=value
    /// form) and applies pending migrations.
    pub async fn connect(url: &str) -> anyhow::Result<PostgresStore> {
        let mut client = connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to postgresql: {e}"))?;
        migrate(&mut client)
            .await
            .map_err(|e| anyhow::anyhow!("cannot migrate the postgresql schema: {e}"))?;
        Ok(PostgresStore {
            url: url.to_owned(),
            client: RwLock::new(client),
            session: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// The schema version of the database.
    pub async fn schema_version(&self) -> Result<i64> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT COALESCE(MAX(version), 0) FROM devgate_schema", &[])
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }

    fn session(&self) -> u64 {
        self.session.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The connection, re-made when the server closed it (a restart or
    /// failover): one failed call, then the store works again.
    async fn client(&self) -> Result<tokio::sync::RwLockReadGuard<'_, Client>> {
        {
            let c = self.client.read().await;
            if !c.is_closed() {
                return Ok(c);
            }
        }
        let mut w = self.client.write().await;
        if w.is_closed() {
            tracing::warn!("postgresql connection lost; reconnecting");
            *w = connect(&self.url).await.map_err(db)?;
            // Advisory locks of the old session are gone with it.
            self.session
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(w.downgrade())
    }
}

async fn connect(url: &str) -> std::result::Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tls()).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "postgresql connection ended");
        }
    });
    Ok(client)
}

/// The TLS connector: server certificates verified against the system's
/// roots and Mozilla's (the distroless image has no system store).
fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    crate::tls::install_provider();
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // An unparsable system certificate is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn create_project(&self, p: &Project) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            &format!("INSERT INTO projects ({PROJECT_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"),
            &[
                &p.id,
                &p.name,
                &p.status.as_str(),
                &ms(p.created_at),
                &ms(p.updated_at),
                &p.hibernated_at.map(ms),
            ],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::Conflict(format!("project {} exists", p.id))
            } else {
                db(e)
            }
        })?;
        Ok(())
    }

    async fn get_project(&self, id: &str) -> Result<Option<Project>> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!("SELECT {PROJECT_COLS} FROM projects WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(db)?;
        Ok(row.as_ref().map(project_row))
    }

    async fn list_projects(&self) -> Result<Vec<Project>> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {PROJECT_COLS} FROM projects ORDER BY id"),
                &[],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(project_row).collect())
    }

    async fn transition(
        &self,
        id: &str,
        from: &[ProjectStatus],
        to: ProjectStatus,
        at: DateTime<Utc>,
    ) -> Result<Transition> {
        let c = self.client().await?;
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        // One statement: the row is locked between the check and the write,
        // so of two replicas moving a project out of one state only one can.
        let row = c
            .query_opt(
                &format!(
                    "UPDATE projects SET status = $2, updated_at = $3,
                     hibernated_at = CASE WHEN $2 = 'hibernated' THEN $3 ELSE hibernated_at END
                     WHERE id = $1 AND status = ANY($4) RETURNING {PROJECT_COLS}"
                ),
                &[&id, &to.as_str(), &ms(at), &from],
            )
            .await
            .map_err(db)?;
        if let Some(r) = row {
            return Ok(Transition::Done(project_row(&r)));
        }
        match c
            .query_opt("SELECT status FROM projects WHERE id = $1", &[&id])
            .await
            .map_err(db)?
        {
            Some(r) => Ok(Transition::Refused(
                ProjectStatus::parse(r.get(0)).unwrap_or(ProjectStatus::Failed),
            )),
            None => Err(Error::NotFound(format!("project {id} not found"))),
        }
    }

    async fn delete_project(&self, id: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute("DELETE FROM projects WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn create_container(&self, k: &Container) -> Result<()> {
        let c = self.client().await?;
        let env = serde_json::to_string(&k.env).unwrap_or_default();
        let ports = serde_json::to_string(&k.ports).unwrap_or_default();
        let template = k
            .template
            .as_ref()
            .and_then(|t| serde_json::to_string(t).ok());
        c.execute(
            &format!("INSERT INTO containers ({CONTAINER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"),
            &[
                &k.project, &k.name, &k.status.as_str(), &i32::from(k.port), &k.start, &k.install, &env,
                &k.public, &template, &ms(k.created_at), &ports, &k.running_at_hibernation,
            ],
        )
        .await
        .map_err(|e| if is_unique_violation(&e) { Error::Conflict(format!("container {} exists", k.name)) } else { db(e) })?;
        Ok(())
    }

    async fn update_container(&self, k: &Container) -> Result<()> {
        let c = self.client().await?;
        let env = serde_json::to_string(&k.env).unwrap_or_default();
        let ports = serde_json::to_string(&k.ports).unwrap_or_default();
        let template = k
            .template
            .as_ref()
            .and_then(|t| serde_json::to_string(t).ok());
        let n = c
            .execute(
                "UPDATE containers SET status = $3, port = $4, start = $5, install = $6, env = $7,
                 public = $8, template = $9, ports = $10, running_at_hibernation = $11
                 WHERE project = $1 AND name = $2",
                &[
                    &k.project,
                    &k.name,
                    &k.status.as_str(),
                    &i32::from(k.port),
                    &k.start,
                    &k.install,
                    &env,
                    &k.public,
                    &template,
                    &ports,
                    &k.running_at_hibernation,
                ],
            )
            .await
            .map_err(db)?;
        if n == 0 {
            return Err(Error::NotFound(format!("container {} not found", k.name)));
        }
        Ok(())
    }

    async fn get_container(&self, project: &str, name: &str) -> Result<Option<Container>> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT {CONTAINER_COLS} FROM containers WHERE project = $1 AND name = $2"
                ),
                &[&project, &name],
            )
            .await
            .map_err(db)?;
        Ok(row.as_ref().map(container_row))
    }

    async fn list_containers(&self, project: &str) -> Result<Vec<Container>> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {CONTAINER_COLS} FROM containers WHERE project = $1 ORDER BY created_at, name"),
                &[&project],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(container_row).collect())
    }

    async fn delete_container(&self, project: &str, name: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM containers WHERE project = $1 AND name = $2",
            &[&project, &name],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn add_archive(&self, a: &ArchiveVersion) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO archives (project, version, key, size, sha256, files, created_at, snapshot, reason, uploaded_bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &a.project,
                &a.version,
                &a.key,
                &(a.size as i64),
                &a.sha256,
                &(a.files as i64),
                &ms(a.created_at),
                &a.snapshot,
                &a.reason,
                &(a.uploaded_bytes as i64),
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn list_archives(&self, project: &str) -> Result<Vec<ArchiveVersion>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT project, version, key, size, sha256, files, created_at, snapshot, reason, uploaded_bytes FROM archives
                 WHERE project = $1 ORDER BY version DESC",
                &[&project],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(archive_row).collect())
    }

    async fn delete_archive(&self, project: &str, version: i64) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM archives WHERE project = $1 AND version = $2",
            &[&project, &version],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn append_log(&self, e: &CommandLogEntry) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO command_log (project, ts, label, command, exit_code, duration_ms, stdout, stderr, truncated)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &e.project, &ms(e.ts), &e.label, &e.command, &e.exit_code, &(e.duration_ms as i64), &e.stdout,
                &e.stderr, &e.truncated,
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn list_logs(&self, project: &str, page: LogPage) -> Result<Vec<CommandLogEntry>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT seq, project, ts, label, command, exit_code, duration_ms, stdout, stderr, truncated
                 FROM command_log WHERE project = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                &[
                    &project,
                    &page.before.unwrap_or(i64::MAX),
                    &i64::from(page.limit),
                ],
            )
            .await
            .map_err(db)?;
        // The newest page, turned oldest first.
        Ok(rows.iter().rev().map(log_row).collect())
    }

    async fn prune_logs(&self, before: DateTime<Utc>) -> Result<u64> {
        let c = self.client().await?;
        c.execute("DELETE FROM command_log WHERE ts < $1", &[&ms(before)])
            .await
            .map_err(db)
    }

    async fn create_share(&self, sh: &Share) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            &format!(
                "INSERT INTO shares ({SHARE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ),
            &[
                &sh.id,
                &sh.project,
                &sh.container,
                &sh.label,
                &sh.secret_sha256,
                &sh.created_by,
                &ms(sh.created_at),
                &ms(sh.expires_at),
                &sh.wake,
            ],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::Conflict(format!("share {} exists", sh.id))
            } else {
                db(e)
            }
        })?;
        Ok(())
    }

    async fn get_share(&self, id: &str) -> Result<Option<Share>> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!("SELECT {SHARE_COLS} FROM shares WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(db)?;
        Ok(row.as_ref().map(share_row))
    }

    async fn list_shares(
        &self,
        project: &str,
        container: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Share>> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {SHARE_COLS} FROM shares WHERE project = $1 AND container = $2
                     AND expires_at > $3 ORDER BY created_at, id"
                ),
                &[&project, &container, &ms(now)],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(share_row).collect())
    }

    async fn delete_share(&self, project: &str, container: &str, id: &str) -> Result<bool> {
        let c = self.client().await?;
        let n = c
            .execute(
                "DELETE FROM shares WHERE id = $1 AND project = $2 AND container = $3",
                &[&id, &project, &container],
            )
            .await
            .map_err(db)?;
        Ok(n > 0)
    }

    async fn prune_previews(&self, before: DateTime<Utc>) -> Result<u64> {
        let c = self.client().await?;
        let a = c
            .execute("DELETE FROM shares WHERE expires_at < $1", &[&ms(before)])
            .await
            .map_err(db)?;
        let b = c
            .execute(
                "DELETE FROM preview_codes WHERE expires_at < $1",
                &[&ms(before)],
            )
            .await
            .map_err(db)?;
        Ok(a + b)
    }

    async fn add_preview_code(&self, code: &PreviewCode) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO preview_codes (code_sha256, project, container, sub, expires_at, token_exp)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &code.code_sha256,
                &code.project,
                &code.container,
                &code.sub,
                &ms(code.expires_at),
                &(code.token_exp as i64),
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn take_preview_code(
        &self,
        code_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PreviewCode>> {
        let c = self.client().await?;
        // DELETE ... RETURNING: one statement reads and removes the row, so
        // two replicas redeeming one code cannot both get it.
        let row = c
            .query_opt(
                "DELETE FROM preview_codes WHERE code_sha256 = $1
                 RETURNING code_sha256, project, container, sub, expires_at, token_exp",
                &[&code_sha256],
            )
            .await
            .map_err(db)?;
        Ok(row
            .map(|r| PreviewCode {
                code_sha256: r.get(0),
                project: r.get(1),
                container: r.get(2),
                sub: r.get(3),
                expires_at: from_ms(r.get(4)),
                token_exp: r.get::<_, i64>(5) as u64,
            })
            .filter(|code| code.expires_at > now))
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let c = self.client().await?;
        let n = c
            .execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.expires_at <= $4",
                &[&name, &holder, &ms(until), &ms(now)],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM leases WHERE name = $1 AND holder = $2",
            &[&name, &holder],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn lease_holder(&self, name: &str, now: DateTime<Utc>) -> Result<Option<String>> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT holder FROM leases WHERE name = $1 AND expires_at > $2",
                &[&name, &ms(now)],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn touch_project(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "UPDATE projects SET last_activity = GREATEST(COALESCE(last_activity, 0), $2) WHERE id = $1",
            &[&id, &ms(at)],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn idle_projects(&self, before: DateTime<Utc>) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id FROM projects WHERE status = 'active'
                 AND COALESCE(last_activity, updated_at) < $1 ORDER BY id",
                &[&ms(before)],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn last_activity(&self, id: &str) -> Result<Option<DateTime<Utc>>> {
        let c = self.client().await?;
        let row = c
            .query_opt("SELECT last_activity FROM projects WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)).map(from_ms))
    }

    async fn enter_write(&self, project: &str) -> Result<WriteEntry> {
        let c = self.client().await?;
        let session = self.session();
        let key = write_gate_key(project);
        // The shared hold and the status in one round trip. A hibernation
        // sets `hibernating` before it takes the gate exclusively, so a
        // change either holds the gate first (the hibernation waits for
        // it) or sees the status (and is refused).
        let row = c
            .query_one(
                "SELECT pg_try_advisory_lock_shared($1),
                        (SELECT status FROM projects WHERE id = $2)",
                &[&key, &project],
            )
            .await
            .map_err(db)?;
        let held: bool = row.get(0);
        let status = row
            .get::<_, Option<String>>(1)
            .map(|s| ProjectStatus::parse(&s).unwrap_or(ProjectStatus::Failed));
        let allowed = held && status == Some(ProjectStatus::Active);
        if held && !allowed {
            c.execute("SELECT pg_advisory_unlock_shared($1)", &[&key])
                .await
                .map_err(db)?;
        }
        Ok(WriteEntry {
            allowed,
            status,
            session,
        })
    }

    async fn leave_write(&self, project: &str, session: u64) -> Result<bool> {
        if session != self.session() {
            return Ok(false);
        }
        let c = self.client().await?;
        let released: bool = c
            .query_one(
                "SELECT pg_advisory_unlock_shared($1)",
                &[&write_gate_key(project)],
            )
            .await
            .map_err(db)?
            .get(0);
        Ok(released && session == self.session())
    }

    async fn close_writes(&self, project: &str) -> Result<Option<u64>> {
        let c = self.client().await?;
        let session = self.session();
        let got: bool = c
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&write_gate_key(project)],
            )
            .await
            .map_err(db)?
            .get(0);
        Ok(got.then_some(session))
    }

    async fn writes_still_closed(&self, _project: &str, session: u64) -> Result<bool> {
        // A round trip proves the session still lives.
        let c = self.client().await?;
        c.query_one("SELECT 1", &[]).await.map_err(db)?;
        Ok(session == self.session())
    }

    async fn open_writes(&self, project: &str, session: u64) -> Result<()> {
        if session != self.session() {
            return Ok(());
        }
        let c = self.client().await?;
        c.execute("SELECT pg_advisory_unlock($1)", &[&write_gate_key(project)])
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        let c = self.client().await?;
        c.query_one("SELECT 1", &[]).await.map_err(db)?;
        Ok(())
    }
}
