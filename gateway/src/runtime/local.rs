//! The local runtime, the embedded default: a project is the folder
//! `<data-dir>/projects/<id>/`; opening it starts a real `agent` child process
//! on a Unix socket with a token of its own; dev servers are the agent's named
//! background processes, on their declared port when it is free on this
//! machine and on another free one when it is not.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use super::isolation::{Isolation, IsolationMode};
use super::{
    AgentAddress, AgentEndpoint, ByteStream, ContainerRoute, ContainerSpec, ContainerState,
    ExecOutput, ExecSpec, Runtime, ShellTarget,
};
use crate::agent_client::{AgentClient, AgentPool};
use crate::error::{Error, Result};

/// Longest Unix socket path the kernel accepts, minus the NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Projects as folders, agents as child processes.
pub struct LocalRuntime {
    projects_dir: PathBuf,
    /// Where a torn-down project's folder goes (one rename) before the
    /// trash thread removes it.
    trash_dir: PathBuf,
    /// The trash thread: removes the folders sent to it, one at a time (a
    /// burst of idle hibernations queues here instead of starting as many
    /// removals at once).
    trash: Mutex<std::sync::mpsc::Sender<PathBuf>>,
    sockets_dir: PathBuf,
    agent_bin: PathBuf,
    /// One slot per project, so starting one project's agent (which waits for
    /// it to answer) never holds up requests to another.
    agents: Mutex<HashMap<String, Slot>>,
    /// (project, container) → the port its dev server listens on.
    routes: Mutex<HashMap<(String, String), u16>>,
    pool: AgentPool,
    spawner: Spawner,
    /// Seconds an agent keeps a detached terminal session (`--pty-keep-secs`).
    pty_keep_secs: u64,
    local_reads: bool,
    /// Handles on project folders for those reads.
    folders: crate::local_files::Folders,
    /// A user per project, when the gateway runs as root.
    isolation: Option<std::sync::Arc<Isolation>>,
    /// (project, container) → other ports it declared, while it runs.
    extra_ports: Mutex<HashMap<(String, String), Vec<u16>>>,
}

type SpawnReply = tokio::sync::oneshot::Sender<std::io::Result<tokio::process::Child>>;

/// Spawns agents from one thread that lives as long as the gateway. The
/// agents' parent-death signal fires when the *thread* that forked them ends,
/// and async worker threads may come and go; this one does not.
struct Spawner {
    tx: std::sync::mpsc::Sender<(tokio::process::Command, SpawnReply)>,
}

impl Spawner {
    fn new() -> std::io::Result<Spawner> {
        let (tx, rx) = std::sync::mpsc::channel::<(tokio::process::Command, SpawnReply)>();
        // Child reaping is registered with the runtime that spawns, so the
        // thread enters the gateway's runtime.
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("agent-spawner".into())
            .spawn(move || {
                let _rt = handle.enter();
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })?;
        Ok(Spawner { tx })
    }

    async fn spawn(&self, cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send((cmd, reply))
            .map_err(|_| std::io::Error::other("the agent spawner thread is gone"))?;
        rx.await
            .map_err(|_| std::io::Error::other("the agent spawner thread is gone"))?
    }
}

type Slot = std::sync::Arc<tokio::sync::Mutex<Option<LocalAgent>>>;

struct LocalAgent {
    child: tokio::process::Child,
    endpoint: AgentEndpoint,
    /// Device and inode of the project folder it serves.
    root: Option<(u64, u64)>,
}

impl LocalAgent {
    /// Whether the agent still runs and still serves the project folder that
    /// is there now. Another gateway on the same data dir (replicas sharing
    /// one PostgreSQL store) may have hibernated the project, which removes
    /// the folder, and restored it, which makes a new one: an agent holding
    /// the old folder would write where nobody reads.
    fn serves(&mut self, folder: &Path) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none()
            && self.root.is_some()
            && self.root == folder_id(folder))
    }
}

/// Device and inode of a folder, if it exists.
fn folder_id(folder: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(folder).ok().map(|m| (m.dev(), m.ino()))
}

impl LocalRuntime {
    /// Whether the gateway reads project files itself (`local_files`;
    /// default on).
    pub fn with_local_reads(mut self, on: bool) -> LocalRuntime {
        self.local_reads = on;
        self
    }

