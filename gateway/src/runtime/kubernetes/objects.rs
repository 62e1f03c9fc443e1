//! The objects of a project's environment, built as k8s-openapi types by pure
//! functions of the settings (so tests check them without a cluster): the
//! namespace, its NetworkPolicy, the `project-storage` volume, the agent's
//! Secret, the file-manager Deployment and Service, and one Deployment and
//! Service per running dev server.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    GRPCAction, Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodAffinity, PodAffinityTerm, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretEnvSource,
    SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{Resources, Settings};
use crate::runtime::ContainerSpec;

/// The one field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "devgate-gateway";
/// Names inside a project namespace.
pub const NETWORK_POLICY: &str = "project-isolation";
/// The ResourceQuota and LimitRange of each project namespace.
pub const QUOTA: &str = "project-quota";
pub const LIMITS: &str = "project-limits";
pub const STORAGE: &str = "project-storage";
pub const AGENT_SECRET: &str = "agent";
pub const FILE_MANAGER: &str = "file-manager";
/// The container name in dev-server pods: the agent as PID 1, running the
/// dev server as its managed process.
pub const DEV_CONTAINER: &str = "dev";
/// The init container of dev-server pods that copies the agent in.
pub const AGENT_INSTALL: &str = "install-agent";
/// The agent image's static binary (`k8s/images/agent.Dockerfile`).
pub const AGENT_IMAGE_BIN: &str = "/usr/local/bin/agent";
/// The `emptyDir` of a dev pod that holds the copied agent, and where it is
/// mounted (read-only in the dev container).
pub const AGENT_VOLUME: &str = "devgate-agent";
pub const AGENT_DIR: &str = "/devgate";
/// The agent in a dev container, copied there by the init container.
pub const DEV_AGENT_BIN: &str = "/devgate/agent";
/// Where the project volume is mounted in every pod.
pub const PROJECT_ROOT: &str = "/app";
/// The uid and gid pods run as (the images' non-root user).
pub const POD_USER: i64 = 1000;

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_PROJECT: &str = "devgate.dev/project";
pub const LABEL_CONTAINER: &str = "devgate.dev/container";
/// Pod-template annotation holding a hash of the agent token: a new token
/// rolls the file-manager so the agent reads it.
pub const ANNOTATION_TOKEN_HASH: &str = "devgate.dev/token-sha256";

/// The name of a dev server's Deployment and Service.
pub fn dev_name(container: &str) -> String {
    format!("dev-{container}")
}

/// Labels every object of the project carries.
pub fn project_labels(project: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), "devgate".to_owned()),
        (LABEL_PROJECT.to_owned(), project.to_owned()),
    ])
}

/// Labels (and selector) of the file-manager pods.
pub fn file_manager_labels(project: &str) -> BTreeMap<String, String> {
    let mut l = project_labels(project);
    l.insert(LABEL_COMPONENT.to_owned(), FILE_MANAGER.to_owned());
    l
}

/// Labels (and selector) of a dev server's pods.
pub fn dev_labels(project: &str, container: &str) -> BTreeMap<String, String> {
    let mut l = project_labels(project);
    l.insert(LABEL_COMPONENT.to_owned(), "dev-server".to_owned());
    l.insert(LABEL_CONTAINER.to_owned(), container.to_owned());
    l
}

