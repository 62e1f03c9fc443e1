//! The Kubernetes runtime against kube-rs's mock service: every request it
//! sends (method, path, body) for open (fresh and half-made), start, stop,
//! hibernate's teardown, restore, readiness failures, and the API server
//! answering 409, 403, 404, 500 or not at all; every object sent is checked
//! against the Kubernetes schema (k8s-openapi types, no unknown field).

#[path = "support/kustomize.rs"]
mod kustomize;
#[path = "support/mock.rs"]
mod mock;
#[path = "support/schema.rs"]
mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use gateway::error::Error;
use gateway::runtime::kubernetes::{KubernetesArgs, KubernetesRuntime, Settings};
use gateway::runtime::{AgentAddress, ContainerSpec, Runtime, ShellTarget};
use mock::{ApiServer, deployment, status_body};
use serde_json::{Value, json};

const NS: &str = "proj-demo";

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    k: KubernetesArgs,
}

fn settings(extra: &[&str]) -> Settings {
    let mut argv = vec!["test"];
    argv.extend_from_slice(extra);
    let args = Args::parse_from(argv);
    let mut s = Settings::new(
        &args.k,
        "proj-",
        "devgate/agent:test",
        b"a gateway secret of some length",
    )
    .expect("settings");
    s.rewatch_pause = Duration::from_millis(5);
    s.ready_timeout = Duration::from_millis(400);
    s.api_timeout = Duration::from_millis(300);
    s.s3_port = Some(9000);
    s
}

fn runtime(extra: &[&str]) -> (Arc<KubernetesRuntime>, ApiServer) {
    let (client, api) = mock::pair();
    (
        Arc::new(KubernetesRuntime::new(client, settings(extra))),
        api,
    )
}

fn spawn<T: Send + 'static>(
    f: impl Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::spawn(f)
}

/// The namespace check then the six applies of an open, in order; answers
/// the check with "no such namespace" and each apply with what was sent.
async fn expect_open_applies(api: &mut ApiServer) -> Vec<Value> {
    expect_open_applies_over(api, false).await
}

/// The same, over a namespace that exists (`existing`) or not.
async fn expect_open_applies_over(api: &mut ApiServer, existing: bool) -> Vec<Value> {
    let check = api.expect("GET", &format!("/api/v1/namespaces/{NS}")).await;
    if existing {
        check.respond(
            200,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS},
            "status": {"phase": "Active"}}),
        );
    } else {
        check.fail(404, "NotFound", "not found");
    }
    expect_applies(api, existing).await
}

/// The applies of an open, after its namespace check.
async fn expect_applies(api: &mut ApiServer, existing: bool) -> Vec<Value> {
    let mut sent = Vec::new();
    sent.push(api.expect_apply(&format!("/api/v1/namespaces/{NS}")).await);
    sent.push(
        api.expect_apply(&format!(
            "/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/project-isolation"
        ))
        .await,
    );
    // Bounds of the whole namespace: a quota, and limits for containers
    // that declare none.
    let quota = api
        .expect_apply(&format!(
            "/api/v1/namespaces/{NS}/resourcequotas/project-quota"
        ))
        .await;
    assert_eq!(quota["spec"]["hard"]["limits.ephemeral-storage"], "20Gi");
    assert_eq!(quota["spec"]["hard"]["pods"], "20");
    sent.push(quota);
    sent.push(
        api.expect_apply(&format!(
            "/api/v1/namespaces/{NS}/limitranges/project-limits"
        ))
        .await,
    );
    // The claim is created only when absent (its spec is immutable once bound).
    let pvc = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/project-storage");
    let get = api.expect("GET", &pvc).await;
    if existing {
        get.respond(
            200,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "project-storage", "namespace": NS},
            "spec": {"storageClassName": "an-older-class", "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "5Gi"}}},
            "status": {"phase": "Bound"}}),
        );
    } else {
        get.fail(404, "NotFound", "not found");
        sent.push(expect_claim_create(api).await);
    }
    sent.push(
        api.expect_apply(&format!("/api/v1/namespaces/{NS}/secrets/agent"))
            .await,
    );
    sent.push(
        api.expect_apply(&format!(
            "/apis/apps/v1/namespaces/{NS}/deployments/file-manager"
        ))
        .await,
    );
    sent.push(
        api.expect_apply(&format!("/api/v1/namespaces/{NS}/services/file-manager"))
            .await,
    );
    sent
}

/// The claim is created (POST, never applied), by the runtime's field
/// manager; answers with the object as sent.
async fn expect_claim_create(api: &mut ApiServer) -> Value {
    let ex = api
        .expect(
            "POST",
            &format!("/api/v1/namespaces/{NS}/persistentvolumeclaims"),
        )
        .await;
    assert!(
        ex.query.contains("fieldManager=devgate-gateway"),
        "{}",
        ex.query
    );
    let body = ex.body.clone().expect("create has a body");
    ex.respond(201, body.clone());
    body
}

async fn expect_deployment_get(api: &mut ApiServer, name: &str, ready: bool) {
    api.expect(
        "GET",
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}"),
    )
    .await
    .respond(200, deployment(NS, name, ready));
}

