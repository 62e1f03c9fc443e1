//! The PostgreSQL store's schema: numbered migrations recorded in
//! `devgate_schema`, applied in one transaction under an advisory lock so
//! that replicas starting together migrate once.

use chrono::Utc;
use tokio_postgres::Client;

/// Schema changes in order; entry `i` moves the database to version `i + 1`.
/// Never edit a released entry: add a new one. Times are unix milliseconds,
/// as in the SQLite store, so both stores hold the same values.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        hibernated_at BIGINT
    );
    CREATE TABLE containers (
        project TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        port INTEGER NOT NULL,
        start TEXT NOT NULL,
        install TEXT,
        env TEXT NOT NULL,
        public BOOLEAN NOT NULL,
        template TEXT,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (project, name)
    );
    CREATE TABLE archives (
        project TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        version BIGINT NOT NULL,
        key TEXT NOT NULL,
        size BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        files BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (project, version)
    );
    CREATE TABLE command_log (
        seq BIGSERIAL PRIMARY KEY,
        project TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        ts BIGINT NOT NULL,
        label TEXT NOT NULL,
        command TEXT NOT NULL,
        exit_code INTEGER,
        duration_ms BIGINT NOT NULL,
        stdout TEXT NOT NULL,
        stderr TEXT NOT NULL
    );
    CREATE INDEX command_log_project ON command_log(project, seq);
    CREATE INDEX command_log_ts ON command_log(ts);",
    // 2: declared extra ports, cut log output, share links, one-time preview codes.
    "ALTER TABLE containers ADD COLUMN ports TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE command_log ADD COLUMN truncated BOOLEAN NOT NULL DEFAULT FALSE;
    CREATE TABLE shares (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        container TEXT NOT NULL,
        label TEXT,
        secret_sha256 TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        wake BOOLEAN NOT NULL,
        FOREIGN KEY (project, container) REFERENCES containers(project, name) ON DELETE CASCADE
    );
    CREATE INDEX shares_container ON shares(project, container);
    CREATE TABLE preview_codes (
        code_sha256 TEXT PRIMARY KEY,
        project TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        container TEXT NOT NULL,
        sub TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        token_exp BIGINT NOT NULL
    );",
    // 3: which dev servers ran when the project was hibernated.
    "ALTER TABLE containers ADD COLUMN running_at_hibernation BOOLEAN NOT NULL DEFAULT FALSE;",
    // 4: snapshots: a version's snapshot id, why it was taken, what it uploaded.
    "ALTER TABLE archives ADD COLUMN snapshot TEXT;
    ALTER TABLE archives ADD COLUMN reason TEXT NOT NULL DEFAULT 'hibernate';
    ALTER TABLE archives ADD COLUMN uploaded_bytes BIGINT NOT NULL DEFAULT 0;",
    // 5: coordination of replicas: leases (project locks, the elected
    // replica) and the last activity on each project.
    "CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    ALTER TABLE projects ADD COLUMN last_activity BIGINT;",
];

/// The schema version this build migrates to.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Key of the advisory lock held while migrating ("devgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x0064_6576_6761_7465;

pub(super) async fn migrate(client: &mut Client) -> std::result::Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // Held to the end of the transaction: another replica waits here and
    // then finds the schema current.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS devgate_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM devgate_schema", &[])
        .await?
        .get(0);
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(usize::MAX))
    {
        let version = i as i64 + 1;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO devgate_schema (version, applied_at) VALUES ($1, $2)",
            &[&version, &Utc::now().timestamp_millis()],
        )
        .await?;
        tracing::info!(version, "state store migrated");
    }
    tx.commit().await
}