/// A `k=v,k=v` label selector for list calls.
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn meta(name: &str, namespace: Option<&str>, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// Pod Security admission labels of project namespaces: `restricted`, the
/// strictest profile, which every pod the runtime makes satisfies (non-root,
/// no privilege escalation, all capabilities dropped, RuntimeDefault seccomp).
pub const POD_SECURITY: [(&str, &str); 2] = [
    ("pod-security.kubernetes.io/enforce", "restricted"),
    ("pod-security.kubernetes.io/enforce-version", "latest"),
];

pub fn namespace(ns: &str, project: &str) -> Namespace {
    let mut labels = project_labels(project);
    for (k, v) in POD_SECURITY {
        labels.insert(k.to_owned(), v.to_owned());
    }
    Namespace {
        metadata: meta(ns, None, labels),
        ..Namespace::default()
    }
}

/// The `app.kubernetes.io/name` label of the gateway's pods (k8s/base).
pub const GATEWAY_APP: &str = "devgate-gateway";

/// What may reach a project's pods and what they may reach; everything
/// else is denied for every pod of the project.
///
/// Ingress: the gateway's pods (it dials agents, proxies previews and
/// terminals) and the project's own pods. Not the ingress controller:
/// previews go through the gateway's preview proxy, never straight to a dev
/// server.
///
/// Egress: DNS (port 53, wherever the cluster's resolver runs); the
/// internet on any port, as a dev environment needs (git over SSH,
/// registries, APIs), but not the cluster's own ranges
/// (`--k8s-cluster-cidrs`: pods, Services, nodes, the cloud's metadata
/// address); the S3 endpoint's port when it is not 443 (an in-cluster
/// endpoint such as MinIO); the gateway's pods on the gateway's port
/// (bundled templates are cloned from it); the project's own pods.
pub fn network_policy(s: &Settings, ns: &str, project: &str) -> NetworkPolicy {
    let gateway_namespace = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            s.gateway_namespace.clone(),
        )])),
        ..LabelSelector::default()
    };
    let gateway_pods = NetworkPolicyPeer {
        namespace_selector: Some(gateway_namespace),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                GATEWAY_APP.to_owned(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let same_namespace = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    };
    let port = |protocol: &str, port: u16| NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::Int(i32::from(port))),
        ..NetworkPolicyPort::default()
    };
    // The internet: everything but the cluster's ranges, per address family.
    let internet: Vec<NetworkPolicyPeer> = [("0.0.0.0/0", false), ("::/0", true)]
        .into_iter()
        .map(|(all, v6)| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: all.to_owned(),
                except: Some(
                    s.cluster_cidrs
                        .iter()
                        .filter(|c| c.contains(':') == v6)
                        .cloned()
                        .collect(),
                )
                .filter(|e: &Vec<String>| !e.is_empty()),
            }),
            ..NetworkPolicyPeer::default()
        })
        .collect();
    let mut egress = vec![
        // DNS: the cluster's resolver, wherever it runs.
        NetworkPolicyEgressRule {
            to: None,
            ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
        },
        NetworkPolicyEgressRule {
            to: Some(internet),
            ports: None,
        },
    ];
    if let Some(p) = s.s3_port {
        egress.push(NetworkPolicyEgressRule {
            to: None,
            ports: Some(vec![port("TCP", p)]),
        });
    }
    egress.extend([
        // Bundled templates: the agent clones them from the gateway, and
        // only that: the gateway's pods on its own port, not everything
        // else in its namespace.
        NetworkPolicyEgressRule {
            to: Some(vec![gateway_pods.clone()]),
            ports: Some(vec![port("TCP", s.gateway_port)]),
        },
        // Dev servers of one project talk to each other.
        NetworkPolicyEgressRule {
            to: Some(vec![same_namespace.clone()]),
            ports: None,
        },
    ]);
    NetworkPolicy {
        metadata: meta(NETWORK_POLICY, Some(ns), project_labels(project)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![gateway_pods, same_namespace]),
                ports: None,
            }]),
            egress: Some(egress),
        }),
    }
}