#[tokio::test]
async fn open_fresh_applies_the_environment_and_waits_for_the_agent() {
    let (rt, mut api) = runtime(&[]);
    let call = spawn({
        let rt = rt.clone();
        async move { rt.ensure("demo").await }
    });
    let sent = expect_open_applies(&mut api).await;
    // Not ready at first: the runtime watches the Deployment (a list by
    // name, then a watch from its resourceVersion) instead of polling.
    expect_deployment_get(&mut api, "file-manager", false).await;
    let deployments = format!("/apis/apps/v1/namespaces/{NS}/deployments");
    api.expect_list(&deployments, "file-manager").await.list(
        "apps/v1",
        "DeploymentList",
        vec![deployment(NS, "file-manager", false)],
    );
    let watch = api.expect_watch(&deployments, "file-manager").await;
    assert!(watch.query.contains("resourceVersion=1"), "{}", watch.query);
    watch.events(&[json!({"type": "MODIFIED", "object": deployment(NS, "file-manager", true)})]);
    let endpoint = call.await.unwrap().expect("open");

    assert_eq!(
        endpoint.address,
        AgentAddress::Tcp("http://file-manager.proj-demo.svc:7070".into())
    );
    assert_eq!(endpoint.token, rt.agent_token("demo"));
    assert_eq!(endpoint.token.len(), 64);

    let [ns, netpol, quota, limits, pvc, secret, fm, svc] = sent.as_slice() else {
        panic!("eight objects")
    };
    assert_eq!(quota["kind"], "ResourceQuota");
    assert_eq!(
        quota["spec"]["hard"],
        json!({"pods": "20", "limits.cpu": "8", "limits.memory": "16Gi",
            "limits.ephemeral-storage": "20Gi", "requests.storage": "50Gi"})
    );
    assert_eq!(limits["kind"], "LimitRange");
    assert_eq!(limits["spec"]["limits"][0]["type"], "Container");
    assert_eq!(
        limits["spec"]["limits"][0]["default"]["ephemeral-storage"],
        "2Gi"
    );
    assert_eq!(ns["metadata"]["labels"]["devgate.dev/project"], "demo");
    assert_eq!(
        ns["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "devgate"
    );
    // Pod Security admission: `restricted` (kubernetes_real.rs shows the
    // project's pods admitted and others refused by a real API server).
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );

    // Ingress only from the gateway's pods (not its whole namespace, not
    // the ingress controller: previews go through the gateway) and the
    // project itself; egress DNS, the internet but not the cluster's
    // ranges, the S3 endpoint's port, the gateway's pods and the project.
    let spec = &netpol["spec"];
    assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(spec["podSelector"], json!({}));
    let gateway_pods = json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "devgate"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "devgate-gateway"}}
    });
    assert_eq!(
        spec["ingress"],
        json!([{"from": [gateway_pods, {"podSelector": {}}]}])
    );
    assert_eq!(
        spec["egress"][0],
        json!({"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]})
    );
    assert_eq!(
        spec["egress"][1],
        json!({"to": [
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": [
                "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"]}},
            {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10"]}}
        ]}),
        "the internet, on any port, but not the cluster (pods, Services, nodes, metadata)"
    );
    assert_eq!(
        spec["egress"][2],
        json!({"ports": [{"protocol": "TCP", "port": 9000}]})
    );
    // The gateway (bundled templates): its pods on its port, not its whole
    // namespace.
    assert_eq!(
        spec["egress"][3],
        json!({"to": [gateway_pods], "ports": [{"protocol": "TCP", "port": 8080}]})
    );
    assert_eq!(spec["egress"][4]["to"], json!([{"podSelector": {}}]));
    assert_eq!(
        spec["egress"].as_array().unwrap().len(),
        5,
        "nothing else leaves the project"
    );

    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "5Gi");
    assert!(
        pvc["spec"].get("storageClassName").is_none(),
        "cluster default class"
    );

    // The Secret carries the token, base64, and nothing else: no storage
    // credentials in a project's namespace.
    let token_b64 = secret["data"]["AGENT_TOKEN"].as_str().unwrap();
    assert_eq!(b64(token_b64), endpoint.token);
    assert_eq!(
        secret["data"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["AGENT_TOKEN"]
    );

    let pod = &fm["spec"]["template"]["spec"];
    // The file-manager follows the project's dev servers too (both ways).
    assert_eq!(pod["affinity"], project_affinity());
    let c = &pod["containers"][0];
    assert_eq!(c["command"], json!(["agent"]));
    assert_eq!(c["image"], "devgate/agent:test");
    assert_eq!(
        c["volumeMounts"][0],
        json!({"name": "project-storage", "mountPath": "/app"})
    );
    assert_eq!(c["readinessProbe"]["grpc"]["port"], 7070);
    assert_eq!(c["livenessProbe"]["grpc"]["port"], 7070);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "100m", "memory": "128Mi"})
    );
    assert_eq!(
        c["resources"]["limits"],
        json!({"cpu": "1", "memory": "1Gi", "ephemeral-storage": "2Gi"})
    );
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], "agent");
    assert_eq!(pod["automountServiceAccountToken"], false);
    // `/tmp` is bounded too: one project cannot fill the node's disk.
    let tmp = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tmp")
        .expect("a /tmp volume");
    assert_eq!(tmp["emptyDir"]["sizeLimit"], "1Gi");
    assert_eq!(fm["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "project-storage"
    );
    assert_eq!(svc["spec"]["ports"][0]["port"], 7070);
    assert_eq!(
        svc["spec"]["selector"]["app.kubernetes.io/component"],
        "file-manager"
    );
}

fn b64(s: &str) -> String {
    // The schema check already decoded it once; decode by hand here to
    // compare contents.
    let v: k8s_openapi::ByteString = serde_json::from_value(json!(s)).unwrap();
    String::from_utf8(v.0).unwrap()
}

#[tokio::test]
async fn open_again_converges_a_half_made_project() {
    let (rt, mut api) = runtime(&[]);
    // First open: the API server fails on the Secret; open fails, having
    // made the namespace, policy and volume.
    let call = spawn({
        let rt = rt.clone();
        async move { rt.ensure("demo").await }
    });
    api.expect("GET", &format!("/api/v1/namespaces/{NS}"))
        .await
        .fail(404, "NotFound", "not found");
    let mut first = Vec::new();
    first.push(api.expect_apply(&format!("/api/v1/namespaces/{NS}")).await);
    first.push(
        api.expect_apply(&format!(
            "/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/project-isolation"
        ))
        .await,
    );
    for path in ["resourcequotas/project-quota", "limitranges/project-limits"] {
        first.push(
            api.expect_apply(&format!("/api/v1/namespaces/{NS}/{path}"))
                .await,
        );
    }
    let pvc = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/project-storage");
    api.expect("GET", &pvc)
        .await
        .fail(404, "NotFound", "not found");
    first.push(expect_claim_create(&mut api).await);
    let ex = api
        .expect("PATCH", &format!("/api/v1/namespaces/{NS}/secrets/agent"))
        .await;
    ex.fail(500, "InternalError", "etcdserver: request timed out");
    let err = call.await.unwrap().expect_err("open fails");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");

    // Opening again applies everything, the same objects, and converges.
    let call = spawn({
        let rt = rt.clone();
        async move { rt.ensure("demo").await }
    });
    let second = expect_open_applies_over(&mut api, true).await;
    expect_deployment_get(&mut api, "file-manager", true).await;
    call.await.unwrap().expect("second open");
    // The same namespace and policy are applied again; the claim, which now
    // exists, is left as it is (never re-applied: its spec is immutable).
    assert_eq!(
        first[..2],
        second[..2],
        "the same objects are applied again"
    );
    assert!(
        second.iter().all(|o| o["kind"] != "PersistentVolumeClaim"),
        "an existing claim is not applied again"
    );
}

