//! A local "kubelet" for the kwok nodes of `k8s/testenv`: kwok fakes pod
//! status and serves the kubelet API, but runs nothing. This runs each
//! devgate pod (label `app.kubernetes.io/managed-by=devgate`) bound to a node
//! as a local process, the way a kubelet would run its container:
//!
//! - first its init containers, one after the other, each to a zero exit
//!   (a dev pod's copies the agent into an emptyDir), then the command of
//!   the pod's container: `agent` or the agent image's
//!   `/usr/local/bin/agent` is the workspace's agent binary, a command under
//!   a mount path runs from the volume's host directory (the dev pod's copied
//!   agent), anything else comes from this machine's PATH; each with its
//!   `env` and the Secrets of its `envFrom` (read from the API server);
//! - volumes: a PersistentVolumeClaim is the hostPath directory of the volume
//!   it is bound to (made by kube-controller-manager's provisioner, removed
//!   with the claim), an emptyDir a fresh directory. There is no mount
//!   namespace, so mount paths are translated: an env value or working dir
//!   at or below a mount path gets the host directory instead;
//! - ports: there is no network namespace either, so each container port gets
//!   a free loopback port; env values naming the port (`3000`,
//!   `0.0.0.0:3000`) get it instead, `HOST=0.0.0.0` becomes `127.0.0.1`;
//! - then kwok is told where the pod is: a `PortForward` named after the pod
//!   (each container port to its loopback port). No `Exec` or `Logs`: the
//!   gateway never execs into pods nor reads their logs (it asks the agents);
//!   each container's output goes to `<pod dir>/<container>.log` for a
//!   failing test to look at;
//! - readiness: once every port accepts connections, the pod is annotated
//!   `devgate.test/started`, which kwok's pod-ready stage waits for
//!   (`k8s/testenv/kwok-stages.yaml`): a pod is Ready only when its process
//!   serves, as with a readiness probe;
//! - a pod deleted (or gone) gets SIGTERM to its process group, SIGKILL after
//!   5 s. Processes die with this test process (`--die-with-parent` for the
//!   agent, `setpriv --pdeathsig` for others).
//!
//! Not emulated: users (processes run as this test's user), resource limits,
//! the read-only root filesystem, probes other than "the port accepts".

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// Annotation kwok's pod-ready stage waits for.
pub(crate) const STARTED: &str = "devgate.test/started";
const MANAGER: &str = "devgate-test-kubelet";

/// What the kubelet did, for tests to look at.
#[derive(Default)]
pub(crate) struct Record {
    /// Pods started: (namespace, pod) → the running process's description.
    pub(crate) running: HashMap<(String, String), RunningPod>,
    /// Errors met while starting pods (a test may assert there are none).
    pub(crate) errors: Vec<String>,
}

/// A pod run by this kubelet.
#[derive(Clone, Debug)]
pub(crate) struct RunningPod {
    /// Host directory of each mount path.
    pub(crate) mounts: BTreeMap<String, PathBuf>,
    /// Container port → loopback port.
    pub(crate) ports: BTreeMap<u16, u16>,
    /// The init containers that ran to a zero exit, in order.
    pub(crate) init_ran: Vec<String>,
    /// The program the container runs, as a host path.
    pub(crate) program: PathBuf,
}

/// How long an init container may run.
const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The agent image's binary (`k8s/images/agent.Dockerfile`).
const AGENT_IMAGE_BIN: &str = "/usr/local/bin/agent";

struct Proc {
    child: tokio::process::Child,
    key: (String, String),
}

