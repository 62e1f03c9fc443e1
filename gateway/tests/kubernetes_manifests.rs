//! Every manifest of `k8s/` against the Kubernetes API schema: each YAML
//! document of the resource files, and each object that base and overlays
//! render (with a small Kustomize renderer, no kubectl needed), deserializes
//! into its k8s-openapi type with no field ignored. Plus what the manifests
//! promise: every gateway setting in the ConfigMap and the configuration
//! reference, least-privilege RBAC, non-root images.

#[path = "support/kustomize.rs"]
mod kustomize;
#[path = "support/schema.rs"]
mod schema;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use serde_json::{Value, json};

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read k8s dir") {
        let path = entry.expect("entry").path();
        // k8s/testenv holds kwok's configuration (its own kinds), checked by
        // kwok when k8s/testenv/up.sh starts it.
        if path.is_dir() && !path.ends_with("testenv") {
            yaml_files(&path, out);
        } else if path.is_file() && path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Patch files named by any kustomization (partial objects, checked once
/// rendered).
fn patch_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut patches = BTreeSet::new();
    for f in files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "kustomization.yaml"))
    {
        let doc = &kustomize::read_docs(f).unwrap()[0];
        for p in doc["patches"].as_array().into_iter().flatten() {
            let path = f
                .parent()
                .unwrap()
                .join(p["path"].as_str().expect("patch path"));
            patches.insert(path.canonicalize().expect("patch file exists"));
        }
    }
    patches
}

#[test]
fn every_resource_document_matches_the_schema() {
    let mut files = Vec::new();
    yaml_files(&k8s_dir(), &mut files);
    assert!(files.len() >= 15, "found only {files:?}");
    let patches = patch_files(&files);
    assert!(patches.len() >= 6, "{patches:?}");
    let mut checked = 0;
    let mut errors = Vec::new();
    for f in &files {
        let docs = kustomize::read_docs(f).unwrap_or_else(|e| panic!("{e}"));
        assert!(!docs.is_empty(), "{} is empty", f.display());
        let is_kustomization = f.file_name().is_some_and(|n| n == "kustomization.yaml");
        if is_kustomization || patches.contains(&f.canonicalize().unwrap()) {
            continue;
        }
        for d in &docs {
            checked += 1;
            if let Err(e) = schema::check(d) {
                errors.push(format!("{}: {e}", f.display()));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(checked >= 15, "checked {checked} documents");
}

#[test]
fn the_schema_check_catches_unknown_and_misplaced_fields() {
    // A typo'd field and a field at the wrong level must both fail, or the
    // checks above prove nothing.
    let typo = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"selectr": {"a": "b"}}});
    assert!(schema::check(&typo).unwrap_err().contains("selectr"));
    let misplaced = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "c", "image": "i",
            "readOnlyRootFilesystem": true}]}}}});
    assert!(
        schema::check(&misplaced)
            .unwrap_err()
            .contains("readOnlyRootFilesystem")
    );
    let wrong_type = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"ports": [{"port": "eighty"}]}});
    assert!(schema::check(&wrong_type).is_err());
    let unknown_kind = json!({"apiVersion": "v1", "kind": "Nonsense", "metadata": {"name": "x"}});
    assert!(schema::check(&unknown_kind).is_err());
}