#[tokio::test]
async fn agent_of_a_project_after_a_gateway_restart() {
    let (rt, mut api) = runtime(&[]);
    let call = spawn({
        let rt = rt.clone();
        async move { rt.agent("demo").await }
    });
    expect_deployment_get(&mut api, "file-manager", true).await;
    let endpoint = call.await.unwrap().expect("agent");
    assert_eq!(
        endpoint.address,
        AgentAddress::Tcp("http://file-manager.proj-demo.svc:7070".into())
    );
    // A second runtime (another replica, or after a restart) derives the same token.
    let (other, _api2) = runtime(&[]);
    assert_eq!(other.agent_token("demo"), endpoint.token);
    assert_ne!(other.agent_token("other"), endpoint.token);
    // Known ready now: no more API calls.
    let again = rt.agent("demo").await.expect("cached");
    assert_eq!(again, endpoint);
    assert!(api.try_next(Duration::from_millis(50)).await.is_none());

    // A project without a namespace is not active.
    let call = spawn({
        let rt = rt.clone();
        async move { rt.agent("gone").await }
    });
    api.expect(
        "GET",
        "/apis/apps/v1/namespaces/proj-gone/deployments/file-manager",
    )
    .await
    .fail(404, "NotFound", "namespaces \"proj-gone\" not found");
    assert!(matches!(
        call.await.unwrap(),
        Err(Error::ProjectNotActive(_))
    ));
}

fn web() -> ContainerSpec {
    ContainerSpec {
        name: "web".into(),
        port: 5173,
        ports: vec![],
        start: "npm run dev -- --host".into(),
        env: BTreeMap::from([
            ("VITE_FLAG".to_owned(), "1".to_owned()),
            ("HOST".to_owned(), "::".to_owned()),
            // Never configures the pod's agent.
            ("AGENT_ROOT".to_owned(), "/".to_owned()),
        ]),
    }
}

#[tokio::test]
async fn start_applies_a_deployment_and_service_then_stop_deletes_them() {
    let (rt, mut api) = runtime(&["--k8s-runtime-class", "gvisor"]);
    let call = spawn({
        let rt = rt.clone();
        async move { rt.start_container("demo", &web()).await }
    });
    let d = api
        .expect_apply(&format!(
            "/apis/apps/v1/namespaces/{NS}/deployments/dev-web"
        ))
        .await;
    let s = api
        .expect_apply(&format!("/api/v1/namespaces/{NS}/services/dev-web"))
        .await;
    expect_deployment_get(&mut api, "dev-web", true).await;
    let route = call.await.unwrap().expect("start");
    assert_eq!(
        (route.host.as_str(), route.port),
        ("dev-web.proj-demo.svc", 5173)
    );

    let labels = &d["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["devgate.dev/project"], "demo");
    assert_eq!(labels["devgate.dev/container"], "web");
    let pod = &d["spec"]["template"]["spec"];
    // The agent, copied from its image into an emptyDir by an init
    // container, is the dev container's command (PID 1 in any image).
    let init = &pod["initContainers"][0];
    assert_eq!(init["name"], "install-agent");
    assert_eq!(init["image"], "devgate/agent:test");
    assert_eq!(
        init["command"],
        json!(["/usr/local/bin/agent", "--copy-to", "/devgate/agent"])
    );
    assert_eq!(
        init["volumeMounts"],
        json!([{"name": "devgate-agent", "mountPath": "/devgate"}])
    );
    assert_eq!(
        init["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(pod["initContainers"].as_array().unwrap().len(), 1);
    let c = &pod["containers"][0];
    assert_eq!(c["command"], json!(["/devgate/agent"]));
    assert!(c.get("args").is_none(), "the image's CMD is not passed");
    assert_eq!(c["workingDir"], "/app/web");
    assert_eq!(c["ports"][0]["containerPort"], 5173);
    assert_eq!(
        c["ports"][1],
        json!({"name": "grpc", "containerPort": 7070, "protocol": "TCP"})
    );
    let agent_mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "devgate-agent")
        .expect("the agent's volume");
    assert_eq!(
        agent_mount,
        &json!({"name": "devgate-agent", "mountPath": "/devgate", "readOnly": true})
    );
    let agent_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "devgate-agent")
        .expect("the agent's emptyDir");
    assert_eq!(agent_volume["emptyDir"]["sizeLimit"], "128Mi");
    let env: BTreeMap<String, String> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(env["PORT"], "5173");
    assert_eq!(env["HOST"], "::", "the container's env wins");
    assert_eq!(env["VITE_FLAG"], "1");
    // The agent's settings, not the container's AGENT_ROOT: it serves the
    // volume and runs the start command as its managed process `web`.
    assert_eq!(env["AGENT_ROOT"], "/app");
    assert_eq!(env["AGENT_LISTEN"], "0.0.0.0:7070");
    assert_eq!(env["AGENT_START"], "npm run dev -- --host");
    assert_eq!(env["AGENT_START_NAME"], "web");
    assert_eq!(env["AGENT_START_CWD"], "web");
    assert_eq!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "AGENT_ROOT")
            .count(),
        1
    );
    // The agent's token from its Secret, listed last so that it wins.
    assert_eq!(
        c["envFrom"],
        json!([
            {"secretRef": {"name": "dev-web-env", "optional": true}},
            {"secretRef": {"name": "agent", "optional": false}},
        ])
    );
    assert_eq!(
        c["resources"]["limits"],
        json!({"cpu": "2", "memory": "2Gi", "ephemeral-storage": "2Gi"})
    );
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["runtimeClassName"], "gvisor");
    assert_eq!(pod["affinity"], project_affinity());
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "project-storage"
    );
    assert_eq!(s["spec"]["ports"][0]["port"], 5173);
    assert_eq!(
        s["spec"]["ports"][1],
        json!({"name": "grpc", "port": 7070, "targetPort": 7070, "protocol": "TCP"})
    );
    // The agent stays reachable while the dev server is down.
    assert_eq!(s["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(s["spec"]["selector"]["devgate.dev/container"], "web");

    // The route is known without asking again.
    let again = rt
        .container_route("demo", "web", None)
        .await
        .expect("route");
    assert_eq!(again, route);

    // The container's shells are PTYs of the agent in its pod, reached at
    // the dev Service's agent port with the project's token; the
    // container's env goes along, never an AGENT_* key.
    let shell = rt
        .container_shell("demo", "web", &web().env)
        .await
        .expect("shell");
    let ShellTarget::Agent { endpoint, cwd, env } = shell;
    assert_eq!(
        endpoint.address,
        AgentAddress::Tcp("http://dev-web.proj-demo.svc:7070".into())
    );
    assert_eq!(endpoint.token, rt.agent_token("demo"));
    assert_eq!(cwd, "web");
    assert_eq!(env.get("VITE_FLAG").map(String::as_str), Some("1"));
    assert!(!env.contains_key("AGENT_ROOT"), "{env:?}");

    // Stop: both deleted (the Service already gone counts as stopped).
    let call = spawn({
        let rt = rt.clone();
        async move { rt.stop_container("demo", "web").await }
    });
    let ex = api
        .expect(
            "DELETE",
            &format!("/apis/apps/v1/namespaces/{NS}/deployments/dev-web"),
        )
        .await;
    assert_eq!(ex.body.as_ref().unwrap()["propagationPolicy"], "Background");
    ex.respond(
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    );
    api.expect(
        "DELETE",
        &format!("/api/v1/namespaces/{NS}/services/dev-web"),
    )
    .await
    .fail(404, "NotFound", "services \"dev-web\" not found");
    // Then it waits for the pod to be gone (its agent stops the server's
    // process group on the pod's SIGTERM), as the local runtime's stop does.
    let pod_list = |items: Value| json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
    let ex = api
        .expect("GET", &format!("/api/v1/namespaces/{NS}/pods"))
        .await;
    assert!(
        ex.query.contains("labelSelector=")
            && ex.query.contains("devgate.dev%2Fcontainer%3Dweb")
            && ex.query.contains("devgate.dev%2Fproject%3Ddemo"),
        "{}",
        ex.query
    );
    ex.respond(
        200,
        pod_list(json!([{"metadata": {"name": "dev-web-1", "deletionTimestamp": "2026-01-01T00:00:00Z"}}])),
    );
    assert!(
        !call.is_finished(),
        "answered while the pod was terminating"
    );
    api.expect("GET", &format!("/api/v1/namespaces/{NS}/pods"))
        .await
        .respond(200, pod_list(json!([])));
    call.await.unwrap().expect("stop");

    // Stopped: the route asks the API server, which knows no Deployment.
    let call = spawn({
        let rt = rt.clone();
        async move { rt.container_route("demo", "web", None).await }
    });
    api.expect(
        "GET",
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/dev-web"),
    )
    .await
    .fail(404, "NotFound", "not found");
    assert!(matches!(call.await.unwrap(), Err(Error::Unavailable(_))));
}

/// A container declaring the agent's port is refused before any API call:
/// the agent shares the dev pod's network namespace.
#[tokio::test]
async fn a_container_on_the_agents_port_is_refused() {
    let (rt, mut api) = runtime(&[]);
    for spec in [
        ContainerSpec {
            port: 7070,
            ..web()
        },
        ContainerSpec {
            ports: vec![3000, 7070],
            ..web()
        },
    ] {
        let e = rt
            .start_container("demo", &spec)
            .await
            .expect_err("refused");
        assert!(
            matches!(&e, Error::BadRequest(m) if m.contains("7070")),
            "{e:?}"
        );
    }
    assert_eq!(api.try_next(Duration::from_millis(100)).await, None);
}

/// The required pod affinity every pod of project `demo` carries.
fn project_affinity() -> Value {
    json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"devgate.dev/project": "demo"}},
        "topologyKey": "kubernetes.io/hostname"
    }]}})
}