/// Runs the kubelet loop forever (on its own thread's runtime).
pub(crate) async fn run(
    client: Client,
    agent_bin: PathBuf,
    work: PathBuf,
    record: Arc<Mutex<Record>>,
) {
    let mut procs: HashMap<String, Proc> = HashMap::new();
    // Pods that could not be started: reported once, never retried.
    let mut failed: std::collections::HashSet<String> = std::collections::HashSet::new();
    let pods: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=devgate");
    loop {
        let list = match pods.list(&lp).await {
            Ok(l) => l.items,
            Err(e) => {
                eprintln!("kubelet: list pods: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut seen = Vec::new();
        for pod in &list {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let deleting = pod.metadata.deletion_timestamp.is_some();
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if !deleting {
                seen.push(uid.clone());
            }
            if deleting || node.is_none() || procs.contains_key(&uid) || failed.contains(&uid) {
                continue;
            }
            match start(&client, pod, &agent_bin, &work).await {
                Ok(Some((child, running))) => {
                    let key = (
                        pod.metadata.namespace.clone().unwrap_or_default(),
                        pod.metadata.name.clone().unwrap_or_default(),
                    );
                    lock(&record).running.insert(key.clone(), running.clone());
                    procs.insert(
                        uid.clone(),
                        Proc {
                            child,
                            key: key.clone(),
                        },
                    );
                    tokio::spawn(mark_ready(client.clone(), key, running));
                }
                // Not startable yet (its claim is not bound): next round.
                Ok(None) => {}
                Err(e) => {
                    let what = format!(
                        "{}/{}: {e}",
                        pod.metadata.namespace.as_deref().unwrap_or_default(),
                        pod.metadata.name.as_deref().unwrap_or_default()
                    );
                    eprintln!("kubelet: cannot start {what}");
                    lock(&record).errors.push(what);
                    failed.insert(uid.clone());
                }
            }
        }
        let gone: Vec<String> = procs
            .keys()
            .filter(|uid| !seen.contains(uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(mut p) = procs.remove(&uid) {
                lock(&record).running.remove(&p.key);
                tokio::spawn(async move { stop(&mut p.child).await });
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn lock(r: &Arc<Mutex<Record>>) -> std::sync::MutexGuard<'_, Record> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// SIGTERM to the process group, SIGKILL after 5 s.
async fn stop(child: &mut tokio::process::Child) {
    let Some(pid) = child.id() else { return };
    if let Some(pgid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::TERM);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            let _ = child.wait().await;
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Host directories of the pod's volumes; `None` while a claim is unbound.
async fn volumes(
    client: &Client,
    pod: &Pod,
    ns: &str,
    pod_dir: &Path,
) -> anyhow::Result<Option<BTreeMap<String, PathBuf>>> {
    let mut out = BTreeMap::new();
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no spec"))?;
    for v in spec.volumes.iter().flatten() {
        if let Some(claim) = &v.persistent_volume_claim {
            let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
                .get(&claim.claim_name)
                .await?;
            let Some(pv_name) = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
                return Ok(None);
            };
            if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
                return Ok(None);
            }
            let pv = Api::<PersistentVolume>::all(client.clone())
                .get(&pv_name)
                .await?;
            let path = pv
                .spec
                .as_ref()
                .and_then(|s| s.host_path.as_ref())
                .map(|h| PathBuf::from(&h.path))
                .ok_or_else(|| anyhow::anyhow!("volume {pv_name} is not a hostPath volume"))?;
            out.insert(v.name.clone(), path);
        } else if v.empty_dir.is_some() {
            let dir = pod_dir.join(&v.name);
            std::fs::create_dir_all(&dir)?;
            out.insert(v.name.clone(), dir);
        } else {
            anyhow::bail!("volume {} is of a kind this kubelet cannot make", v.name);
        }
    }
    Ok(Some(out))
}

/// A path inside the container as a host path (mounts are not namespaced).
fn translate(mounts: &BTreeMap<String, PathBuf>, value: &str) -> String {
    // The longest mount path first (`/app/x` before `/app`).
    let mut by_len: Vec<_> = mounts.iter().collect();
    by_len.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    for (mount, host) in by_len {
        if value == mount {
            return host.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(&format!("{mount}/")) {
            return host.join(rest).display().to_string();
        }
    }
    value.to_owned()
}

async fn env(
    client: &Client,
    ns: &str,
    c: &Container,
    mounts: &BTreeMap<String, PathBuf>,
    ports: &BTreeMap<u16, u16>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for from in c.env_from.iter().flatten() {
        let Some(r) = &from.secret_ref else {
            anyhow::bail!("envFrom other than a Secret");
        };
        match Api::<Secret>::namespaced(client.clone(), ns)
            .get(&r.name)
            .await
        {
            Ok(s) => {
                for (k, v) in s.data.unwrap_or_default() {
                    out.push((k, String::from_utf8(v.0)?));
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 && r.optional == Some(true) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for e in c.env.iter().flatten() {
        if e.value_from.is_some() {
            anyhow::bail!("env {} uses valueFrom", e.name);
        }
        let mut v = translate(mounts, e.value.as_deref().unwrap_or_default());
        for (cport, local) in ports {
            if v == cport.to_string() {
                v = local.to_string();
            } else if v == format!("0.0.0.0:{cport}") {
                v = format!("127.0.0.1:{local}");
            }
        }
        if e.name == "HOST" && v == "0.0.0.0" {
            v = "127.0.0.1".to_owned();
        }
        out.retain(|(k, _)| k != &e.name);
        out.push((e.name.clone(), v));
    }
    Ok(out)
}

/// A container made ready to spawn: its command (output piped, env and
/// working dir set), where its mounts are, its ports.
struct Prepared {
    cmd: tokio::process::Command,
    program: PathBuf,
    mounts: BTreeMap<String, PathBuf>,
    ports: BTreeMap<u16, u16>,
}

async fn prepare(
    client: &Client,
    ns: &str,
    c: &Container,
    vols: &BTreeMap<String, PathBuf>,
    pod_dir: &Path,
    agent_bin: &Path,
) -> anyhow::Result<Prepared> {
    let mut mounts = BTreeMap::new();
    for m in c.volume_mounts.iter().flatten() {
        let host = vols
            .get(&m.name)
            .ok_or_else(|| anyhow::anyhow!("mount of unknown volume {}", m.name))?;
        mounts.insert(m.mount_path.clone(), host.clone());
    }
    let mut ports = BTreeMap::new();
    for p in c.ports.iter().flatten() {
        ports.insert(u16::try_from(p.container_port)?, free_port()?);
    }
    let vars = env(client, ns, c, &mounts, &ports).await?;
    let cwd = c
        .working_dir
        .as_deref()
        .map(|w| translate(&mounts, w))
        .unwrap_or_else(|| pod_dir.display().to_string());
    std::fs::create_dir_all(&cwd)?;
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    argv.extend(c.args.clone().unwrap_or_default());
    let Some(first) = argv.first().cloned() else {
        anyhow::bail!("no command (images' entrypoints are not known here)");
    };
    let args: Vec<String> = argv[1..].iter().map(|a| translate(&mounts, a)).collect();
    let program = if first == "agent" || first == AGENT_IMAGE_BIN {
        agent_bin.to_path_buf()
    } else {
        PathBuf::from(translate(&mounts, &first))
    };
    let is_agent = program.file_name().is_some_and(|n| n == "agent");
    let mut cmd = if is_agent {
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&args);
        cmd
    } else {
        let mut cmd = tokio::process::Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(&program)
            .args(&args);
        cmd
    };
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if is_agent {
        // The agent (the workspace's, or the copy in a dev pod) ends with
        // this test process, and stops its process groups as it goes.
        cmd.env("AGENT_DIE_WITH_PARENT", "true");
    }
    Ok(Prepared {
        cmd,
        program,
        mounts,
        ports,
    })
}

async fn start(
    client: &Client,
    pod: &Pod,
    agent_bin: &Path,
    work: &Path,
) -> anyhow::Result<Option<(tokio::process::Child, RunningPod)>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no spec"))?;
    let [c] = spec.containers.as_slice() else {
        anyhow::bail!("pods with one container only");
    };
    let pod_dir = work.join(&ns).join(&name);
    std::fs::create_dir_all(&pod_dir)?;
    let Some(vols) = volumes(client, pod, &ns, &pod_dir).await? else {
        return Ok(None);
    };

    // Init containers: each to a zero exit before the next, as a kubelet
    // runs them (no restarts here: a failure fails the pod).
    let mut init_ran = Vec::new();
    for init in spec.init_containers.iter().flatten() {
        let mut p = prepare(client, &ns, init, &vols, &pod_dir, agent_bin).await?;
        let log = pod_dir.join(format!("{}.log", init.name));
        let out = Arc::new(Mutex::new(std::fs::File::create(&log)?));
        let mut child = p.cmd.spawn()?;
        let readers = [
            child
                .stdout
                .take()
                .map(|o| tokio::spawn(cri_log(o, "stdout", out.clone()))),
            child
                .stderr
                .take()
                .map(|e| tokio::spawn(cri_log(e, "stderr", out.clone()))),
        ];
        let status = tokio::time::timeout(INIT_TIMEOUT, child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("init container {} did not finish", init.name))??;
        for r in readers.into_iter().flatten() {
            let _ = r.await;
        }
        if !status.success() {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow::bail!("init container {} failed ({status}): {output}", init.name);
        }
        init_ran.push(init.name.clone());
    }

    let Prepared {
        mut cmd,
        program,
        mounts,
        ports,
    } = prepare(client, &ns, c, &vols, &pod_dir, agent_bin).await?;
    let log = pod_dir.join(format!("{}.log", c.name));
    let out = Arc::new(Mutex::new(std::fs::File::create(&log)?));
    let mut child = cmd.spawn()?;
    if let Some(o) = child.stdout.take() {
        tokio::spawn(cri_log(o, "stdout", out.clone()));
    }
    if let Some(e) = child.stderr.take() {
        tokio::spawn(cri_log(e, "stderr", out));
    }

    // Where kwok sends this pod's port-forwards.
    let rules = |kind: &str, plural: &str| {
        let ar = ApiResource {
            group: "kwok.x-k8s.io".into(),
            version: "v1alpha1".into(),
            api_version: "kwok.x-k8s.io/v1alpha1".into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar)
    };
    let pp = PatchParams::apply(MANAGER).force();
    let meta = json!({"name": name, "namespace": ns});
    let forwards: Vec<_> = ports
        .iter()
        .map(|(cport, local)| json!({"ports": [cport], "target": {"address": "127.0.0.1", "port": local}}))
        .collect();
    rules("PortForward", "portforwards")
        .patch(
            &name,
            &pp,
            &Patch::Apply(json!({
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "PortForward",
            "metadata": meta, "spec": {"forwards": forwards}})),
        )
        .await?;

    let running = RunningPod {
        mounts,
        ports,
        init_ran,
        program,
    };
    Ok(Some((child, running)))
}

/// Copies a container's output into its log file in the CRI format
/// kubelets write: `<RFC 3339 time> <stream> F <line>`.
async fn cri_log(
    from: impl tokio::io::AsyncRead + Unpin,
    stream: &'static str,
    file: Arc<Mutex<std::fs::File>>,
) {
    use std::io::Write as _;
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{ts} {stream} F {line}");
    }
}

/// Annotates the pod started once each of its ports accepts connections
/// (within 60 s; a process that never listens leaves its pod unready).
async fn mark_ready(client: Client, key: (String, String), running: RunningPod) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for local in running.ports.values() {
        while tokio::net::TcpStream::connect(("127.0.0.1", *local))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                eprintln!("kubelet: {}/{} never listened on {local}", key.0, key.1);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let patch = json!({"metadata": {"annotations": {STARTED: "true"}}});
    let pods: Api<Pod> = Api::namespaced(client, &key.0);
    if let Err(e) = pods
        .patch(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        eprintln!("kubelet: annotate {}/{}: {e}", key.0, key.1);
    }
}