    /// How long its agents keep a detached terminal session (default 300 s).
    pub fn with_terminal_keep_secs(mut self, secs: u64) -> LocalRuntime {
        self.pty_keep_secs = secs;
        self
    }

    /// A runtime keeping projects under `<data_dir>/projects`, each run by a
    /// user of its own as `isolation` says (see `runtime::isolation`). Must
    /// be called inside the gateway's tokio runtime.
    pub fn new(
        data_dir: &Path,
        agent_bin: PathBuf,
        isolation: IsolationMode,
        uid_base: u32,
    ) -> anyhow::Result<LocalRuntime> {
        let data_dir = std::path::absolute(data_dir)?;
        let projects_dir = data_dir.join("projects");
        std::fs::create_dir_all(&projects_dir)?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            // Project folders are the gateway user's alone.
            std::fs::set_permissions(&projects_dir, std::fs::Permissions::from_mode(0o700))?;
        }
        // Folders of torn-down projects, removed in the background (a
        // previous run's leftovers too).
        let trash_dir = data_dir.join("trash");
        std::fs::create_dir_all(&trash_dir)?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&trash_dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let trash = trash_thread()?;
        if let Ok(entries) = std::fs::read_dir(&trash_dir) {
            for e in entries.flatten() {
                let _ = trash.send(e.path());
            }
        }
        let mut sockets_dir = data_dir.join("run");
        // Socket paths are limited to 107 bytes; a deep data dir would not fit
        // `<run>/<40-char id>-<8 hex>.sock`, so those go to a short private temp dir.
        if sockets_dir.as_os_str().len() + 56 > MAX_SOCKET_PATH {
            let tag = hex::encode(
                &<sha2::Sha256 as sha2::Digest>::digest(data_dir.as_os_str().as_encoded_bytes())
                    [..6],
            );
            sockets_dir = std::env::temp_dir().join(format!("devgate-{tag}"));
        }
        std::fs::create_dir_all(&sockets_dir)?;
        // Sockets of agents of a previous run: those agents are ending.
        if let Ok(entries) = std::fs::read_dir(&sockets_dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "sock") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&sockets_dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let isolation = Isolation::new(
            isolation,
            &data_dir,
            &[&projects_dir, &sockets_dir],
            uid_base,
        )?
        .map(std::sync::Arc::new);
        Ok(LocalRuntime {
            isolation,
            extra_ports: Mutex::new(HashMap::new()),
            projects_dir,
            trash_dir,
            trash: Mutex::new(trash),
            sockets_dir,
            agent_bin,
            agents: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            pool: AgentPool::default(),
            pty_keep_secs: 300,
            local_reads: true,
            folders: Default::default(),
            spawner: Spawner::new()?,
        })
    }

    /// The folder of a project's files.
    pub fn project_dir(&self, project: &str) -> PathBuf {
        self.projects_dir.join(project)
    }

    /// Moves a torn-down project's folder into the trash (removed by the
    /// trash thread), or removes it in place on another file system.
    async fn remove_folder(&self, project: &str, dir: PathBuf) -> Result<()> {
        let trash = self
            .trash_dir
            .join(format!("{project}.{:016x}", rand::random::<u64>()));
        match std::fs::rename(&dir, &trash) {
            Ok(()) => {
                let queued = self
                    .trash
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .send(trash);
                if let Err(std::sync::mpsc::SendError(path)) = queued {
                    tracing::warn!(path = %path.display(), "the trash thread is gone; removed at the next start");
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            // Another file system (a mount per project): removed in place.
            Err(_) => {
                match tokio::task::spawn_blocking(move || devgate_fs::temp::remove_tree_at(&dir))
                    .await
                    .map_err(Error::internal)?
                {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(Error::Io(e)),
                }
            }
        }
    }

    async fn client(&self, project: &str) -> Result<AgentClient> {
        let ep = self.agent(project).await?;
        self.pool.get(project, &ep)
    }

    async fn spawn_agent(&self, project: &str) -> Result<LocalAgent> {
        let root = self.project_dir(project);
        // With isolation, the folder, the home and the socket's folder are
        // the project user's; without, the folder is the gateway user's.
        let user = match &self.isolation {
            Some(iso) => {
                let (iso, root, project) = (iso.clone(), root.clone(), project.to_owned());
                let sockets = self.sockets_dir.clone();
                let prepared = tokio::task::spawn_blocking(move || {
                    let (uid, home) = iso.prepare(&project, &root)?;
                    let sockets = iso.socket_dir(&project, &sockets)?;
                    std::io::Result::Ok((uid, home, sockets))
                })
                .await
                .map_err(Error::internal)??;
                Some(prepared)
            }
            None => {
                tokio::fs::create_dir_all(&root).await?;
                None
            }
        };
        // A new path per agent: an agent of a previous gateway, still ending,
        // removes its own socket path when it exits, which must not be ours.
        let random = hex::encode(rand::random::<[u8; 4]>());
        let socket = match &user {
            Some((_, _, dir)) => dir.join(format!("{random}.sock")),
            None => self.sockets_dir.join(format!("{project}-{random}.sock")),
        };
        let _ = tokio::fs::remove_file(&socket).await;
        let token = hex::encode(rand::random::<[u8; 24]>());
        let mut cmd = tokio::process::Command::new(&self.agent_bin);
        // The token goes in on standard input: it is then in neither the
        // agent's command line nor its environment, both of which other
        // processes of the machine may read.
        cmd.arg("--root")
            .arg(&root)
            .arg("--socket")
            .arg(&socket)
            .arg("--token-file")
            .arg("-")
            .arg("--die-with-parent")
            .arg("--pty-keep-secs")
            .arg(self.pty_keep_secs.to_string())
            .env(
                "RUST_LOG",
                std::env::var("AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .kill_on_drop(true);
        // The agent inherits the environment but never the gateway's own
        // settings, its secret above all, nor storage credentials (AWS_*:
        // the agent moves snapshot packs on URLs the gateway signs).
        for (k, _) in std::env::vars_os() {
            let k_str = k.to_string_lossy();
            if k_str.starts_with("GATEWAY_")
                || k_str.starts_with("AGENT_TOKEN")
                || k_str.starts_with("AWS_")
            {
                cmd.env_remove(k);
            }
        }
        if let Some((uid, home, _)) = &user {
            cmd.uid(*uid)
                .gid(*uid)
                .env("HOME", home)
                .env("TMPDIR", home.join("tmp"))
                .env(
                    "PATH",
                    super::isolation::reachable_path(&std::env::var("PATH").unwrap_or_default()),
                );
        }
        let mut child = self.spawner.spawn(cmd).await.map_err(|e| {
            Error::Unavailable(format!(
                "cannot start agent {}: {e}",
                self.agent_bin.display()
            ))
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt as _;
            stdin.write_all(format!("{token}\n").as_bytes()).await?;
            stdin.shutdown().await?;
        }
        let endpoint = AgentEndpoint {
            address: AgentAddress::Unix(socket),
            token,
        };
        let client = AgentClient::connect_lazy(&endpoint)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(Error::Unavailable(format!(
                    "agent for {project} exited at start: {status}"
                )));
            }
            match client.stat("").await {
                Ok(_) => break,
                Err(error) if Instant::now() > deadline => {
                    let _ = child.start_kill();
                    return Err(Error::Unavailable(format!(
                        "agent for {project} did not answer: {error}"
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        tracing::info!(project, pid = child.id(), "agent started");
        Ok(LocalAgent {
            child,
            endpoint,
            root: folder_id(&root),
        })
    }

    /// All projects share this machine's ports. With a user per project, a
    /// port is reachable only when what listens there is the project's user
    /// (or nothing listens yet). Without, another port a container declared
    /// is reachable only while no other project's running container holds it.
    async fn check_port(&self, project: &str, port: u16, main: bool) -> Result<()> {
        let taken = || Error::NotFound(format!("port {port} of project {project}"));
        match &self.isolation {
            // With a user per project, what listens there decides.
            Some(iso) => {
                let owned = iso.port_owned_by(project, port).await;
                tracing::debug!(project, port, ?owned, "port owner checked");
                if owned == Some(false) {
                    return Err(taken());
                }
            }
            // One user for every project: the ports other projects' running
            // containers hold are theirs.
            None if !main && self.claimed_elsewhere(project, port) => return Err(taken()),
            None => {}
        }
        Ok(())
    }

    /// Whether another project's running container holds `port` (as its
    /// port or one it declared).
    fn claimed_elsewhere(&self, project: &str, port: u16) -> bool {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|((p, _), &main)| p != project && main == port)
            || self
                .extra_ports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|((p, _), ports)| p != project && ports.contains(&port))
    }

    fn slot(&self, project: &str) -> Slot {
        let mut map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(project.to_owned()).or_default().clone()
    }

    async fn stop_agent(&self, project: &str) {
        let slot = self.slot(project);
        let agent = slot.lock().await.take();
        self.pool.forget(project);
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(p, _), _| p != project);
        self.extra_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(p, _), _| p != project);
        if let Some(mut a) = agent {
            terminate(&mut a.child).await;
            if let AgentAddress::Unix(s) = &a.endpoint.address {
                let _ = tokio::fs::remove_file(s).await;
            }
        }
    }
}

/// SIGTERM (the agent stops its processes), SIGKILL after a grace period.
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Whether `port` can be bound on the loopback address right now.
fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

#[async_trait::async_trait]
impl Runtime for LocalRuntime {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn ensure(&self, project: &str) -> Result<AgentEndpoint> {
        let slot = self.slot(project);
        let mut agent = slot.lock().await;
        if let Some(a) = agent.as_mut() {
            if a.serves(&self.project_dir(project))? {
                return Ok(a.endpoint.clone());
            }
            tracing::warn!(
                project,
                "agent had exited or serves a removed folder; starting a new one"
            );
            if let Some(mut old) = agent.take() {
                terminate(&mut old.child).await;
            }
            self.pool.forget(project);
        }
        let a = self.spawn_agent(project).await?;
        let ep = a.endpoint.clone();
        *agent = Some(a);
        Ok(ep)
    }

    fn local_files(&self, project: &str) -> Option<Result<std::sync::Arc<devgate_fs::Root>>> {
        self.local_reads
            .then(|| self.folders.get(&self.project_dir(project)))
    }

    async fn agent(&self, project: &str) -> Result<AgentEndpoint> {
        let slot = self.slot(project);
        let mut agent = slot.lock().await;
        if let Some(a) = agent.as_mut()
            && a.serves(&self.project_dir(project))?
        {
            return Ok(a.endpoint.clone());
        }
        Err(Error::ProjectNotActive(project.to_owned()))
    }

    async fn start_container(&self, project: &str, spec: &ContainerSpec) -> Result<ContainerRoute> {
        let client = self.client(project).await?;
        // The declared port when nothing listens there and no other
        // project's container claims it (one may be starting up).
        let port = if port_free(spec.port) && !self.claimed_elsewhere(project, spec.port) {
            spec.port
        } else {
            free_port()?
        };
        let mut env = spec.env.clone();
        env.insert("PORT".into(), port.to_string());
        env.insert("HOST".into(), "127.0.0.1".into());
        client
            .start_background(&spec.name, &spec.start, &spec.name, env)
            .await?;
        if port != spec.port {
            tracing::info!(project, container = %spec.name, declared = spec.port, port, "declared port taken; using another");
        }
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((project.to_owned(), spec.name.clone()), port);
        self.extra_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((project.to_owned(), spec.name.clone()), spec.ports.clone());
        Ok(ContainerRoute {
            host: "127.0.0.1".into(),
            port,
        })
    }

    async fn stop_container(&self, project: &str, name: &str) -> Result<()> {
        let key = (project.to_owned(), name.to_owned());
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        self.extra_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let client = match self.client(project).await {
            Ok(c) => c,
            // No agent: nothing runs.
            Err(Error::ProjectNotActive(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match client.stop_background(name, 5000).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn container_route(
        &self,
        project: &str,
        name: &str,
        port: Option<u16>,
    ) -> Result<ContainerRoute> {
        let main = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(project.to_owned(), name.to_owned()))
            .copied()
            .ok_or_else(|| Error::Unavailable(format!("container {name} is not running")))?;
        let port = port.unwrap_or(main);
        self.check_port(project, port, port == main).await?;
        Ok(ContainerRoute {
            host: "127.0.0.1".into(),
            port,
        })
    }

    async fn container_shell(
        &self,
        project: &str,
        name: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<ShellTarget> {
        let endpoint = self.agent(project).await?;
        let mut env = env.clone();
        if let Some(port) = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(project.to_owned(), name.to_owned()))
        {
            env.insert("PORT".into(), port.to_string());
        }
        env.insert("HOST".into(), "127.0.0.1".into());
        Ok(ShellTarget::Agent {
            endpoint,
            cwd: name.to_owned(),
            env,
        })
    }

    async fn container_exec(
        &self,
        project: &str,
        name: &str,
        mut spec: ExecSpec,
    ) -> Result<ExecOutput> {
        let client = self.client(project).await?;
        spec.cwd = super::container_cwd(name, &spec.cwd);
        if let Some(port) = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(project.to_owned(), name.to_owned()))
        {
            spec.env
                .entry("PORT".into())
                .or_insert_with(|| port.to_string());
        }
        spec.env
            .entry("HOST".into())
            .or_insert_with(|| "127.0.0.1".into());
        client.run(spec).await
    }

    async fn container_logs(&self, project: &str, name: &str, follow: bool) -> Result<ByteStream> {
        let client = self.client(project).await?;
        match client.background_logs(name, 0, follow).await {
            Ok(s) => Ok(s),
            // Never started: no output yet.
            Err(Error::NotFound(_)) => Ok(futures::stream::empty().boxed()),
            Err(e) => Err(e),
        }
    }

    async fn container_state(&self, project: &str, name: &str) -> Result<Option<ContainerState>> {
        let client = match self.client(project).await {
            Ok(c) => c,
            Err(Error::ProjectNotActive(_)) => return Ok(Some(ContainerState::Absent)),
            Err(e) => return Err(e),
        };
        let procs = client.list_background().await?;
        Ok(Some(match procs.iter().find(|p| p.name == name) {
            Some(p) if p.running => ContainerState::Running,
            Some(p) => ContainerState::Exited(p.exit_code),
            None => ContainerState::Absent,
        }))
    }

    async fn teardown(&self, project: &str) -> Result<()> {
        self.stop_agent(project).await;
        if let Some(iso) = &self.isolation {
            // Best effort: the folder below goes whatever happens here.
            let (iso, id) = (iso.clone(), project.to_owned());
            let cleared = tokio::task::spawn_blocking(move || {
                if let Err(error) = iso.kill_all(&id) {
                    tracing::warn!(%error, project = %id, "cannot end the processes of the project's user");
                }
                iso.clear_home(&id)
            })
            .await
            .map_err(Error::internal)?;
            if let Err(error) = cleared {
                tracing::warn!(%error, project, "cannot remove the project's home");
            }
        }
        // The folder leaves the project at once (one rename), and a
        // background thread removes it: tens of thousands of files take
        // seconds to delete, which no hibernation or delete should wait for.
        // The next open makes a new folder; a gateway stopped meanwhile
        // removes the leftovers at its next start.
        let dir = self.project_dir(project);
        let removed = self.remove_folder(project, dir.clone()).await;
        // After the folder has left its path: a read racing the teardown can
        // no longer take a handle on it.
        self.folders.forget(&dir);
        removed
    }

    async fn ready(&self) -> Result<()> {
        if self.agent_bin.is_file() {
            Ok(())
        } else {
            Err(Error::Unavailable(format!(
                "agent binary {} not found",
                self.agent_bin.display()
            )))
        }
    }

    async fn shutdown(&self) {
        let projects: Vec<String> = self
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        futures::future::join_all(projects.iter().map(|p| self.stop_agent(p))).await;
    }
}

/// Starts the thread that removes torn-down projects' folders (in the
/// trash), one at a time, for as long as the runtime lives. Read-only
/// folders in them (Go's module cache, say) are made writable first:
/// without root, their entries cannot go otherwise. The thread runs at the
/// lowest priority (nice 19; on Linux the nice value is a thread's): the
/// user's hibernate-then-open restores the same project while its old
/// folder is still being removed, and the removal must not take the CPU
/// from the restore (measured: a sixth of both cores during one).
fn trash_thread() -> std::io::Result<std::sync::mpsc::Sender<PathBuf>> {
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    std::thread::Builder::new()
        .name("trash".into())
        .spawn(move || {
            if let Err(error) = rustix::process::setpriority_process(None, 19) {
                tracing::debug!(%error, "the trash thread keeps its priority");
            }
            for path in rx {
                if let Err(error) = devgate_fs::temp::remove_tree_at(&path)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(%error, path = %path.display(), "cannot remove a torn-down project's folder; removed at the next start");
                }
            }
        })?;
    Ok(tx)
}