#[test]
fn cluster_ranges_are_configurable() {
    let s = settings(&["--k8s-cluster-cidrs", "10.8.0.0/14,fd00:10::/64"]);
    let p = serde_json::to_value(gateway::runtime::kubernetes::objects::network_policy(
        &s, NS, "demo",
    ))
    .unwrap();
    assert_eq!(
        p["spec"]["egress"][1]["to"],
        json!([
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.8.0.0/14"]}},
            {"ipBlock": {"cidr": "::/0", "except": ["fd00:10::/64"]}}
        ])
    );
    schema::check(&{
        let mut v = p.clone();
        v["apiVersion"] = json!("networking.k8s.io/v1");
        v["kind"] = json!("NetworkPolicy");
        v
    })
    .expect("a valid NetworkPolicy");
    let args = Args::parse_from(["test", "--k8s-cluster-cidrs", "10.0.0.0"]);
    assert!(
        Settings::new(&args.k, "proj-", "a", b"k")
            .unwrap_err()
            .contains("--k8s-cluster-cidrs")
    );
}

#[tokio::test]
async fn read_write_many_volumes_keep_the_same_affinity() {
    let (rt, mut api) = runtime(&["--k8s-access-mode", "ReadWriteMany"]);
    let call = spawn({
        let rt = rt.clone();
        async move { rt.start_container("demo", &web()).await }
    });
    let d = api
        .expect_apply(&format!(
            "/apis/apps/v1/namespaces/{NS}/deployments/dev-web"
        ))
        .await;
    api.expect_apply(&format!("/api/v1/namespaces/{NS}/services/dev-web"))
        .await;
    expect_deployment_get(&mut api, "dev-web", true).await;
    call.await.unwrap().expect("start");
    // One node per project whatever the access mode: a pod of the project
    // is always with the others.
    assert_eq!(
        d["spec"]["template"]["spec"]["affinity"],
        project_affinity()
    );
    assert!(
        d["spec"]["template"]["spec"]
            .get("runtimeClassName")
            .is_none()
    );
}

