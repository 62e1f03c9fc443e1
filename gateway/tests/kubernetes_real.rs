//! The Kubernetes runtime against a real control plane (`k8s/testenv`:
//! etcd, kube-apiserver, kube-controller-manager, kube-scheduler built from
//! Go modules, kwok nodes; pods run as local processes by
//! support/kubelet.rs). The manifests of `k8s/` are applied for real and the
//! gateway binary runs as the `devgate-gateway` service account with a token
//! from the TokenRequest API, so every call it makes goes through the real
//! authorizer and admission chain.
//!
//! What kwok cannot show: NetworkPolicy enforcement (no CNI; the policies are
//! only validated by the API server) and container isolation (the kubelet
//! here runs processes without namespaces, users or limits).

#[path = "support/kustomize.rs"]
mod kustomize;
#[path = "support/testenv.rs"]
mod testenv;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use testenv::{Cluster, cluster, eventually};
use tests::gateway::Gateway;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(60);
const SA_NS: &str = "devgate";
const SA: &str = "devgate-gateway";

/// Applies the production overlay (base + its patches) for real, once per
/// test binary: the API server validates every object, and the ClusterRole
/// and its binding are what the gateway's service account gets.
async fn install_manifests(c: &Cluster) -> &'static Vec<String> {
    static APPLIED: tokio::sync::OnceCell<Vec<String>> = tokio::sync::OnceCell::const_new();
    APPLIED
        .get_or_init(|| async {
            let admin = c.admin().await;
            let dir = testenv::repo().join("k8s/overlays/production");
            let mut objects = kustomize::render(&dir).expect("render the production overlay");
            // The gateway of these tests runs off-cluster and reaches pods
            // through the API server's port-forward: the opt-in RBAC.
            objects.extend(
                kustomize::render(&testenv::repo().join("k8s/port-forward"))
                    .expect("render the port-forward RBAC"),
            );
            // Namespaces first, as kubectl does.
            objects.sort_by_key(|o| o["kind"] != "Namespace");
            let mut applied = Vec::new();
            for o in &objects {
                let what = format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                );
                if let Err(e) = testenv::apply(&admin, o, "devgate-test-manifests").await {
                    panic!("the API server refused {what} of k8s/overlays/production: {e}");
                }
                applied.push(what);
            }
            applied
        })
        .await
}

/// A kubeconfig of the gateway's service account (TokenRequest, one hour).
async fn sa_kubeconfig(c: &Cluster, dir: &std::path::Path) -> PathBuf {
    install_manifests(c).await;
    c.service_account_kubeconfig(SA_NS, SA, &dir.join("gateway.kubeconfig"))
        .await
}

