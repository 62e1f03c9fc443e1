//! The SQLite store's schema: numbered migrations, applied in order and
//! tracked in `PRAGMA user_version`.

/// Schema changes in order; entry `i` moves the database to version `i + 1`.
/// Never edit a released entry: add a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        hibernated_at INTEGER
    );
    CREATE TABLE containers (
        project TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        port INTEGER NOT NULL,
        start TEXT NOT NULL,
        install TEXT,
        env TEXT NOT NULL,
        public INTEGER NOT NULL,
        template TEXT,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (project, name)
    );
    CREATE TABLE archives (
        project TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        key TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        files INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (project, version)
    );
    CREATE TABLE command_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        ts INTEGER NOT NULL,
        label TEXT NOT NULL,
        command TEXT NOT NULL,
        exit_code INTEGER,
        duration_ms INTEGER NOT NULL,
        stdout TEXT NOT NULL,
        stderr TEXT NOT NULL
    );
    CREATE INDEX command_log_project ON command_log(project, seq);
    CREATE INDEX command_log_ts ON command_log(ts);",
    // 2: declared extra ports, cut log output, share links, one-time preview codes.
    "ALTER TABLE containers ADD COLUMN ports TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE command_log ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE shares (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        container TEXT NOT NULL,
        label TEXT,
        secret_sha256 TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        wake INTEGER NOT NULL,
        FOREIGN KEY (project, container) REFERENCES containers(project, name) ON DELETE CASCADE
    );
    CREATE INDEX shares_container ON shares(project, container);
    CREATE TABLE preview_codes (
        code_sha256 TEXT PRIMARY KEY,
        project TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        container TEXT NOT NULL,
        sub TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        token_exp INTEGER NOT NULL
    );",
    // 3: which dev servers ran when the project was hibernated.
    "ALTER TABLE containers ADD COLUMN running_at_hibernation INTEGER NOT NULL DEFAULT 0;",
    // 4: snapshots: a version's snapshot id, why it was taken, what it uploaded.
    "ALTER TABLE archives ADD COLUMN snapshot TEXT;
    ALTER TABLE archives ADD COLUMN reason TEXT NOT NULL DEFAULT 'hibernate';
    ALTER TABLE archives ADD COLUMN uploaded_bytes INTEGER NOT NULL DEFAULT 0;",
    // 5: coordination of replicas: leases (project locks, the elected
    // replica) and the last activity on each project.
    "CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    ALTER TABLE projects ADD COLUMN last_activity INTEGER;",
];