#[tokio::test]
async fn teardown_deletes_the_namespace_and_waits_until_it_is_gone_then_restore_opens_afresh() {
    let (rt, mut api) = runtime(&[]);
    // Known active first.
    let call = spawn({
        let rt = rt.clone();
        async move { rt.agent("demo").await }
    });
    expect_deployment_get(&mut api, "file-manager", true).await;
    call.await.unwrap().expect("agent");

    let call = spawn({
        let rt = rt.clone();
        async move { rt.teardown("demo").await }
    });
    let ex = api
        .expect("DELETE", &format!("/api/v1/namespaces/{NS}"))
        .await;
    assert_eq!(ex.body.as_ref().unwrap()["propagationPolicy"], "Background");
    let terminating = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS, "deletionTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": "Terminating"}});
    ex.respond(200, terminating.clone());
    api.expect("GET", &format!("/api/v1/namespaces/{NS}"))
        .await
        .respond(200, terminating.clone());
    // Then a watch until it is gone.
    api.expect_list("/api/v1/namespaces", NS).await.list(
        "v1",
        "NamespaceList",
        vec![terminating.clone()],
    );
    api.expect_watch("/api/v1/namespaces", NS)
        .await
        .events(&[json!({"type": "DELETED", "object": terminating})]);
    call.await.unwrap().expect("teardown");

    // Not active any more: the agent is looked up again and is absent.
    let call = spawn({
        let rt = rt.clone();
        async move { rt.agent("demo").await }
    });
    api.expect(
        "GET",
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/file-manager"),
    )
    .await
    .fail(404, "NotFound", "gone");
    assert!(matches!(
        call.await.unwrap(),
        Err(Error::ProjectNotActive(_))
    ));

    // Restore's runtime part: open makes the whole environment again.
    let call = spawn({
        let rt = rt.clone();
        async move { rt.ensure("demo").await }
    });
    expect_open_applies(&mut api).await;
    expect_deployment_get(&mut api, "file-manager", true).await;
    call.await.unwrap().expect("restore opens");

    // Tearing down what is already gone is fine.
    let call = spawn({
        let rt = rt.clone();
        async move { rt.teardown("demo").await }
    });
    api.expect("DELETE", &format!("/api/v1/namespaces/{NS}"))
        .await
        .fail(404, "NotFound", "gone");
    api.expect("GET", &format!("/api/v1/namespaces/{NS}"))
        .await
        .fail(404, "NotFound", "gone");
    call.await.unwrap().expect("teardown of nothing");
}

#[tokio::test]
async fn teardown_times_out_when_the_namespace_stays() {
    let (rt, mut api) = runtime(&[]);
    let call = spawn({
        let rt = rt.clone();
        async move { rt.teardown("demo").await }
    });
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS, "deletionTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": "Terminating", "conditions": [{
            "type": "NamespaceFinalizersRemaining", "status": "True",
            "reason": "SomeFinalizersRemain",
            "message": "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"}]}});
    api.expect("DELETE", &format!("/api/v1/namespaces/{NS}"))
        .await
        .respond(200, ns.clone());
    let (result, gets) = answer_stuck_namespace(&mut api, call, &ns).await;
    // Stuck: a clear error naming what holds it, after one bounded wait on
    // a watch (the namespace read before and after it, no polling).
    assert!(
        matches!(&result, Err(Error::EnvironmentStuck(m))
            if m.contains("still terminating") && m.contains("example.com/hold")),
        "{result:?}"
    );
    assert_eq!(gets, 2, "one read before the watch, one after it");
}

/// Answers a wait on a namespace that stays terminating: its reads with
/// `ns`, the watcher's list with it, and holds the watch open; gives the
/// call's result and how many plain reads it made.
async fn answer_stuck_namespace<T: std::fmt::Debug>(
    api: &mut ApiServer,
    call: tokio::task::JoinHandle<T>,
    ns: &Value,
) -> (T, usize) {
    let mut held = Vec::new();
    let mut gets = 0;
    let answer = async {
        loop {
            let ex = api.expect_any().await;
            match (ex.method.as_str(), ex.path.as_str()) {
                ("GET", "/api/v1/namespaces") if ex.is_watch_of(NS) => held.push(ex.ignore()),
                ("GET", "/api/v1/namespaces") if ex.is_list_of(NS) => {
                    ex.list("v1", "NamespaceList", vec![ns.clone()]);
                }
                ("GET", "/api/v1/namespaces/proj-demo") => {
                    gets += 1;
                    ex.respond(200, ns.clone());
                }
                (m, p) => panic!("only waits, not {m} {p} ({})", ex.query),
            }
        }
    };
    let result = tokio::select! {
        r = call => r.unwrap(),
        () = answer => unreachable!(),
    };
    (result, gets)
}

#[tokio::test]
async fn open_that_never_becomes_ready_says_why() {
    let (rt, mut api) = runtime(&[]);
    let call = spawn({
        let rt = rt.clone();
        async move { rt.ensure("demo").await }
    });
    expect_open_applies(&mut api).await;
    let mut held = Vec::new();
    let result = loop {
        let ex = api.expect_any().await;
        match ex.path.as_str() {
            p if p.ends_with("/deployments/file-manager") => {
                ex.respond(200, deployment(NS, "file-manager", false))
            }
            // The watch: listed not ready, then nothing happens.
            p if p.ends_with("/deployments") && ex.is_list_of("file-manager") => ex.list(
                "apps/v1",
                "DeploymentList",
                vec![deployment(NS, "file-manager", false)],
            ),
            p if p.ends_with("/deployments") && ex.is_watch_of("file-manager") => {
                held.push(ex.ignore());
            }
            p if p.ends_with("/pods") => {
                assert!(ex.query.contains("labelSelector="), "{}", ex.query);
                ex.respond(200, json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
                    "metadata": {"name": "file-manager-abc"},
                    "status": {"phase": "Pending", "containerStatuses": [{
                        "name": "agent", "image": "devgate/agent:test", "imageID": "", "ready": false,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "ImagePullBackOff",
                            "message": "Back-off pulling image \"devgate/agent:test\""}}
                    }]}
                }]}));
            }
            p if p.ends_with("/events") => {
                assert!(
                    ex.query.contains("fieldSelector=type%3DWarning"),
                    "{}",
                    ex.query
                );
                ex.respond(200, json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [{
                    "metadata": {"name": "e1"}, "involvedObject": {"name": "file-manager-abc", "kind": "Pod"},
                    "reason": "Failed", "message": "Failed to pull image: not found", "type": "Warning"
                }]}));
                break call.await.unwrap();
            }
            other => panic!("unexpected request {} {other}", ex.method),
        }
    };
    let err = result.expect_err("not ready");
    let msg = err.to_string();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(msg.contains("ImagePullBackOff"), "{msg}");
    assert!(msg.contains("Failed to pull image: not found"), "{msg}");
    assert!(msg.contains("file-manager-abc"), "{msg}");
}

