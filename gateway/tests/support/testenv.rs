//! The real control plane of `k8s/testenv` for tests: `up.sh` runs once per
//! test binary (its watchdog runs `down.sh` when this process ends), a local
//! kubelet (support/kubelet.rs) runs devgate's pods as processes on its own
//! thread, and helpers give admin and service-account clients and apply
//! rendered manifests with server-side apply.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Scope;
use kube::{Api, Client};
use serde_json::Value;

#[path = "kubelet.rs"]
pub(crate) mod kubelet;

/// A running control plane.
pub(crate) struct Cluster {
    /// up.sh's state dir (certificates, logs, kubeconfigs).
    pub(crate) dir: PathBuf,
    pub(crate) admin_kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub(crate) server: String,
    /// What the local kubelet did.
    pub(crate) kubelet: Arc<Mutex<kubelet::Record>>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The repository's root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The cluster of this test binary, started on first use.
pub(crate) async fn cluster() -> &'static Cluster {
    let c = tokio::task::spawn_blocking(|| CLUSTER.get_or_init(start))
        .await
        .expect("start the cluster");
    match c {
        Ok(c) => c,
        Err(e) => panic!("the test control plane did not start: {e}"),
    }
}

fn start() -> Result<Cluster, String> {
    gateway::tls::install_provider();
    let t0 = Instant::now();
    let up = repo().join("k8s/testenv/up.sh");
    let out = Command::new("bash")
        .arg(&up)
        .env("DEVGATE_TESTENV_OWNER_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", up.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", up.display(), out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kubeconfig = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    let dir = kubeconfig
        .parent()
        .ok_or("up.sh printed no kubeconfig path")?
        .to_path_buf();
    let env = std::fs::read_to_string(dir.join("env")).map_err(|e| e.to_string())?;
    let server = env
        .lines()
        .find_map(|l| l.strip_prefix("TESTENV_SERVER="))
        .ok_or("no TESTENV_SERVER in the env file")?
        .to_owned();
    eprintln!(
        "testenv: control plane up in {:.1}s at {server} ({})",
        t0.elapsed().as_secs_f64(),
        dir.display()
    );

    // The kubelet on a thread of its own, with its own runtime: it outlives
    // every test's runtime.
    let record = Arc::new(Mutex::new(kubelet::Record::default()));
    let agent_bin = Path::new(env!("CARGO_BIN_EXE_gateway"))
        .parent()
        .ok_or("no target dir")?
        .join("agent");
    if !agent_bin.exists() {
        return Err(format!(
            "{} not built: run `cargo build -p agent` (cargo test --workspace builds it)",
            agent_bin.display()
        ));
    }
    let (kc, rec, work) = (kubeconfig.clone(), record.clone(), dir.join("pods"));
    std::thread::Builder::new()
        .name("kubelet".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("kubelet runtime");
            rt.block_on(async move {
                let client = client_from(&kc).await.expect("kubelet client");
                kubelet::run(client, agent_bin, work, rec).await;
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(Cluster {
        dir,
        admin_kubeconfig: kubeconfig,
        server,
        kubelet: record,
    })
}

/// A client from a kubeconfig file.
pub(crate) async fn client_from(path: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

impl Cluster {
    /// A client with the admin's certificate (system:masters).
    pub(crate) async fn admin(&self) -> Client {
        client_from(&self.admin_kubeconfig)
            .await
            .expect("admin client")
    }

    /// Writes a kubeconfig that authenticates as the service account `ns/sa`
    /// with a token from the TokenRequest API (one hour), and answers its path.
    pub(crate) async fn service_account_kubeconfig(
        &self,
        ns: &str,
        sa: &str,
        path: &Path,
    ) -> PathBuf {
        let api: Api<ServiceAccount> = Api::namespaced(self.admin().await, ns);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let token = api
            .create_token_request(sa, &PostParams::default(), &req)
            .await
            .expect("token request")
            .status
            .expect("token status")
            .token;
        let ca = self.dir.join("pki/ca.crt");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: testenv\n  context:\n    cluster: testenv\n    user: {sa}\ncurrent-context: testenv\n",
            self.server,
            ca.display()
        );
        std::fs::write(path, text).expect("write kubeconfig");
        path.to_path_buf()
    }
}

/// Server-side apply of one object (any kind the API server serves).
pub(crate) async fn apply(
    client: &Client,
    obj: &Value,
    manager: &str,
) -> kube::Result<DynamicObject> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            obj["metadata"]["namespace"].as_str().unwrap_or("default"),
            &ar,
        ),
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(obj),
    )
    .await
}

/// Polls `f` every 100 ms until it answers `Some`, for at most `timeout`.
pub(crate) async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