fn render(overlay: &str) -> Vec<Value> {
    let objects =
        kustomize::render(&k8s_dir().join(overlay)).unwrap_or_else(|e| panic!("{overlay}: {e}"));
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    for o in &objects {
        let id = format!(
            "{}/{}/{}",
            o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]
        );
        assert!(seen.insert(id.clone()), "{overlay}: {id} twice");
        if let Err(e) = schema::check(o) {
            errors.push(e);
        }
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/part-of"], "devgate",
            "{overlay}: {id}"
        );
        let cluster_scoped = [
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]
        .contains(&o["kind"].as_str().unwrap());
        if !cluster_scoped {
            assert_eq!(o["metadata"]["namespace"], "devgate", "{overlay}: {id}");
        }
    }
    assert!(errors.is_empty(), "{overlay}:\n{}", errors.join("\n"));
    objects
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn base_and_overlays_render_to_valid_objects() {
    let base = render("base");
    let gw = find(&base, "Deployment", "devgate-gateway");
    let pod = &gw["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["serviceAccountName"], "devgate-gateway");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The preview wildcard: one rule without a host takes every preview host.
    let ingress = find(&base, "Ingress", "devgate-gateway");
    let rules = ingress["spec"]["rules"].as_array().unwrap();
    assert!(
        rules.iter().any(|r| r.get("host").is_none()),
        "a catch-all rule for preview hosts"
    );
    assert_eq!(
        find(&base, "ConfigMap", "devgate-gateway")["data"]["GATEWAY_RUNTIME"],
        "kubernetes"
    );

    let mk = render("overlays/minikube");
    let gw = find(&mk, "Deployment", "devgate-gateway");
    let pod = &gw["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], "devgate/gateway:dev");
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "Never");
    let data = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "data")
        .unwrap();
    assert_eq!(
        data["persistentVolumeClaim"]["claimName"],
        "devgate-gateway-data"
    );
    assert!(
        data.get("emptyDir").is_none(),
        "the patch replaced the emptyDir"
    );
    find(&mk, "PersistentVolumeClaim", "devgate-gateway-data");
    find(&mk, "Deployment", "minio");
    find(&mk, "Job", "minio-make-bucket");
    let cm = &find(&mk, "ConfigMap", "devgate-gateway")["data"];
    assert_eq!(
        cm["AWS_ENDPOINT_URL"],
        "http://minio.devgate.svc.cluster.local:9000"
    );
    assert_eq!(
        cm["GATEWAY_AGENT_IMAGE"], "devgate/dev:dev",
        "install commands need node"
    );
    assert_eq!(cm["GATEWAY_K8S_AGENT_PORT"], "7070", "base values stay");

    let prod = render("overlays/production");
    let gw = find(&prod, "Deployment", "devgate-gateway");
    assert_eq!(gw["spec"]["replicas"], 3);
    assert_eq!(gw["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        gw["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/devgate/gateway:0.1.0"
    );
    assert_eq!(
        gw["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "4"
    );
    find(&prod, "PodDisruptionBudget", "devgate-gateway");
    let cm = &find(&prod, "ConfigMap", "devgate-gateway")["data"];
    assert_eq!(
        (
            cm["GATEWAY_PREVIEW_SCHEME"].as_str(),
            cm["GATEWAY_PREVIEW_PORT"].as_str()
        ),
        (Some("https"), Some("443"))
    );
    assert!(find(&prod, "Ingress", "devgate-gateway")["spec"]["tls"].is_array());
    assert!(
        !prod.iter().any(|o| o["kind"] == "Secret"),
        "production Secrets are made out of band"
    );
    // Replicas never split into brains of their own: shared state is
    // required, and the Secret holding it is not optional.
    assert_eq!(cm["GATEWAY_REQUIRE_SHARED_STATE"], "true");
    // A rollout drains: a startup probe holds liveness off during start-up,
    // readiness is /readyz (the store only, never the API server), and the
    // preStop pause plus the gateway's own grace fit in the pod's
    // termination grace period, in every overlay.
    for objects in [&prod, &render("base"), &render("overlays/minikube")] {
        let gw = find(objects, "Deployment", "devgate-gateway");
        let pod = &gw["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz");
        assert!(
            c["startupProbe"]["periodSeconds"].as_i64().unwrap()
                * c["startupProbe"]["failureThreshold"].as_i64().unwrap()
                >= 60,
            "a minute at least for migrations and templates"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        let pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_i64()
            .expect("a preStop pause");
        assert!(pause >= 5, "endpoints need a few seconds to drop the pod");
        let cm = &find(objects, "ConfigMap", "devgate-gateway")["data"];
        let grace: i64 = cm["GATEWAY_GRACE_SECS"].as_str().unwrap().parse().unwrap();
        let period = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
        assert!(
            pause + grace + 10 <= period,
            "preStop {pause} s + grace {grace} s + 10 s to close must fit in {period} s"
        );
    }
    for objects in [&prod, &render("base"), &render("overlays/minikube")] {
        let gw = find(objects, "Deployment", "devgate-gateway");
        let from = gw["spec"]["template"]["spec"]["containers"][0]["envFrom"]
            .as_array()
            .unwrap();
        let secret = from
            .iter()
            .find(|f| f["secretRef"]["name"] == "devgate-gateway")
            .expect("the Secret's variables");
        assert!(
            secret["secretRef"]["optional"].is_null() || secret["secretRef"]["optional"] == false,
            "{secret}"
        );
    }
}

/// Production previews are flat hosts (one label under the preview domain),
/// so the one wildcard certificate on the Ingress covers every preview, and
/// the Ingress routes that wildcard, not every host, to the gateway.
#[test]
fn production_previews_get_one_wildcard_certificate() {
    let prod = render("overlays/production");
    let cm = &find(&prod, "ConfigMap", "devgate-gateway")["data"];
    assert_eq!(cm["GATEWAY_PREVIEW_HOST_STYLE"], "flat");
    let domain = cm["GATEWAY_PREVIEW_DOMAIN"].as_str().unwrap();
    let wildcard = format!("*.{domain}");
    let ingress = &find(&prod, "Ingress", "devgate-gateway")["spec"];
    let tls = ingress["tls"].as_array().unwrap();
    let preview_tls = tls
        .iter()
        .find(|t| {
            t["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h == &wildcard)
        })
        .unwrap_or_else(|| panic!("no TLS entry covers {wildcard}: {tls:?}"));
    assert!(
        preview_tls["secretName"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let rules = ingress["rules"].as_array().unwrap();
    assert!(
        rules.iter().any(|r| r["host"] == wildcard),
        "no rule for {wildcard}: {rules:?}"
    );
    // Every rule names a host that a TLS entry covers: no plain-HTTP catch-all.
    for r in rules {
        let host = r["host"]
            .as_str()
            .unwrap_or_else(|| panic!("a rule without a host: {r}"));
        assert!(
            tls.iter()
                .any(|t| t["hosts"].as_array().unwrap().iter().any(|h| h == host)),
            "{host} has no certificate"
        );
    }
}

/// Every variable the gateway reads, from its own flag definitions.
fn gateway_variables() -> Vec<String> {
    gateway::Config::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect()
}

#[test]
fn every_setting_is_in_the_configmap_and_the_reference() {
    let vars = gateway_variables();
    assert!(vars.len() >= 30, "{vars:?}");
    assert!(vars.iter().any(|v| v == "GATEWAY_K8S_STORAGE_SIZE"));
    let configmap = std::fs::read_to_string(k8s_dir().join("base/configmap.yaml")).unwrap();
    let reference = std::fs::read_to_string(k8s_dir().join("../docs/configuration.md"))
        .expect("docs/configuration.md");
    let missing_cm: Vec<_> = vars
        .iter()
        .filter(|v| !configmap.contains(v.as_str()))
        .collect();
    assert!(
        missing_cm.is_empty(),
        "not in k8s/base/configmap.yaml: {missing_cm:?}"
    );
    let missing_doc: Vec<_> = vars
        .iter()
        .filter(|v| !reference.contains(&format!("`{v}`")))
        .collect();
    assert!(
        missing_doc.is_empty(),
        "not in docs/configuration.md: {missing_doc:?}"
    );
    // And the reverse: the ConfigMap sets nothing the gateway ignores.
    let cm = &kustomize::read_docs(&k8s_dir().join("base/configmap.yaml")).unwrap()[0]["data"];
    for key in cm.as_object().unwrap().keys() {
        let known = vars.contains(key) || key.starts_with("AWS_") || key == "RUST_LOG";
        assert!(known, "the ConfigMap sets {key}, which nothing reads");
    }
}

#[test]
fn rbac_is_least_privilege() {
    let objects = render("base");
    let role = find(&objects, "ClusterRole", "devgate-gateway");
    let rules = role["rules"].as_array().unwrap();
    let verbs_of = |resource: &str| -> BTreeSet<String> {
        rules
            .iter()
            .filter(|r| {
                r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
            })
            .flat_map(|r| {
                r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
            })
            .collect()
    };
    for r in rules {
        for field in ["verbs", "resources", "apiGroups"] {
            assert!(
                !r[field].as_array().unwrap().iter().any(|v| v == "*"),
                "wildcard in {r}"
            );
        }
    }
    let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    // Terminals, exec and logs of dev containers go to the agent in the dev
    // pod, and a gateway in the cluster dials Services: no exec, no logs,
    // no port-forward by default (k8s/port-forward/ is the opt-in).
    for sub in ["pods/exec", "pods/attach", "pods/log", "pods/portforward"] {
        assert_eq!(verbs_of(sub), set(&[]), "{sub}");
    }
    // The exact verbs are checked against the requests the runtime sends
    // (kubernetes_runtime.rs, rbac_grants_exactly_the_verbs_the_recorded_
    // requests_need); here, what must never be granted.
    for r in [
        "secrets",
        "resourcequotas",
        "limitranges",
        "networkpolicies",
    ] {
        assert_eq!(
            verbs_of(r),
            set(&["create", "patch"]),
            "{r}: written, never read back"
        );
    }
    assert!(!verbs_of("pods").contains("delete"), "Deployments own pods");
    // Read to decide whether a project volume may grow; never written.
    assert_eq!(verbs_of("storageclasses"), set(&["get"]));
    for r in [
        "namespaces",
        "persistentvolumeclaims",
        "services",
        "deployments",
        "networkpolicies",
    ] {
        assert!(verbs_of(r).is_superset(&set(&["create", "patch"])), "{r}");
        assert!(
            !verbs_of(r).contains("update"),
            "{r}: apply needs patch, not update"
        );
    }
    let binding = find(&objects, "ClusterRoleBinding", "devgate-gateway");
    assert_eq!(binding["subjects"][0]["name"], "devgate-gateway");
    assert_eq!(binding["subjects"][0]["namespace"], "devgate");
}

/// The opt-in RBAC of a gateway outside the cluster: port-forward only, with
/// both verbs the API server checks for kube-rs's WebSocket upgrade (`get`,
/// and from 1.35 also `create`; kubernetes_real.rs runs with it), bound to
/// the gateway's service account; no overlay includes it, and `k8s/e2e.sh`
/// applies it for its off-cluster shape.
#[test]
fn port_forward_rbac_is_opt_in_and_only_port_forward() {
    let docs = render("port-forward");
    let role = find(&docs, "ClusterRole", "devgate-gateway-port-forward");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]}])
    );
    let binding = find(&docs, "ClusterRoleBinding", "devgate-gateway-port-forward");
    assert_eq!(binding["roleRef"]["name"], "devgate-gateway-port-forward");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "devgate-gateway", "namespace": "devgate"}])
    );
    assert_eq!(docs.len(), 2);
    for overlay in ["base", "overlays/minikube", "overlays/production"] {
        let objects = render(overlay);
        assert!(
            !objects
                .iter()
                .any(|o| o["metadata"]["name"] == "devgate-gateway-port-forward"),
            "{overlay} includes the opt-in port-forward RBAC"
        );
    }
    let e2e = std::fs::read_to_string(k8s_dir().join("e2e.sh")).unwrap();
    assert!(
        e2e.contains("apply -k k8s/port-forward"),
        "e2e.sh applies it"
    );
}