/// Each answer of the API server to the first apply of an open, and the
/// error the runtime gives for it.
#[tokio::test]
async fn api_failures_map_to_clear_errors() {
    for (code, reason) in [
        (409, "Conflict"),
        (403, "Forbidden"),
        (404, "NotFound"),
        (500, "InternalError"),
    ] {
        let (rt, mut api) = runtime(&[]);
        let call = spawn({
            let rt = rt.clone();
            async move { rt.ensure("demo").await }
        });
        api.expect("GET", &format!("/api/v1/namespaces/{NS}"))
            .await
            .fail(404, "NotFound", "not found");
        api.expect("PATCH", &format!("/api/v1/namespaces/{NS}"))
            .await
            .respond(
                code,
                status_body(code, reason, "namespace proj-demo: refused"),
            );
        let err = call.await.unwrap().expect_err("fails");
        let (status, _) = err.status_and_code();
        match code {
            409 => assert!(matches!(err, Error::Conflict(_)), "{err:?}"),
            403 => {
                assert!(matches!(err, Error::Internal(_)), "{err:?}");
                assert!(err.to_string().contains("ClusterRole"), "{err}");
            }
            // An apply never meets 404 unless the API server lacks the
            // resource: not the client's fault.
            404 => assert!(matches!(err, Error::Internal(_)), "{err:?}"),
            500 => assert!(matches!(err, Error::Unavailable(_)), "{err:?}"),
            _ => unreachable!(),
        }
        assert_ne!(
            status.as_u16(),
            404,
            "{code} must not read as an unknown project"
        );
        // Nothing more was attempted after the failure.
        assert!(
            api.try_next(Duration::from_millis(30)).await.is_none(),
            "stopped after {code}"
        );
    }
}

#[tokio::test]
async fn an_api_server_that_never_answers_times_out() {
    let (rt, mut api) = runtime(&[]);
    let call = spawn({
        let rt = rt.clone();
        async move { rt.ensure("demo").await }
    });
    let pending = api
        .expect("GET", &format!("/api/v1/namespaces/{NS}"))
        .await
        .ignore();
    let err = call.await.unwrap().expect_err("times out");
    assert!(
        matches!(&err, Error::Timeout(m) if m.contains("did not answer")),
        "{err:?}"
    );
    drop(pending);

    // But /readyz's probe does not ask the API server at all: a control
    // plane that does not answer leaves the gateway ready (running
    // projects are reached at their Services).
    rt.ready().await.expect("ready without the API server");
    assert_eq!(api.try_next(Duration::from_millis(100)).await, None);
}

#[tokio::test]
async fn port_forward_access_serves_agents_on_loopback() {
    let (rt, mut api) = runtime(&["--k8s-agent-access", "port-forward"]);
    let call = spawn({
        let rt = rt.clone();
        async move { rt.agent("demo").await }
    });
    expect_deployment_get(&mut api, "file-manager", true).await;
    let endpoint = call.await.unwrap().expect("agent");
    let AgentAddress::Tcp(url) = &endpoint.address else {
        panic!("tcp")
    };
    let addr = url.strip_prefix("http://").expect("http url");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    // A connection to it finds a ready file-manager pod and asks the API
    // server to port-forward to the agent's port.
    let _conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let ex = api
        .expect("GET", &format!("/api/v1/namespaces/{NS}/pods"))
        .await;
    assert!(
        ex.query
            .contains("app.kubernetes.io%2Fcomponent%3Dfile-manager"),
        "{}",
        ex.query
    );
    ex.respond(
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
            "metadata": {"name": "file-manager-abc"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }]}),
    );
    let ex = api
        .expect(
            "GET",
            &format!("/api/v1/namespaces/{NS}/pods/file-manager-abc/portforward"),
        )
        .await;
    assert_eq!(ex.query.trim_start_matches('&'), "ports=7070");
    // The same listener serves the next call.
    let again = rt.agent("demo").await.expect("agent");
    assert_eq!(again.address, endpoint.address);
}

#[tokio::test]
async fn failures_of_start_stop_and_teardown_are_reported_not_swallowed() {
    let (rt, mut api) = runtime(&[]);
    // Start: the Deployment's apply meets a conflict.
    let call = spawn({
        let rt = rt.clone();
        async move { rt.start_container("demo", &web()).await }
    });
    api.expect(
        "PATCH",
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/dev-web"),
    )
    .await
    .fail(409, "Conflict", "operation cannot be fulfilled");
    assert!(matches!(call.await.unwrap(), Err(Error::Conflict(_))));

    // Stop: deleting is forbidden (a ClusterRole without delete).
    let call = spawn({
        let rt = rt.clone();
        async move { rt.stop_container("demo", "web").await }
    });
    api.expect(
        "DELETE",
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/dev-web"),
    )
    .await
    .fail(403, "Forbidden", "cannot delete deployments");
    let err = call.await.unwrap().expect_err("forbidden");
    assert!(
        matches!(&err, Error::Internal(m) if m.contains("ClusterRole")),
        "{err:?}"
    );

    // Teardown: the API server fails the delete, then never answers the wait.
    let call = spawn({
        let rt = rt.clone();
        async move { rt.teardown("demo").await }
    });
    api.expect("DELETE", &format!("/api/v1/namespaces/{NS}"))
        .await
        .fail(500, "InternalError", "boom");
    assert!(matches!(call.await.unwrap(), Err(Error::Unavailable(_))));
    let call = spawn({
        let rt = rt.clone();
        async move { rt.teardown("demo").await }
    });
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}});
    api.expect("DELETE", &format!("/api/v1/namespaces/{NS}"))
        .await
        .respond(200, ns);
    let pending = api
        .expect("GET", &format!("/api/v1/namespaces/{NS}"))
        .await
        .ignore();
    assert!(matches!(call.await.unwrap(), Err(Error::Timeout(_))));
    drop(pending);
}