/// A gateway on the Kubernetes runtime, as the service account, reaching
/// agents and dev servers through the API server's port-forward.
struct Env {
    c: &'static Cluster,
    admin: Client,
    gw: Gateway,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start(extra: &[&str]) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        Env::start_in(dir, extra).await
    }

    async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Env {
        Env::start_with(dir, extra, None, &[]).await
    }

    /// A gateway whose secret is `secret` (replicas share one: agent tokens
    /// are derived from it), or the one kept in its data dir.
    async fn start_with(
        dir: tempfile::TempDir,
        extra: &[&str],
        secret: Option<&str>,
        envs: &[(String, String)],
    ) -> Env {
        let c = cluster().await;
        let kubeconfig = sa_kubeconfig(c, dir.path()).await;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        if let Some(s) = secret {
            std::fs::write(data.join("secret"), s).expect("write the secret");
        }
        let port = tests::free_port();
        let mut b = Gateway::builder()
            .listen(format!("127.0.0.1:{port}").parse().expect("addr"))
            .data_dir(&data)
            .without_secret()
            .stderr_to(dir.path().join("gateway.log"))
            .env("KUBECONFIG", kubeconfig.display().to_string())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(envs)
            .args_from(&[
                "--runtime",
                "kubernetes",
                "--k8s-agent-access",
                "port-forward",
                // One replica (the twins share an S3 store), and agents
                // run as local processes that reach the gateway on
                // loopback, not at its Service's name.
                "--archive-shared",
                "true",
                "--objects-base-url",
                &format!("http://127.0.0.1:{port}"),
            ]);
        if !extra.contains(&"--k8s-ready-timeout-secs") {
            b = b.args_from(&["--k8s-ready-timeout-secs", "60"]);
        }
        for a in extra {
            b = b.arg(*a);
        }
        let gw = b.start().await.expect("start the gateway");
        Env {
            c,
            admin: c.admin().await,
            gw,
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    async fn status(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.gw.req(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.status(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put_file(&self, project: &str, path: &str, body: &str) {
        let r = self
            .gw
            .put(&format!("/api/projects/{project}/files/{path}"))
            .body(body.to_owned())
            .send()
            .await
            .expect("put");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(
            status,
            200,
            "put {path}: {text}; gateway log:\n{}",
            self.log()
        );
    }

    async fn get_file(&self, project: &str, path: &str) -> (u16, String) {
        let r = self
            .gw
            .get(&format!("/api/projects/{project}/files/{path}"))
            .send()
            .await
            .expect("get");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// The project's pods of one component, as the admin sees them.
    async fn pods(&self, ns: &str, component: &str) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.admin.clone(), ns)
            .list(
                &ListParams::default().labels(&format!("app.kubernetes.io/component={component}")),
            )
            .await
            .expect("list pods")
            .items
    }
}

trait ArgsFrom {
    fn args_from(self, args: &[&str]) -> Self;
}

impl ArgsFrom for tests::gateway::GatewayBuilder {
    fn args_from(mut self, args: &[&str]) -> Self {
        for a in args {
            self = self.arg(*a);
        }
        self
    }
}

fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        _ => 0,
    }
}

/// Whether the service account may do `verb` on `resource[/sub]` in `ns`, as
/// the real authorizer answers.
async fn can_i(sa: &Client, verb: &str, resource: &str, sub: Option<&str>, ns: &str) -> bool {
    let (group, resource) = resource
        .split_once('.')
        .map_or(("", resource), |(r, g)| (g, r));
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: sub.map(Into::into),
                namespace: Some(ns.into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    Api::<SelfSubjectAccessReview>::all(sa.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("access review")
        .status
        .is_some_and(|s| s.allowed)
}

#[tokio::test]
async fn the_manifests_apply_and_the_service_account_gets_only_its_rules() {
    let c = cluster().await;
    let applied = install_manifests(c).await;
    for want in [
        "Namespace/devgate",
        "ServiceAccount/devgate-gateway",
        "ClusterRole/devgate-gateway",
        "ClusterRoleBinding/devgate-gateway",
        "ClusterRole/devgate-gateway-port-forward",
        "ClusterRoleBinding/devgate-gateway-port-forward",
        "ConfigMap/devgate-gateway",
        "Deployment/devgate-gateway",
        "PodDisruptionBudget/devgate-gateway",
    ] {
        assert!(
            applied.iter().any(|a| a == want),
            "{want} not in {applied:?}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = testenv::client_from(&sa_kubeconfig(c, dir.path()).await)
        .await
        .expect("sa client");

    // Granted: what opening a project needs.
    Api::<Namespace>::all(sa.clone())
        .list(&ListParams::default())
        .await
        .expect("the gateway lists namespaces");
    for (verb, res, sub) in [
        ("create", "namespaces", None),
        ("patch", "deployments.apps", None),
        // From the opt-in port-forward RBAC. kube-rs speaks WebSocket: the
        // API server authorizes the upgrade as `get` (and, since 1.35, also
        // `create`).
        ("create", "pods", Some("portforward")),
        ("get", "pods", Some("portforward")),
    ] {
        assert!(
            can_i(&sa, verb, res, sub, "proj-any").await,
            "the service account may not {verb} {res}{}",
            sub.map(|s| format!("/{s}")).unwrap_or_default()
        );
    }

    // Not granted: the authorizer refuses for real.
    let e = Api::<Secret>::namespaced(sa.clone(), SA_NS)
        .get("devgate-gateway")
        .await
        .expect_err("secrets are never read back");
    assert_eq!(api_code(&e), 403, "{e}");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "direct"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod");
    let e = Api::<Pod>::namespaced(sa.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .expect_err("pods are made by Deployments, never directly");
    assert_eq!(api_code(&e), 403, "{e}");
    let e = Api::<k8s_openapi::api::core::v1::Node>::all(sa.clone())
        .list(&ListParams::default())
        .await
        .expect_err("nodes are none of the gateway's business");
    assert_eq!(api_code(&e), 403, "{e}");
    assert!(!can_i(&sa, "update", "deployments.apps", None, "proj-any").await);
    assert!(!can_i(&sa, "get", "secrets", None, "proj-any").await);
    // Terminals, exec and logs of containers go to the agent in the dev pod:
    // no pod exec, attach or logs for the gateway.
    for (verb, sub) in [
        ("create", "exec"),
        ("get", "exec"),
        ("create", "attach"),
        ("get", "log"),
    ] {
        assert!(
            !can_i(&sa, verb, "pods", Some(sub), "proj-any").await,
            "{verb} pods/{sub} granted"
        );
    }
}

/// The tail of a terminal WebSocket until `want` shows (within `T`).
async fn terminal_until(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    want: &str,
) -> String {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if text.contains(want) {
            return text;
        }
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => out.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => panic!("terminal ended before {want:?} ({other:?}); output: {text:?}"),
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn terminal(env: &Env, project: &str, query: &str) -> Ws {
    terminal_hello(env, project, query).await.0
}

/// A terminal and its first frame, `{"type": "session", "id", "offset", ...}`.
async fn terminal_hello(env: &Env, project: &str, query: &str) -> (Ws, Value) {
    let url = format!(
        "ws://{}/api/projects/{project}/terminal?token={}&{query}",
        env.gw.addr,
        env.gw.token(&[project])
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("terminal upgrade: {e}; gateway log:\n{}", env.log()));
    let hello = match tokio::time::timeout(T, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => {
            let v: Value = serde_json::from_str(&t).expect("json");
            assert_eq!(v["type"], "session", "first frame {t}");
            v
        }
        other => panic!("no session frame: {other:?}"),
    };
    (ws, hello)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Terminal output until at least `n` bytes came (or the exit, when
/// `until_exit`), within `T`; the exit frame's code.
async fn terminal_read(ws: &mut Ws, out: &mut Vec<u8>, n: usize, until_exit: bool) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if !until_exit && out.len() >= n {
            return None;
        }
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => out.extend_from_slice(&b),
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["type"] == "exit" {
                    return v["code"].as_i64();
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "terminal ended ({other:?}); output so far: {:?}",
                String::from_utf8_lossy(out)
            ),
        }
    }
}

/// The host directory of a project's volume, from the kubelet's record.
fn volume_of(c: &Cluster, ns: &str, component: &str) -> Option<PathBuf> {
    let r = c.kubelet.lock().unwrap_or_else(|p| p.into_inner());
    r.running
        .iter()
        .find(|((n, pod), _)| n == ns && pod.starts_with(component))
        .and_then(|(_, p)| p.mounts.get("/app").cloned())
}

#[tokio::test]
async fn a_project_lives_through_the_real_api_server() {
    let env = Env::start(&[]).await;
    let (p, ns) = ("life", "proj-life");
    let opened = env.gw.open_project(p).await;
    let opened = opened.unwrap_or_else(|e| panic!("open: {e}; gateway log:\n{}", env.log()));
    assert_eq!(opened["status"], "active");

    // What the API server holds now.
    let admin = &env.admin;
    let n = Api::<Namespace>::all(admin.clone())
        .get(ns)
        .await
        .expect("namespace");
    let labels = n.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("devgate.dev/project").map(String::as_str),
        Some(p)
    );
    Api::<NetworkPolicy>::namespaced(admin.clone(), ns)
        .get("project-isolation")
        .await
        .expect("the NetworkPolicy was accepted by the API server");
    let pvc = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), ns)
        .get("project-storage")
        .await
        .expect("pvc");
    assert_eq!(pvc.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    assert_eq!(
        pvc.spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref()),
        Some("devgate-standard"),
        "the default StorageClass"
    );
    let fm = env.pods(ns, "file-manager").await;
    let [fm] = fm.as_slice() else {
        panic!("one file-manager pod: {fm:?}")
    };
    let fm_node = fm
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("scheduled");
    assert!(fm_node.starts_with("kwok-node-"), "{fm_node}");
    assert_eq!(
        fm.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    let volume = volume_of(env.c, ns, "file-manager").expect("the kubelet runs the agent");
    assert!(
        volume.starts_with("/tmp/hostpath_pv/"),
        "{}",
        volume.display()
    );

    // Files through the agent (reached over the API server's port-forward
    // into kwok, which forwards to the local agent), on the real volume.
    env.put_file(p, "hello.txt", "hello from a kwok node").await;
    assert_eq!(
        std::fs::read_to_string(volume.join("hello.txt")).expect("on the volume"),
        "hello from a kwok node"
    );
    assert_eq!(
        env.get_file(p, "hello.txt").await,
        (200, "hello from a kwok node".to_owned())
    );

    // Exec and a terminal through the agent.
    let (s, out) = env
        .post(
            &format!("/api/projects/{p}/exec"),
            json!({"argv": ["sh", "-c", "cat hello.txt; echo; pwd"]}),
        )
        .await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["exit_code"], 0, "{out}");
    let stdout = out["stdout"].as_str().unwrap_or_default();
    assert!(stdout.starts_with("hello from a kwok node\n"), "{out}");
    assert_eq!(
        stdout.lines().nth(1).map(PathBuf::from),
        Some(volume.clone())
    );
    let mut ws = terminal(&env, p, "cols=80&rows=24").await;
    ws.send(Message::binary(b"echo agent-$((6*7))\n".to_vec()))
        .await
        .expect("keys");
    terminal_until(&mut ws, "agent-42").await;
    drop(ws);

    // A dev server: its Deployment and Service, its pod on the file-manager's
    // node (the volume is ReadWriteOnce: required pod affinity), the preview
    // through the API server's port-forward to the process the kubelet runs.
    env.put_file(p, "web/index.html", "<h1>served from the pod</h1>")
        .await;
    // Serves until a file `stop` appears, then exits with 3.
    let start = "rm -f stop; python3 -m http.server \"$PORT\" --bind \"$HOST\" & \
                 while [ ! -e stop ]; do sleep 0.2; done; kill $!; exit 3";
    let (s, c) = env
        .post(
            &format!("/api/projects/{p}/containers"),
            json!({"name": "web", "port": 8000, "start": start}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let (s, c) = env
        .post(
            &format!("/api/projects/{p}/containers/web/start"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{c}; gateway log:\n{}", env.log());
    assert_eq!(c["status"], "running");
    Api::<Deployment>::namespaced(admin.clone(), ns)
        .get("dev-web")
        .await
        .expect("deployment");
    Api::<Service>::namespaced(admin.clone(), ns)
        .get("dev-web")
        .await
        .expect("service");
    let dev = env.pods(ns, "dev-server").await;
    let [dev] = dev.as_slice() else {
        panic!("one dev pod: {dev:?}")
    };
    assert_eq!(
        dev.spec.as_ref().and_then(|s| s.node_name.clone()),
        Some(fm_node.clone())
    );

    let page = env
        .gw
        .http()
        .get(env.gw.url("/"))
        .header("Host", format!("web.{p}.localhost"))
        .bearer_auth(env.gw.token(&[p]))
        .send()
        .await
        .expect("preview");
    assert_eq!(page.status().as_u16(), 200);
    assert_eq!(
        page.text().await.unwrap_or_default(),
        "<h1>served from the pod</h1>"
    );

    // The pod's spec as the kubelet ran it: the init container copied the
    // agent into the emptyDir, and the dev container's program is that copy.
    let dev_run = {
        let r = env.c.kubelet.lock().unwrap_or_else(|p| p.into_inner());
        r.running
            .iter()
            .find(|((n, pod), _)| n == ns && pod.starts_with("dev-web-"))
            .map(|(_, run)| run.clone())
            .expect("the kubelet runs the dev pod")
    };
    assert_eq!(dev_run.init_ran, ["install-agent"]);
    let agent_dir = dev_run
        .mounts
        .get("/devgate")
        .expect("the agent's emptyDir");
    assert_eq!(dev_run.program, agent_dir.join("agent"));
    assert_eq!(
        std::fs::read(&dev_run.program).expect("the copied agent"),
        std::fs::read(tests::bin("agent")).expect("the agent binary"),
    );

    // Logs: the dev server's output, kept by the agent in the dev pod.
    let logs = eventually(T, "the request in the dev server's log", || async {
        let r = env
            .gw
            .get(&format!("/api/projects/{p}/containers/web/logs"))
            .send()
            .await
            .ok()?;
        let text = r.text().await.ok()?;
        text.contains("GET / HTTP").then_some(text)
    })
    .await;
    assert!(logs.contains("200"), "{logs}");

    // A terminal inside the container: a PTY of the dev pod's agent, in the
    // container's directory. It reattaches like the project's shell: a
    // client that names the bytes it has gets exactly the rest.
    let n = 30_000;
    let cmd =
        format!("stty -echo; echo in-$((6*7)) $(basename $PWD); seq 1 {n}; read x; echo end-$x");
    let query = format!("container=web&cols=80&rows=24&cmd={}", urlencode(&cmd));
    let (mut ws, hello) = terminal_hello(&env, p, &query).await;
    let id = hello["id"].as_str().expect("session id").to_owned();
    assert!(id.starts_with("web_"), "a container session names it: {id}");
    assert_eq!(hello["offset"], 0);
    let expected: Vec<u8> = format!(
        "in-42 web\r\n{}",
        (1..=n).map(|i| format!("{i}\r\n")).collect::<String>()
    )
    .into_bytes();
    let mut first = Vec::new();
    terminal_read(&mut ws, &mut first, 50_000, false).await;
    drop(ws);
    let had = first.len();
    assert!(had < expected.len(), "the first client has part of it");
    let (mut ws, hello) = terminal_hello(&env, p, &format!("session={id}&offset={had}")).await;
    assert_eq!(
        (
            hello["id"].as_str(),
            hello["offset"].as_u64(),
            hello["truncated"].as_bool()
        ),
        (Some(id.as_str()), Some(had as u64), Some(false))
    );
    let mut rest = Vec::new();
    terminal_read(&mut ws, &mut rest, expected.len() - had, false).await;
    let mut joined = first;
    joined.extend_from_slice(&rest);
    assert_eq!(
        String::from_utf8_lossy(&joined[..expected.len().min(joined.len())]),
        String::from_utf8_lossy(&expected),
        "no byte twice, none missing across the reattach"
    );
    ws.send(Message::binary(b"again\n".to_vec()))
        .await
        .expect("keys");
    let code = terminal_read(&mut ws, &mut joined, 0, true).await;
    assert_eq!(code, Some(0));
    assert!(
        String::from_utf8_lossy(&joined).contains("end-again"),
        "the same shell took the input"
    );
    drop(ws);

    // Exec in the container: through the dev pod's agent, in the container's
    // directory on the volume, with the pod's env (PORT: the kubelet's
    // loopback port for 8000).
    let (s, out) = env
        .post(
            &format!("/api/projects/{p}/exec"),
            json!({"argv": ["sh", "-c", "pwd; echo \"port=$PORT token=${AGENT_TOKEN:-none}\""], "container": "web"}),
        )
        .await;
    assert_eq!(s, 200, "{out}; gateway log:\n{}", env.log());
    assert_eq!(out["exit_code"], 0, "{out}");
    let local_port = dev_run.ports[&8000];
    assert_eq!(
        out["stdout"],
        format!(
            "{}\nport={local_port} token=none\n",
            volume.join("web").display()
        ),
        "{out}"
    );

    // The dev server ends by itself: the pod stays (its agent is PID 1), and
    // the container becomes failed with the exit code its agent saw.
    let pod_before = env.pods(ns, "dev-server").await[0].metadata.uid.clone();
    env.put_file(p, "web/stop", "").await;
    let shown = eventually(T, "the container failed with code 3", || async {
        let (s, c) = env
            .status(
                reqwest::Method::GET,
                &format!("/api/projects/{p}/containers/web"),
                None,
            )
            .await;
        (s == 200 && c["status"] == "failed").then_some(c)
    })
    .await;
    assert_eq!(shown["exit_code"], 3, "{shown}");
    // Started again with the same spec: the same pod, whose agent starts
    // the server again (as the local runtime does), and it serves.
    let (s, c) = env
        .post(
            &format!("/api/projects/{p}/containers/web/start"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{c}; gateway log:\n{}", env.log());
    assert_eq!(c["status"], "running");
    let pods_after = env.pods(ns, "dev-server").await;
    assert_eq!(pods_after.len(), 1);
    assert_eq!(pods_after[0].metadata.uid, pod_before, "the same pod");
    // kwok's pod stays Ready throughout (a real readiness probe would have
    // turned it unready within seconds of the exit, and the start would
    // wait for it again), so the server may not listen yet: as with the
    // local runtime's restarts, it serves shortly.
    eventually(T, "the restarted server serving", || async {
        let page = env
            .gw
            .http()
            .get(env.gw.url("/"))
            .header("Host", format!("web.{p}.localhost"))
            .bearer_auth(env.gw.token(&[p]))
            .send()
            .await
            .ok()?;
        (page.status().as_u16() == 200).then_some(())
    })
    .await;

    // Stop: the Deployment and its pod go; the pod's agent stops the dev
    // server's process group on its SIGTERM.
    let (s, c) = env
        .post(&format!("/api/projects/{p}/containers/web/stop"), json!({}))
        .await;
    assert_eq!(s, 200, "{c}");
    assert!(
        env.pods(ns, "dev-server").await.is_empty(),
        "the stop answers once the dev pod is gone"
    );
    // kwok removes the pod object at once; the local kubelet then stops the
    // process (SIGTERM: the agent stops the server's group).
    eventually(T, "the dev server's port closed", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", local_port))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let e = Api::<Deployment>::namespaced(admin.clone(), ns)
        .get("dev-web")
        .await
        .expect_err("gone");
    assert_eq!(api_code(&e), 404);

    // Running again (a new pod), with a terminal open in it when the
    // project hibernates: the terminal ends with the reason `hibernated`,
    // as the project's own shells do.
    let (s, c) = env
        .post(
            &format!("/api/projects/{p}/containers/web/start"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{c}; gateway log:\n{}", env.log());
    let mut ws = terminal(&env, p, "container=web&cols=80&rows=24").await;
    ws.send(Message::binary(b"echo held-$((6*7))\n".to_vec()))
        .await
        .expect("keys");
    terminal_until(&mut ws, "held-42").await;
    let ended = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.contains("\"exit\"") => {
                    return serde_json::from_str::<Value>(&t).expect("json");
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("no exit frame: {other:?}"),
            }
        }
    });

    // Hibernate: archive, then the namespace is deleted and finalized by the
    // controller-manager (the gateway waits until it is gone); the volume
    // goes with its claim.
    let (s, h) = env
        .post(&format!("/api/projects/{p}/hibernate"), json!({}))
        .await;
    assert_eq!(s, 200, "{h}; gateway log:\n{}", env.log());
    let exit = ended.await.expect("the terminal's reader");
    assert_eq!(exit["reason"], "hibernated", "{exit}");
    assert_eq!(h["status"], "hibernated");
    let e = Api::<Namespace>::all(admin.clone())
        .get(ns)
        .await
        .expect_err("namespace gone");
    assert_eq!(api_code(&e), 404);
    eventually(T, "the volume's directory removed", || async {
        (!volume.exists()).then_some(())
    })
    .await;

    // Open again: a new namespace and volume, the files restored into it.
    let (s, o) = env
        .post(&format!("/api/projects/{p}/open"), json!({}))
        .await;
    assert_eq!(s, 200, "{o}; gateway log:\n{}", env.log());
    let new_volume = volume_of(env.c, ns, "file-manager").expect("a new agent");
    assert_ne!(new_volume, volume);
    assert_eq!(
        env.get_file(p, "hello.txt").await,
        (200, "hello from a kwok node".to_owned())
    );
    assert_eq!(
        std::fs::read_to_string(new_volume.join("web/index.html")).expect("restored"),
        "<h1>served from the pod</h1>"
    );
    let errors = env
        .c
        .kubelet
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .errors
        .clone();
    assert!(
        errors.iter().all(|e| !e.starts_with(ns)),
        "kubelet errors: {errors:?}"
    );
}

#[tokio::test]
async fn a_changed_storage_class_leaves_existing_volumes_alone() {
    let env = Env::start(&[]).await;
    let (p, ns) = ("sc", "proj-sc");
    env.gw
        .open_project(p)
        .await
        .unwrap_or_else(|e| panic!("open: {e}; gateway log:\n{}", env.log()));
    env.put_file(p, "kept.txt", "kept").await;
    let Env {
        admin, mut gw, dir, ..
    } = env;
    gw.kill();
    drop(gw);

    // The operator changes the class and the size of project volumes; the
    // gateway comes back (its start-up pass opens active projects) and is
    // asked to open.
    let env = Env::start_in(
        dir,
        &[
            "--k8s-storage-class",
            "devgate-other",
            "--k8s-storage-size",
            "7Gi",
        ],
    )
    .await;
    let (s, o) = env
        .post(&format!("/api/projects/{p}/open"), json!({}))
        .await;
    assert_eq!(s, 200, "{o}; gateway log:\n{}", env.log());
    assert!(
        // The API server's refusal, not any "422" (timestamps hold those).
        !env.log().contains("code: 422") && !env.log().contains("is immutable"),
        "the gateway hit the immutable claim: {}",
        env.log()
    );
    let pvc = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), ns)
        .get("project-storage")
        .await
        .expect("pvc");
    assert_eq!(
        pvc.spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref()),
        Some("devgate-standard"),
        "the existing volume keeps its class"
    );
    // devgate-standard does not allow expansion: the size stays, and the
    // log says why.
    assert_eq!(claim_size(&pvc), "5Gi");
    assert!(
        env.log().contains("does not allow expansion"),
        "{}",
        env.log()
    );
    assert_eq!(env.get_file(p, "kept.txt").await, (200, "kept".to_owned()));

    // A project opened now gets the new class.
    env.gw
        .open_project("sc2")
        .await
        .unwrap_or_else(|e| panic!("open: {e}; gateway log:\n{}", env.log()));
    let pvc = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), "proj-sc2")
        .get("project-storage")
        .await
        .expect("pvc");
    assert_eq!(
        pvc.spec.and_then(|s| s.storage_class_name).as_deref(),
        Some("devgate-other")
    );
}

fn claim_size(pvc: &PersistentVolumeClaim) -> String {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_larger_size_expands_a_volume_whose_class_allows_it_and_nothing_shrinks() {
    let c = cluster().await;
    let admin = c.admin().await;
    testenv::apply(
        &admin,
        &json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "devgate-grow"},
            "provisioner": "kubernetes.io/host-path",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
            "allowVolumeExpansion": true
        }),
        "devgate-test",
    )
    .await
    .expect("an expandable StorageClass");
    let grow = |size: &'static str| {
        [
            "--k8s-storage-class",
            "devgate-grow",
            "--k8s-storage-size",
            size,
        ]
    };
    let env = Env::start(&grow("1Gi")).await;
    let (p, ns) = ("grow", "proj-grow");
    env.gw
        .open_project(p)
        .await
        .unwrap_or_else(|e| panic!("open: {e}; gateway log:\n{}", env.log()));
    env.put_file(p, "kept.txt", "kept").await;
    let claims = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), ns);
    assert_eq!(
        claim_size(&claims.get("project-storage").await.expect("pvc")),
        "1Gi"
    );

    // Larger: the claim asks for it (the API server's resize admission
    // checks the class), and the project keeps its files.
    let Env { mut gw, dir, .. } = env;
    gw.kill();
    drop(gw);
    let env = Env::start_in(dir, &grow("2Gi")).await;
    let (s, o) = env
        .post(&format!("/api/projects/{p}/open"), json!({}))
        .await;
    assert_eq!(s, 200, "{o}; gateway log:\n{}", env.log());
    let pvc = claims.get("project-storage").await.expect("pvc");
    assert_eq!(claim_size(&pvc), "2Gi", "gateway log:\n{}", env.log());
    assert!(
        env.log().contains("expanding the project volume"),
        "{}",
        env.log()
    );
    assert_eq!(env.get_file(p, "kept.txt").await, (200, "kept".to_owned()));

    // Smaller: never shrunk, the project still opens.
    let Env { mut gw, dir, .. } = env;
    gw.kill();
    drop(gw);
    let env = Env::start_in(dir, &grow("1Gi")).await;
    let (s, o) = env
        .post(&format!("/api/projects/{p}/open"), json!({}))
        .await;
    assert_eq!(s, 200, "{o}; gateway log:\n{}", env.log());
    assert_eq!(
        claim_size(&claims.get("project-storage").await.expect("pvc")),
        "2Gi"
    );
    assert!(env.log().contains("a claim never shrinks"), "{}", env.log());
    assert!(!env.log().contains("code: 422"), "{}", env.log());
    assert_eq!(env.get_file(p, "kept.txt").await, (200, "kept".to_owned()));
}