#[test]
fn images_run_as_non_root_and_e2e_script_parses() {
    for name in ["gateway", "agent", "dev"] {
        let path = k8s_dir().join(format!("images/{name}.Dockerfile"));
        let text = std::fs::read_to_string(&path).unwrap();
        let last_stage = text.rsplit("\nFROM ").next().unwrap();
        let user = last_stage
            .lines()
            .filter_map(|l| l.strip_prefix("USER "))
            .next_back()
            .unwrap_or_else(|| panic!("{name}: the final stage sets no USER"));
        assert!(
            !user.starts_with("0") && !user.starts_with("root"),
            "{name}: USER {user}"
        );
        assert!(text.matches("\nFROM ").count() >= 1, "{name}: multi-stage");
    }
    // The gateway runs `git` at start when it has templates to serve, so its
    // image must carry git if the base configuration names a templates dir.
    let configmap = std::fs::read_to_string(k8s_dir().join("base/configmap.yaml")).unwrap();
    if configmap.contains("\n  GATEWAY_TEMPLATES_DIR:") {
        let text = std::fs::read_to_string(k8s_dir().join("images/gateway.Dockerfile")).unwrap();
        let last_stage = text.rsplit("\nFROM ").next().unwrap();
        assert!(
            last_stage
                .lines()
                .any(|l| l.contains("apt-get install") && l.split_whitespace().any(|w| w == "git")),
            "the gateway image's final stage installs no git:\n{last_stage}"
        );
    }
    let out = std::process::Command::new("bash")
        .arg("-n")
        .arg(k8s_dir().join("e2e.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The images build for amd64 and arm64: each Rust build stage takes its
/// target from BuildKit's `TARGETARCH` through `rust-target.sh`, which maps
/// both architectures (and refuses others), and no triple is written in.
#[test]
fn images_build_for_amd64_and_arm64() {
    let script = k8s_dir().join("images/rust-target.sh");
    let run = |arch: &str| {
        let out = std::process::Command::new("sh")
            .arg(&script)
            .arg(arch)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    assert_eq!(run("amd64"), (true, "x86_64-unknown-linux-musl".to_owned()));
    assert_eq!(
        run("arm64"),
        (true, "aarch64-unknown-linux-musl".to_owned())
    );
    assert!(
        !run("s390x").0,
        "an architecture without a build is refused"
    );
    // No argument (the classic builder sets no TARGETARCH): this machine's.
    let own = run("");
    assert!(own.0 && own.1.ends_with("-unknown-linux-musl"), "{own:?}");
    for name in ["gateway", "agent", "dev"] {
        let text =
            std::fs::read_to_string(k8s_dir().join(format!("images/{name}.Dockerfile"))).unwrap();
        assert!(
            !text.contains("x86_64") && !text.contains("aarch64"),
            "{name}: a target triple written in"
        );
        let build = text
            .split("\nFROM ")
            .find(|stage| stage.starts_with("rust:"))
            .unwrap_or_else(|| panic!("{name}: no Rust build stage"));
        assert!(build.contains("ARG TARGETARCH"), "{name}");
        assert!(
            build.contains("rustup target add \"$(rust-target \"$TARGETARCH\")\""),
            "{name}: the target is not added for TARGETARCH"
        );
        assert!(
            build.contains("--target \"$target\"")
                && build.contains("target=\"$(rust-target \"$TARGETARCH\")\""),
            "{name}: cargo does not build for TARGETARCH"
        );
    }
}

#[test]
fn an_admission_policy_confines_the_gateway_to_devgate_namespaces() {
    for overlay in ["base", "overlays/minikube", "overlays/production"] {
        let objects = render(overlay);
        let policy = find(
            &objects,
            "ValidatingAdmissionPolicy",
            "devgate-gateway-namespaces",
        );
        let binding = find(
            &objects,
            "ValidatingAdmissionPolicyBinding",
            "devgate-gateway-namespaces",
        );
        assert_eq!(binding["spec"]["policyName"], "devgate-gateway-namespaces");
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
        let spec = &policy["spec"];
        assert_eq!(spec["failurePolicy"], "Fail", "{overlay}");
        // It applies to the service account the ClusterRole is bound to...
        let subject = &find(&objects, "ClusterRoleBinding", "devgate-gateway")["subjects"][0];
        let user = format!(
            "system:serviceaccount:{}:{}",
            subject["namespace"].as_str().unwrap(),
            subject["name"].as_str().unwrap()
        );
        let conditions = spec["matchConditions"].to_string();
        assert!(conditions.contains(&format!("'{user}'")), "{conditions}");
        // ...on every resource and subresource, exec and port-forward included.
        let rule = &spec["matchConstraints"]["resourceRules"][0];
        assert_eq!(rule["apiGroups"], json!(["*"]));
        assert_eq!(rule["resources"], json!(["*/*"]));
        for op in ["CREATE", "UPDATE", "DELETE", "CONNECT"] {
            assert!(
                rule["operations"].as_array().unwrap().contains(&json!(op)),
                "{op}"
            );
        }
        // The label it requires is the one the runtime puts on project
        // namespaces.
        let labels = gateway::runtime::kubernetes::objects::project_labels("demo");
        let key = gateway::runtime::kubernetes::objects::LABEL_MANAGED_BY;
        assert!(
            spec["variables"][0]["expression"]
                .as_str()
                .unwrap()
                .contains(&format!("'{key}'"))
        );
        let check = spec["validations"][0]["expression"].as_str().unwrap();
        assert!(check.contains(&format!("== '{}'", labels[key])), "{check}");
        for needed in [
            "oldObject",
            "object",
            "namespaceObject",
            "request.resource.resource == 'namespaces'",
        ] {
            assert!(check.contains(needed), "{needed}: {check}");
        }
    }
}