#[tokio::test]
async fn open_waits_for_a_namespace_still_terminating_then_makes_it_afresh() {
    let (rt, mut api) = runtime(&[]);
    let call = spawn({
        let rt = rt.clone();
        async move { rt.ensure("demo").await }
    });
    let terminating = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS, "deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Terminating"}});
    api.expect("GET", &format!("/api/v1/namespaces/{NS}"))
        .await
        .respond(200, terminating.clone());
    api.expect_list("/api/v1/namespaces", NS).await.list(
        "v1",
        "NamespaceList",
        vec![terminating.clone()],
    );
    api.expect_watch("/api/v1/namespaces", NS)
        .await
        .events(&[json!({"type": "DELETED", "object": terminating})]);
    // Gone now: the open goes on with its applies.
    expect_applies(&mut api, false).await;
    expect_deployment_get(&mut api, "file-manager", true).await;
    call.await
        .unwrap()
        .expect("open after the old namespace went");

    // One that never goes: the open gives up saying so, having written nothing.
    let (rt, mut api) = runtime(&[]);
    let call = spawn({
        let rt = rt.clone();
        async move { rt.ensure("demo").await }
    });
    let terminating = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS, "deletionTimestamp": "2026-01-01T00:00:00Z"}});
    let (result, _) = answer_stuck_namespace(&mut api, call, &terminating).await;
    assert!(
        matches!(&result, Err(Error::EnvironmentStuck(m))
            if m.contains("still terminating") && m.contains("reports no cause")),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_existing_claim_grows_only_when_its_class_allows_it() {
    for expandable in [true, false] {
        let (rt, mut api) = runtime(&["--k8s-storage-size", "8Gi"]);
        let call = spawn({
            let rt = rt.clone();
            async move { rt.ensure("demo").await }
        });
        api.expect("GET", &format!("/api/v1/namespaces/{NS}"))
            .await
            .respond(
                200,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            );
        for path in [
            format!("/api/v1/namespaces/{NS}"),
            format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/project-isolation"),
            format!("/api/v1/namespaces/{NS}/resourcequotas/project-quota"),
            format!("/api/v1/namespaces/{NS}/limitranges/project-limits"),
        ] {
            api.expect_apply(&path).await;
        }
        let pvc = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/project-storage");
        api.expect("GET", &pvc).await.respond(
            200,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "project-storage", "namespace": NS},
            "spec": {"storageClassName": "grows", "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "5Gi"}}},
            "status": {"phase": "Bound"}}),
        );
        api.expect("GET", "/apis/storage.k8s.io/v1/storageclasses/grows")
            .await
            .respond(
                200,
                json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": "grows"}, "provisioner": "example.com/csi",
                "allowVolumeExpansion": expandable}),
            );
        if expandable {
            // Only the size, as a merge patch (an apply would also claim
            // the immutable fields).
            let ex = api.expect("PATCH", &pvc).await;
            assert_eq!(ex.content_type, "application/merge-patch+json");
            assert_eq!(
                ex.body,
                Some(json!({"spec": {"resources": {"requests": {"storage": "8Gi"}}}}))
            );
            ex.respond(
                200,
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "project-storage", "namespace": NS}}),
            );
        }
        for path in [
            format!("/api/v1/namespaces/{NS}/secrets/agent"),
            format!("/apis/apps/v1/namespaces/{NS}/deployments/file-manager"),
            format!("/api/v1/namespaces/{NS}/services/file-manager"),
        ] {
            api.expect_apply(&path).await;
        }
        expect_deployment_get(&mut api, "file-manager", true).await;
        call.await.unwrap().expect("open");
    }
}

/// A ready pod `dev-web-abc` of the dev server `web`.
fn dev_pods() -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
        "metadata": {"name": "dev-web-abc"},
        "status": {"phase": "Running", "podIP": "10.1.2.3",
            "conditions": [{"type": "Ready", "status": "True"}]}
    }]})
}

/// Logs and exec go to the dev pod's agent (no API request beyond the
/// Deployment's port); only a port other than the declared one needs the
/// API: it goes straight to the ready pod's address.
#[tokio::test]
async fn other_ports_of_a_dev_server_go_to_its_ready_pod() {
    let (rt, mut api) = runtime(&[]);
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    // A port other than the declared one goes straight to the pod's address.
    let call = spawn({
        let rt = rt.clone();
        async move { rt.container_route("demo", "web", Some(9229)).await }
    });
    expect_deployment_get(&mut api, "dev-web", true).await;
    api.expect("GET", &pods).await.respond(200, dev_pods());
    let mut pod = dev_pods()["items"][0].clone();
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    api.expect("GET", &format!("{pods}/dev-web-abc"))
        .await
        .respond(200, pod);
    let route = call.await.unwrap().expect("route");
    assert_eq!((route.host.as_str(), route.port), ("10.1.2.3", 9229));
}

#[tokio::test]
async fn a_dev_server_the_quota_refuses_fails_at_once_unless_a_pod_is_going() {
    let refused = {
        let mut d = deployment(NS, "dev-web", false);
        d["status"]["conditions"] = json!([{
            "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": "pods \"dev-web-x\" is forbidden: exceeded quota: project-quota, requested: pods=1, used: pods=1, limited: pods=1"
        }]);
        d
    };
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let deployments = format!("/apis/apps/v1/namespaces/{NS}/deployments");
    for going in [false, true] {
        let (rt, mut api) = runtime(&[]);
        let call = spawn({
            let rt = rt.clone();
            async move { rt.start_container("demo", &web()).await }
        });
        api.expect_apply(&format!("{deployments}/dev-web")).await;
        api.expect_apply(&format!("/api/v1/namespaces/{NS}/services/dev-web"))
            .await;
        api.expect("GET", &format!("{deployments}/dev-web"))
            .await
            .respond(200, refused.clone());
        // Is a pod of the project on its way out (its quota coming back)?
        let ex = api.expect("GET", &pods).await;
        assert!(!ex.query.contains("labelSelector"), "{}", ex.query);
        if !going {
            ex.respond(
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            );
            // No: a clear 409 at once, and the Deployment goes, so that it
            // does not start behind the caller's back later.
            api.expect("DELETE", &format!("{deployments}/dev-web"))
                .await
                .respond(200, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}));
            api.expect(
                "DELETE",
                &format!("/api/v1/namespaces/{NS}/services/dev-web"),
            )
            .await
            .respond(
                200,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            );
            // The removal waits for the dev server's pods: there are none.
            let ex = api.expect("GET", &pods).await;
            assert!(ex.query.contains("labelSelector"), "{}", ex.query);
            ex.respond(
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            );
            let err = call.await.unwrap().expect_err("over quota");
            assert!(
                matches!(&err, Error::Conflict(m) if m.contains("over its quota") && m.contains("pods=1")),
                "{err:?}"
            );
        } else {
            ex.respond(
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
                    "metadata": {"name": "dev-web-old", "deletionTimestamp": "2026-01-01T00:00:00Z"}
                }]}),
            );
            // Yes: wait on (the refusal stays in the status meanwhile) until
            // the pod is made and ready.
            api.expect_list(&deployments, "dev-web").await.list(
                "apps/v1",
                "DeploymentList",
                vec![refused.clone()],
            );
            api.expect_watch(&deployments, "dev-web")
                .await
                .events(&[json!({"type": "MODIFIED", "object": deployment(NS, "dev-web", true)})]);
            let route = call.await.unwrap().expect("started once the old pod went");
            assert_eq!(route.port, 5173);
        }
    }
}