/// What a project namespace may hold in total, so one project cannot take
/// a node (or the cluster): pods, CPU, memory, ephemeral storage, volumes.
pub fn quota(s: &Settings, ns: &str, project: &str) -> k8s_openapi::api::core::v1::ResourceQuota {
    let q = &s.quota;
    let hard = BTreeMap::from([
        ("pods".to_owned(), q.pods.clone()),
        ("limits.cpu".to_owned(), q.cpu.clone()),
        ("limits.memory".to_owned(), q.memory.clone()),
        (
            "limits.ephemeral-storage".to_owned(),
            q.ephemeral_storage.clone(),
        ),
        ("requests.storage".to_owned(), q.storage.clone()),
    ]);
    k8s_openapi::api::core::v1::ResourceQuota {
        metadata: meta(QUOTA, Some(ns), project_labels(project)),
        spec: Some(k8s_openapi::api::core::v1::ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Requests and limits for a container that declares none (the quota
/// above counts only what is declared): the dev-server ones.
pub fn limit_range(
    s: &Settings,
    ns: &str,
    project: &str,
) -> k8s_openapi::api::core::v1::LimitRange {
    let r = &s.dev_resources;
    k8s_openapi::api::core::v1::LimitRange {
        metadata: meta(LIMITS, Some(ns), project_labels(project)),
        spec: Some(k8s_openapi::api::core::v1::LimitRangeSpec {
            limits: vec![k8s_openapi::api::core::v1::LimitRangeItem {
                type_: "Container".to_owned(),
                default: Some(BTreeMap::from([
                    ("cpu".to_owned(), r.cpu_limit.clone()),
                    ("memory".to_owned(), r.memory_limit.clone()),
                    (
                        "ephemeral-storage".to_owned(),
                        s.ephemeral_storage_limit.clone(),
                    ),
                ])),
                default_request: Some(BTreeMap::from([
                    ("cpu".to_owned(), r.cpu_request.clone()),
                    ("memory".to_owned(), r.memory_request.clone()),
                ])),
                ..Default::default()
            }],
        }),
    }
}

pub fn storage(s: &Settings, ns: &str, project: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(STORAGE, Some(ns), project_labels(project)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![s.access_mode.clone()]),
            storage_class_name: s.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    s.storage_size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The agent's token, read by the agent as environment. Nothing else: the
/// agent holds no storage credentials (the gateway signs URLs for it).
pub fn agent_secret(_s: &Settings, ns: &str, project: &str, token: &str) -> Secret {
    let data = BTreeMap::from([(
        "AGENT_TOKEN".to_owned(),
        ByteString(token.as_bytes().to_vec()),
    )]);
    Secret {
        metadata: meta(AGENT_SECRET, Some(ns), project_labels(project)),
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

fn resources(r: &Resources, ephemeral_storage: &Quantity) -> ResourceRequirements {
    let pair = |cpu: &Quantity, memory: &Quantity| {
        BTreeMap::from([
            ("cpu".to_owned(), cpu.clone()),
            ("memory".to_owned(), memory.clone()),
        ])
    };
    let mut limits = pair(&r.cpu_limit, &r.memory_limit);
    limits.insert("ephemeral-storage".to_owned(), ephemeral_storage.clone());
    ResourceRequirements {
        requests: Some(pair(&r.cpu_request, &r.memory_request)),
        limits: Some(limits),
        ..ResourceRequirements::default()
    }
}

fn container_security(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(read_only_root),
        run_as_non_root: Some(true),
        run_as_user: Some(POD_USER),
        run_as_group: Some(POD_USER),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(POD_USER),
        run_as_group: Some(POD_USER),
        fs_group: Some(POD_USER),
        // A large volume is not re-chowned on every start.
        fs_group_change_policy: Some("OnRootMismatch".to_owned()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

fn volumes(s: &Settings) -> Vec<Volume> {
    vec![
        Volume {
            name: STORAGE.to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: STORAGE.to_owned(),
                read_only: None,
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(s.tmp_size.clone()),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ]
}

fn mounts() -> Vec<VolumeMount> {
    vec![
        VolumeMount {
            name: STORAGE.to_owned(),
            mount_path: PROJECT_ROOT.to_owned(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
    ]
}

fn env(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<EnvVar> {
    pairs
        .into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        })
        .collect()
}

/// Every pod of a project (file-manager and dev servers alike) must run on
/// a node where a pod of the same project runs: all of a project's pods
/// share one node, so a ReadWriteOnce volume is attached there only, and a
/// rescheduled file-manager follows its dev servers instead of meeting
/// Multi-Attach behind them. The first pod of a project, matching its own
/// term, may go anywhere (the scheduler's rule for a term no other pod
/// matches).
fn project_affinity(project: &str) -> Affinity {
    Affinity {
        pod_affinity: Some(PodAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        LABEL_PROJECT.to_owned(),
                        project.to_owned(),
                    )])),
                    ..LabelSelector::default()
                }),
                topology_key: "kubernetes.io/hostname".to_owned(),
                ..PodAffinityTerm::default()
            }]),
            ..PodAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// A Deployment of one replica: Recreate, since the volume is usually
/// ReadWriteOnce and a rolling update would wait on the old pod's attachment.
fn deployment(
    name: &str,
    ns: &str,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
    pod: PodSpec,
) -> Deployment {
    Deployment {
        metadata: meta(name, Some(ns), labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The file-manager: the agent serving the volume at `/app` over gRPC.
pub fn file_manager(s: &Settings, ns: &str, project: &str, token_sha256: &str) -> Deployment {
    let grpc_probe = |period: i32, failures: i32| Probe {
        grpc: Some(GRPCAction {
            port: i32::from(s.agent_port),
            service: None,
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let container = Container {
        name: "agent".to_owned(),
        image: Some(s.agent_image.clone()),
        image_pull_policy: Some(s.image_pull_policy.clone()),
        command: Some(vec!["agent".to_owned()]),
        env: Some(env([
            ("AGENT_ROOT".to_owned(), PROJECT_ROOT.to_owned()),
            (
                "AGENT_LISTEN".to_owned(),
                format!("0.0.0.0:{}", s.agent_port),
            ),
            ("AGENT_LOG_FORMAT".to_owned(), "json".to_owned()),
            ("HOME".to_owned(), "/tmp".to_owned()),
        ])),
        env_from: Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: AGENT_SECRET.to_owned(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("grpc".to_owned()),
            container_port: i32::from(s.agent_port),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(grpc_probe(2, 3)),
        liveness_probe: Some(grpc_probe(10, 6)),
        resources: Some(resources(&s.agent_resources, &s.ephemeral_storage_limit)),
        security_context: Some(container_security(true)),
        volume_mounts: Some(mounts()),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(volumes(s)),
        security_context: Some(pod_security()),
        affinity: Some(project_affinity(project)),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        // The agent finishes writes and uploads within its own 20 s grace.
        termination_grace_period_seconds: Some(30),
        ..PodSpec::default()
    };
    let annotations = BTreeMap::from([(ANNOTATION_TOKEN_HASH.to_owned(), token_sha256.to_owned())]);
    deployment(
        FILE_MANAGER,
        ns,
        file_manager_labels(project),
        Some(annotations),
        pod,
    )
}

fn service(
    name: &str,
    ns: &str,
    labels: BTreeMap<String, String>,
    port_name: &str,
    port: u16,
) -> Service {
    Service {
        metadata: meta(name, Some(ns), labels.clone()),
        spec: Some(ServiceSpec {
            selector: Some(labels),
            ports: Some(vec![ServicePort {
                name: Some(port_name.to_owned()),
                port: i32::from(port),
                target_port: Some(IntOrString::Int(i32::from(port))),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn file_manager_service(s: &Settings, ns: &str, project: &str) -> Service {
    service(
        FILE_MANAGER,
        ns,
        file_manager_labels(project),
        "grpc",
        s.agent_port,
    )
}

/// A dev server: the agent, copied from the agent image into an `emptyDir`
/// by an init container (the way service meshes inject their proxy), is PID
/// 1 of the dev container, whatever its image; it runs the start command in
/// `/app/{name}` as its managed background process `{name}` (`--start`: log,
/// process-group stop on SIGTERM) and serves terminals, exec and logs over
/// the same gRPC as the file-manager's agent, with the same token and
/// nothing else of the platform. The server gets `PORT`, `HOST`, its env
/// (without `AGENT_*`, which the agent never passes on) and the optional
/// Secret `dev-{name}-env` (the platform may create it in the project
/// namespace for API keys); the pod runs on the node of the project's other
/// pods ([`project_affinity`]).
pub fn dev_server(s: &Settings, ns: &str, project: &str, spec: &ContainerSpec) -> Deployment {
    let name = dev_name(&spec.name);
    let mut vars: Vec<(String, String)> = vec![
        ("PORT".to_owned(), spec.port.to_string()),
        // The Service reaches the pod on its own address, not loopback.
        ("HOST".to_owned(), "0.0.0.0".to_owned()),
        ("HOME".to_owned(), "/tmp".to_owned()),
    ];
    // The container's own env wins over the defaults above.
    for (k, v) in spec.env.iter().filter(|(k, _)| !k.starts_with("AGENT_")) {
        vars.retain(|(name, _)| name != k);
        vars.push((k.clone(), v.clone()));
    }
    // The agent's settings last: nothing of the container's overrides them
    // (`env` also wins over every `envFrom` Secret).
    vars.extend([
        ("AGENT_ROOT".to_owned(), PROJECT_ROOT.to_owned()),
        (
            "AGENT_LISTEN".to_owned(),
            format!("0.0.0.0:{}", s.agent_port),
        ),
        ("AGENT_LOG_FORMAT".to_owned(), "json".to_owned()),
        ("AGENT_START".to_owned(), spec.start.clone()),
        ("AGENT_START_NAME".to_owned(), spec.name.clone()),
        ("AGENT_START_CWD".to_owned(), spec.name.clone()),
        // Within the pod's termination grace period below.
        ("AGENT_GRACE_SECS".to_owned(), "5".to_owned()),
    ]);
    let mut volume_mounts = mounts();
    volume_mounts.push(VolumeMount {
        name: AGENT_VOLUME.to_owned(),
        mount_path: AGENT_DIR.to_owned(),
        // The server runs as the agent's user: it must not replace it.
        read_only: Some(true),
        ..VolumeMount::default()
    });
    let container = Container {
        name: DEV_CONTAINER.to_owned(),
        image: Some(s.dev_image.clone()),
        image_pull_policy: Some(s.image_pull_policy.clone()),
        command: Some(vec![DEV_AGENT_BIN.to_owned()]),
        working_dir: Some(format!("{PROJECT_ROOT}/{}", spec.name)),
        env: Some(env(vars)),
        // The agent's Secret last, so that its token wins over a key of the
        // same name in the platform's Secret.
        env_from: Some(vec![
            EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: format!("{name}-env"),
                    optional: Some(true),
                }),
                ..EnvFromSource::default()
            },
            EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: AGENT_SECRET.to_owned(),
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            },
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".to_owned()),
                container_port: i32::from(spec.port),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("grpc".to_owned()),
                container_port: i32::from(s.agent_port),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(spec.port)),
                host: None,
            }),
            period_seconds: Some(2),
            ..Probe::default()
        }),
        resources: Some(resources(&s.dev_resources, &s.ephemeral_storage_limit)),
        // Dev tools write caches outside the project (npm, pip, next); the
        // root filesystem stays writable, everything else is locked down.
        security_context: Some(container_security(false)),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    };
    let install = Container {
        name: AGENT_INSTALL.to_owned(),
        image: Some(s.agent_image.clone()),
        image_pull_policy: Some(s.image_pull_policy.clone()),
        command: Some(vec![
            AGENT_IMAGE_BIN.to_owned(),
            "--copy-to".to_owned(),
            DEV_AGENT_BIN.to_owned(),
        ]),
        resources: Some(resources(&s.agent_resources, &s.ephemeral_storage_limit)),
        security_context: Some(container_security(true)),
        volume_mounts: Some(vec![VolumeMount {
            name: AGENT_VOLUME.to_owned(),
            mount_path: AGENT_DIR.to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let mut volumes = volumes(s);
    volumes.push(Volume {
        name: AGENT_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(AGENT_VOLUME_SIZE.to_owned())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    let pod = PodSpec {
        init_containers: Some(vec![install]),
        containers: vec![container],
        volumes: Some(volumes),
        security_context: Some(pod_security()),
        affinity: Some(project_affinity(project)),
        runtime_class_name: s.runtime_class.clone(),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(10),
        ..PodSpec::default()
    };
    deployment(&name, ns, dev_labels(project, &spec.name), None, pod)
}

/// The size limit of the `emptyDir` holding a dev pod's agent (a static
/// release binary is a few tens of MB).
const AGENT_VOLUME_SIZE: &str = "128Mi";

/// A dev server's Service: its declared port, and the gRPC port of the agent
/// in its pod.
pub fn dev_service(s: &Settings, ns: &str, project: &str, spec: &ContainerSpec) -> Service {
    let mut svc = service(
        &dev_name(&spec.name),
        ns,
        dev_labels(project, &spec.name),
        "http",
        spec.port,
    );
    if let Some(spec) = svc.spec.as_mut() {
        // The agent serves while the dev server is down (crashed, or not
        // listening yet): its terminals, logs and exit code stay reachable.
        // One pod per Deployment, so readiness never chose between pods.
        spec.publish_not_ready_addresses = Some(true);
    }
    if let Some(ports) = svc.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        ports.push(ServicePort {
            name: Some("grpc".to_owned()),
            port: i32::from(s.agent_port),
            target_port: Some(IntOrString::Int(i32::from(s.agent_port))),
            protocol: Some("TCP".to_owned()),
            ..ServicePort::default()
        });
    }
    svc
}
