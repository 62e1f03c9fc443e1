//! A throwaway PostgreSQL server from Debian's packages
//! (`scripts/install-test-deps.sh` installs them), in a temporary directory
//! on a free loopback port, for the PostgreSQL store's tests and for
//! several gateway replicas sharing one store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A throwaway PostgreSQL server; stopped (fast shutdown) on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    bin: PathBuf,
}

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/install-test-deps.sh (apt-get install postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no /usr/lib/postgresql/*/bin/initdb")
}

/// PostgreSQL refuses to run as root: as root, the server runs as the
/// `postgres` system user the Debian package creates.
fn run_as() -> Option<(u32, u32)> {
    let root = String::from_utf8(Command::new("id").arg("-u").output().ok()?.stdout)
        .ok()?
        .trim()
        == "0";
    if !root {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        String::from_utf8(
            Command::new("id")
                .args([flag, "postgres"])
                .output()
                .ok()?
                .stdout,
        )
        .ok()?
        .trim()
        .parse()
        .ok()
    };
    Some((
        id("-u").expect("a postgres user (Debian's package makes it)"),
        id("-g")?,
    ))
}

fn command(program: &Path) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut c = Command::new(program);
    if let Some((uid, gid)) = run_as() {
        c.uid(uid).gid(gid);
    }
    c
}

impl Postgres {
    /// Initialises a cluster and starts its server.
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some((uid, gid)) = run_as() {
            let ok = Command::new("chown")
                .arg(format!("{uid}:{gid}"))
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(ok.success());
        }
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::free_port();
        let mut pg = Postgres {
            dir,
            port,
            child: None,
            bin,
        };
        pg.spawn();
        pg
    }

    /// Starts the server (again, after [`Postgres::stop`]).
    pub fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let child = command(&self.bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postgres did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fast shutdown (SIGINT), waiting for the server to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    /// A connection string for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates database `name`, waiting for the server to accept sessions.
pub async fn create_db(pg: &Postgres, name: &str) {
    // The port opens before the server accepts sessions ("the database
    // system is starting up"): poll until a session begins.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (client, conn) = loop {
        match tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("postgres never accepted a session: {e}"),
        }
    };
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
}