/// The verb the API server authorizes a recorded request as, with its
/// resource (`group/resource[/subresource]`); `None` for a non-resource URL.
fn authorized_as(r: &mock::Sent) -> Vec<(String, String)> {
    let segments: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    // /api/v1/... (core) or /apis/{group}/{version}/...
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return Vec::new(),
    };
    // Namespaced: namespaces/{ns}/{resource}[/{name}[/{sub}]]; a path of
    // two segments under `namespaces` is the namespace object itself.
    let (resource, name, sub) = match rest {
        ["namespaces", _ns, resource, tail @ ..] => (*resource, tail.first(), tail.get(1)),
        [resource, tail @ ..] => (*resource, tail.first(), tail.get(1)),
        [] => return Vec::new(),
    };
    let resource = match sub {
        Some(s) => format!("{group}/{resource}/{s}"),
        None => format!("{group}/{resource}"),
    };
    let watch = r.query.split('&').any(|p| p == "watch=true");
    let verbs: &[&str] = match (r.method.as_str(), name, sub) {
        // exec and port-forward are WebSocket upgrades (GET): `get`, and
        // from Kubernetes 1.35 also `create`.
        ("GET", Some(_), Some(s)) if *s == "exec" || *s == "portforward" => &["get", "create"],
        ("GET", Some(_), _) => &["get"],
        ("GET", None, _) if watch => &["watch"],
        ("GET", None, _) => &["list"],
        ("POST", None, _) => &["create"],
        // A server-side apply may create the object: the API server then
        // also checks `create`.
        ("PATCH", Some(_), _) if r.content_type == "application/apply-patch+yaml" => {
            &["patch", "create"]
        }
        ("PATCH", Some(_), _) => &["patch"],
        ("PUT", Some(_), _) => &["update"],
        ("DELETE", Some(_), _) => &["delete"],
        ("DELETE", None, _) => &["deletecollection"],
        (m, _, _) => panic!("unexpected request {m} {}", r.path),
    };
    verbs
        .iter()
        .map(|v| (resource.clone(), (*v).to_owned()))
        .collect()
}

/// The ClusterRole of k8s/base as (`group/resource`, verb) pairs.
fn granted(kustomization: &str, role: &str) -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../k8s")
        .join(kustomization);
    let objects = kustomize::render(&dir).expect("render the RBAC");
    let role = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == role)
        .expect("the gateway's ClusterRole");
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .unwrap_or_else(|| panic!("{k} in {rule}"))
                .iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    out.insert((format!("{group}/{resource}"), verb));
                }
            }
        }
    }
    out
}

/// Least privilege, checked against what the code does: every scenario of
/// this file runs (the whole lifecycle: open fresh and again, expansion,
/// start, a quota refusal, other ports, port-forward access, stop (waiting
/// for the pod to go), teardown, waits on watches, failures), every request
/// the runtime sent is turned into the verb the API server authorizes it
/// as, and that set must equal what k8s/base/rbac.yaml grants, except
/// port-forward, which must equal the opt-in k8s/port-forward/: nothing
/// used is missing, nothing granted is unused. No pod exec or logs at all:
/// containers' terminals, exec and logs go to the agent in the dev pod.
#[test]
fn rbac_grants_exactly_the_verbs_the_recorded_requests_need() {
    // Each scenario is a #[tokio::test] (a plain fn with its own runtime).
    open_fresh_applies_the_environment_and_waits_for_the_agent();
    open_again_converges_a_half_made_project();
    agent_of_a_project_after_a_gateway_restart();
    start_applies_a_deployment_and_service_then_stop_deletes_them();
    read_write_many_volumes_keep_the_same_affinity();
    teardown_deletes_the_namespace_and_waits_until_it_is_gone_then_restore_opens_afresh();
    teardown_times_out_when_the_namespace_stays();
    open_that_never_becomes_ready_says_why();
    api_failures_map_to_clear_errors();
    an_api_server_that_never_answers_times_out();
    port_forward_access_serves_agents_on_loopback();
    failures_of_start_stop_and_teardown_are_reported_not_swallowed();
    open_waits_for_a_namespace_still_terminating_then_makes_it_afresh();
    an_existing_claim_grows_only_when_its_class_allows_it();
    other_ports_of_a_dev_server_go_to_its_ready_pod();
    a_dev_server_the_quota_refuses_fails_at_once_unless_a_pod_is_going();

    let sent = mock::sent();
    assert!(
        sent.len() > 100,
        "the scenarios ran: {} requests",
        sent.len()
    );
    type Grants = BTreeSet<(String, String)>;
    let (forwards, used): (Grants, Grants) = sent
        .iter()
        .flat_map(authorized_as)
        .partition(|(resource, _)| resource == "/pods/portforward");
    assert_eq!(
        forwards,
        granted("port-forward", "devgate-gateway-port-forward"),
        "the opt-in port-forward RBAC is what port-forward access uses"
    );
    assert!(
        !used
            .iter()
            .any(|(r, _)| r.ends_with("/exec") || r.ends_with("/log")),
        "{used:?}"
    );
    let granted = granted("base", "devgate-gateway");
    let missing: Vec<_> = used.difference(&granted).collect();
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "k8s/base/rbac.yaml differs from what the runtime sends:\n\
         used but not granted: {missing:?}\n\
         granted but never used: {unused:?}"
    );
}