#[tokio::test]
async fn a_namespace_stuck_terminating() {
    let env = Env::start(&["--k8s-ready-timeout-secs", "6"]).await;
    let (p, ns) = ("stuck", "proj-stuck");
    env.gw
        .open_project(p)
        .await
        .unwrap_or_else(|e| panic!("open: {e}; gateway log:\n{}", env.log()));
    env.put_file(p, "important.txt", "do not lose me").await;
    // Something in the namespace holds a finalizer nobody removes.
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "held", "finalizers": ["devgate.test/hold"]}
    }))
    .expect("configmap");
    let cms = Api::<ConfigMap>::namespaced(env.admin.clone(), ns);
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create held configmap");

    let (s, h) = env
        .post(&format!("/api/projects/{p}/hibernate"), json!({}))
        .await;
    // The archive is verified before the teardown, so hibernation succeeds
    // and the teardown's timeout is only logged.
    assert_eq!(s, 200, "{h}");
    assert_eq!(h["status"], "hibernated");
    assert!(
        env.log().contains("teardown after hibernation failed"),
        "{}",
        env.log()
    );
    // The namespace controller says what holds it.
    eventually(
        T,
        "the namespace controller naming the finalizer",
        || async {
            let n = Api::<Namespace>::all(env.admin.clone())
                .get(ns)
                .await
                .ok()?;
            let status = n.status?;
            assert_eq!(status.phase.as_deref(), Some("Terminating"));
            status
                .conditions?
                .iter()
                .any(|c| {
                    c.type_ == "NamespaceFinalizersRemaining"
                        && c.status == "True"
                        && c.message
                            .as_deref()
                            .unwrap_or_default()
                            .contains("devgate.test/hold")
                })
                .then_some(())
        },
    )
    .await;

    // Opening restores into a fresh namespace, which first waits for the
    // old one to go: after one bounded wait (the ready timeout, on a
    // watch), the open answers a clear 503 and the project is `failed`,
    // its snapshot untouched; the log names what holds the namespace.
    let (s, o) = env
        .post(&format!("/api/projects/{p}/open"), json!({}))
        .await;
    assert_eq!(s, 503, "{o}");
    assert_eq!(o["error"]["code"], "unavailable", "{o}");
    let message = o["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("stuck being removed") && message.contains("failed"),
        "{o}"
    );
    let (_, now) = env
        .status(reqwest::Method::GET, &format!("/api/projects/{p}"), None)
        .await;
    assert_eq!(now["status"], "failed", "{now}");
    let log = env.log();
    assert!(
        log.contains("still terminating after 6s") && log.contains("devgate.test/hold"),
        "the log names the cause:\n{log}"
    );

    // Once the finalizer is gone the controller-manager finishes, and the
    // project opens with its files.
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop the finalizer");
    eventually(T, "the namespace gone", || async {
        Api::<Namespace>::all(env.admin.clone())
            .get(ns)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let (s, o) = env
        .post(&format!("/api/projects/{p}/open"), json!({}))
        .await;
    assert_eq!(s, 200, "{o}; gateway log:\n{}", env.log());
    assert_eq!(
        env.get_file(p, "important.txt").await,
        (200, "do not lose me".to_owned())
    );
}

#[tokio::test]
async fn a_rescheduled_file_manager_follows_its_dev_servers() {
    let env = Env::start(&[]).await;
    let (p, ns) = ("follow", "proj-follow");
    env.gw
        .open_project(p)
        .await
        .unwrap_or_else(|e| panic!("open: {e}; gateway log:\n{}", env.log()));
    env.put_file(p, "web/index.html", "ok").await;
    let (s, c) = env
        .post(
            &format!("/api/projects/{p}/containers"),
            json!({"name": "web", "port": 8000, "start": "exec python3 -m http.server \"$PORT\" --bind \"$HOST\""}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let (s, c) = env
        .post(
            &format!("/api/projects/{p}/containers/web/start"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{c}; gateway log:\n{}", env.log());
    let node = |pod: &Pod| pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let dev = env.pods(ns, "dev-server").await;
    let [dev] = dev.as_slice() else {
        panic!("one dev pod: {dev:?}")
    };
    let dev_node = node(dev).expect("scheduled");
    let old = env.pods(ns, "file-manager").await;
    let [old] = old.as_slice() else {
        panic!("one file-manager pod: {old:?}")
    };
    assert_eq!(node(old), Some(dev_node.clone()));

    // The file-manager's pod goes (a drain, an eviction); its replacement is
    // scheduled by the real scheduler, and with required affinity to the
    // project's pods it can only go where the dev server runs. (On this
    // two-node cluster the scheduler happened to pick that node even
    // without the affinity when tried, so the affinity in the pod is what
    // is asserted beside the node.)
    let old_name = old.metadata.name.clone().expect("name");
    Api::<Pod>::namespaced(env.admin.clone(), ns)
        .delete(&old_name, &Default::default())
        .await
        .expect("delete the file-manager pod");
    let new = eventually(T, "a new file-manager pod scheduled", || async {
        env.pods(ns, "file-manager")
            .await
            .into_iter()
            .find(|p| p.metadata.name.as_deref() != Some(&old_name) && node(p).is_some())
    })
    .await;
    assert_eq!(
        node(&new),
        Some(dev_node),
        "the file-manager follows its dev server"
    );
    let affinity =
        serde_json::to_value(new.spec.as_ref().and_then(|s| s.affinity.clone())).expect("json");
    assert_eq!(
        affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"],
        json!({"matchLabels": {"devgate.dev/project": p}})
    );
    // And the project's files are served again through the new pod.
    eventually(T, "files through the new file-manager", || async {
        (env.get_file(p, "web/index.html").await == (200, "ok".to_owned())).then_some(())
    })
    .await;
}

#[tokio::test]
async fn pod_security_restricted_admits_the_projects_pods_and_refuses_others() {
    let env = Env::start(&[]).await;
    let (p, ns) = ("psa", "proj-psa");
    env.gw
        .open_project(p)
        .await
        .unwrap_or_else(|e| panic!("open: {e}; gateway log:\n{}", env.log()));
    let n = Api::<Namespace>::all(env.admin.clone())
        .get(ns)
        .await
        .expect("namespace");
    let labels: BTreeMap<String, String> = n.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted"),
        "{labels:?}"
    );
    // The gateway's own pods pass `restricted`: the file-manager runs, and so
    // does a dev server.
    env.put_file(p, "app/index.html", "ok").await;
    let (s, c) = env
        .post(
            &format!("/api/projects/{p}/containers"),
            json!({"name": "app", "port": 8000, "start": "exec python3 -m http.server \"$PORT\" --bind \"$HOST\""}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let (s, c) = env
        .post(
            &format!("/api/projects/{p}/containers/app/start"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{c}; gateway log:\n{}", env.log());
    // Its pod, with the agent's init container, was admitted; the same spec
    // with that init container's security context removed is refused, so
    // admission did check it.
    let dev = env.pods(ns, "dev-server").await;
    let [dev] = dev.as_slice() else {
        panic!("one dev pod: {dev:?}")
    };
    let mut spec = serde_json::to_value(dev.spec.clone().expect("spec")).expect("json");
    assert_eq!(spec["initContainers"][0]["name"], "install-agent");
    spec["initContainers"][0]
        .as_object_mut()
        .expect("init container")
        .remove("securityContext");
    spec.as_object_mut().expect("spec").remove("nodeName");
    let copy: Pod = serde_json::from_value(json!({
        "metadata": {"name": "init-without-context"},
        "spec": spec,
    }))
    .expect("pod");
    let e = Api::<Pod>::namespaced(env.admin.clone(), ns)
        .create(&PostParams::default(), &copy)
        .await
        .expect_err("restricted checks init containers");
    assert_eq!(api_code(&e), 403, "{e}");
    assert!(e.to_string().contains("install-agent"), "{e}");

    // A pod with the defaults (may run as root, escalate privileges, keep
    // capabilities, no seccomp profile) is refused by admission, whoever
    // asks (here the admin).
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "escape"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod");
    let e = Api::<Pod>::namespaced(env.admin.clone(), ns)
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("restricted refuses a privileged pod");
    assert_eq!(api_code(&e), 403, "{e}");
    assert!(
        e.to_string().contains("violates PodSecurity \"restricted"),
        "{e}"
    );
}

#[tokio::test]
async fn a_project_over_its_quota() {
    // The runtime's own quota for each project namespace, here one pod.
    let env = Env::start(&["--k8s-quota-pods", "1"]).await;
    let (p, ns) = ("quota", "proj-quota");
    env.gw
        .open_project(p)
        .await
        .unwrap_or_else(|e| panic!("open: {e}; gateway log:\n{}", env.log()));
    let limits = Api::<k8s_openapi::api::core::v1::LimitRange>::namespaced(env.admin.clone(), ns)
        .get("project-limits")
        .await
        .expect("the runtime's LimitRange");
    assert!(limits.spec.is_some());
    // The quota controller counts the file-manager before admission refuses.
    eventually(T, "the quota's usage", || async {
        let q = Api::<ResourceQuota>::namespaced(env.admin.clone(), ns)
            .get("project-quota")
            .await
            .ok()?;
        let used = q.status?.used?;
        (used.get("pods")?.0 == "1").then_some(())
    })
    .await;
    env.put_file(p, "web/index.html", "ok").await;
    let (s, c) = env
        .post(
            &format!("/api/projects/{p}/containers"),
            json!({"name": "web", "port": 8000, "start": "exec python3 -m http.server \"$PORT\" --bind \"$HOST\""}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let (s, c) = env
        .post(
            &format!("/api/projects/{p}/containers/web/start"),
            json!({}),
        )
        .await;
    // The ReplicaSet cannot make the pod (quota admission); the runtime
    // sees the Deployment's ReplicaFailure condition on its watch and says
    // so (409, not the ready timeout's 503), and removes the Deployment so
    // that it does not start behind the client's back later.
    assert_eq!(s, 409, "{c}");
    assert_eq!(c["error"]["code"], "conflict", "{c}");
    let message = c["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("over its quota") && message.contains("exceeded quota"),
        "{c}"
    );
    eventually(T, "the refused Deployment removed", || async {
        Api::<Deployment>::namespaced(env.admin.clone(), ns)
            .get("dev-web")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let (_, list) = env
        .status(
            reqwest::Method::GET,
            &format!("/api/projects/{p}/containers"),
            None,
        )
        .await;
    assert!(list.to_string().contains("\"failed\""), "{list}");
}

#[tokio::test]
async fn the_service_account_and_kube_system() {
    let c = cluster().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = testenv::client_from(&sa_kubeconfig(c, dir.path()).await)
        .await
        .expect("sa client");
    // Least privilege holds for reads: no Secret of kube-system is readable.
    let secrets = Api::<Secret>::namespaced(sa.clone(), "kube-system");
    let e = secrets
        .list(&ListParams::default())
        .await
        .expect_err("no list on secrets");
    assert_eq!(api_code(&e), 403, "{e}");
    // Writes: RBAC allows them cluster-wide (the gateway makes namespaces),
    // the ValidatingAdmissionPolicy of k8s/base refuses them outside
    // namespaces labelled as devgate's: in kube-system, and relabelling a
    // namespace it does not own.
    let probe: Secret = serde_json::from_value(json!({
        "metadata": {"name": "devgate-test-probe"},
        "stringData": {"k": "v"}
    }))
    .expect("secret");
    let e = secrets
        .create(&PostParams::default(), &probe)
        .await
        .expect_err("the policy refuses a Secret in kube-system");
    assert_eq!(api_code(&e), 403, "{e}");
    assert!(e.to_string().contains("devgate-gateway-namespaces"), "{e}");
    let namespaces = Api::<Namespace>::all(sa.clone());
    let adopt = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "devgate"}}});
    let e = namespaces
        .patch(
            "kube-system",
            &PatchParams::default(),
            &Patch::Merge(&adopt),
        )
        .await
        .expect_err("the policy refuses adopting kube-system");
    assert_eq!(api_code(&e), 403, "{e}");
}

tests::on_both_s3_servers!(two_replicas_on_one_postgresql_take_turns);

async fn two_replicas_on_one_postgresql_take_turns(s3: &tests::S3Server) {
    let pg = tests::postgres::Postgres::start();
    tests::postgres::create_db(&pg, "devgate").await;
    let url = pg.url("devgate");
    // What replicas share in production: the database, the secret and the
    // archive bucket (the agents upload to it themselves).
    s3.create_bucket("twins").await.expect("bucket");
    let secret = format!("replica-secret-{:032x}", rand::random::<u128>());
    let replica = || async {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = ["--database-url", &url, "--archive", "s3://twins/archives"];
        Env::start_with(dir, &args, Some(&secret), &s3.env()).await
    };
    let a = replica().await;
    let b = replica().await;
    // One project name per server: both variants run at once on the one
    // control plane.
    let (p, ns) = match s3.kind {
        tests::S3Kind::Moto => ("twin", "proj-twin"),
        tests::S3Kind::S3sFs => ("twin-s3s", "proj-twin-s3s"),
    };
    a.gw.open_project(p)
        .await
        .unwrap_or_else(|e| panic!("open on a: {e}; log:\n{}", a.log()));
    // b reaches the agent a's open made (its own port-forward, the token
    // derived from the shared secret), and a reads what b wrote.
    b.put_file(p, "from-b.txt", "written through replica b")
        .await;
    assert_eq!(
        a.get_file(p, "from-b.txt").await,
        (200, "written through replica b".to_owned())
    );

    // b hibernates; a sees it in the shared store and opens the project again
    // with the file.
    let (s, h) = b
        .post(&format!("/api/projects/{p}/hibernate"), json!({}))
        .await;
    assert_eq!(s, 200, "{h}; log:\n{}", b.log());
    let e = Api::<Namespace>::all(a.admin.clone())
        .get(ns)
        .await
        .expect_err("namespace gone");
    assert_eq!(api_code(&e), 404);
    let (_, seen) = a
        .status(reqwest::Method::GET, &format!("/api/projects/{p}"), None)
        .await;
    assert_eq!(seen["status"], "hibernated", "{seen}");
    let (s, o) = a.post(&format!("/api/projects/{p}/open"), json!({})).await;
    assert_eq!(s, 200, "{o}; log:\n{}", a.log());
    assert_eq!(
        b.get_file(p, "from-b.txt").await,
        (200, "written through replica b".to_owned())
    );
    // The replicas take turns here. Racing them (hibernate on one against
    // open and writes on the other) is tested with the local runtime in
    // tests/tests/replicas.rs: the coordination (compare-and-set statuses,
    // store leases, the PostgreSQL write gate) is the runtime-independent
    // lifecycle's.
}
