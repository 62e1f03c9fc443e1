//! The Kubernetes runtime's flags (flattened into the gateway's `Config`) and
//! the validated settings built from them.

use std::time::Duration;

use clap::{Args, ValueEnum};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Private, shared, link-local (cloud metadata) and unique-local ranges:
/// where clusters put pods, Services and nodes.
pub(super) const DEFAULT_CLUSTER_CIDRS: &str =
    "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,169.254.0.0/16,fc00::/7,fe80::/10";

/// Flags of the Kubernetes runtime; each also reads the variable beside it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kubernetes runtime")]
pub struct KubernetesArgs {
    /// Image of dev-server pods (node, python, git).
    #[arg(
        long = "k8s-dev-image",
        env = "GATEWAY_K8S_DEV_IMAGE",
        default_value = "devgate/dev:latest"
    )]
    pub dev_image: String,

    /// Pull policy of project images: Always, IfNotPresent or Never.
    #[arg(long = "k8s-image-pull-policy", env = "GATEWAY_K8S_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,

    /// The gateway's own namespace: project NetworkPolicies admit traffic from it.
    #[arg(
        long = "k8s-gateway-namespace",
        env = "GATEWAY_K8S_GATEWAY_NAMESPACE",
        default_value = "devgate"
    )]
    pub gateway_namespace: String,

    /// The cluster's own address ranges (pods, Services, nodes, link-local
    /// metadata), comma-separated: project pods may reach the internet but
    /// not these (NetworkPolicy `ipBlock.except`).
    #[arg(
        long = "k8s-cluster-cidrs",
        env = "GATEWAY_K8S_CLUSTER_CIDRS",
        default_value = DEFAULT_CLUSTER_CIDRS
    )]
    pub cluster_cidrs: String,

    /// How the gateway reaches agents and dev servers: `service` (in-cluster DNS)
    /// or `port-forward` (through the API server, for a gateway outside the cluster).
    #[arg(long = "k8s-agent-access", env = "GATEWAY_K8S_AGENT_ACCESS", value_enum, default_value_t = Access::Service)]
    pub access: Access,

    /// TCP port the agent listens on in the file-manager pod and in every
    /// dev-server pod (a container may not declare it).
    #[arg(
        long = "k8s-agent-port",
        env = "GATEWAY_K8S_AGENT_PORT",
        default_value_t = 7070
    )]
    pub agent_port: u16,

    /// Size of each project's volume (`project-storage`).
    #[arg(
        long = "k8s-storage-size",
        env = "GATEWAY_K8S_STORAGE_SIZE",
        default_value = "5Gi"
    )]
    pub storage_size: String,

    /// StorageClass of project volumes; empty = the cluster's default.
    #[arg(
        long = "k8s-storage-class",
        env = "GATEWAY_K8S_STORAGE_CLASS",
        default_value = ""
    )]
    pub storage_class: String,

    /// Access mode of project volumes. ReadWriteOnce pins dev servers to the
    /// file-manager's node (pod affinity); ReadWriteMany lets them spread.
    #[arg(long = "k8s-access-mode", env = "GATEWAY_K8S_ACCESS_MODE", default_value = "ReadWriteOnce",
          value_parser = ["ReadWriteOnce", "ReadWriteMany"])]
    pub access_mode: String,

    /// CPU request of the file-manager pod.
    #[arg(
        long = "k8s-agent-cpu-request",
        env = "GATEWAY_K8S_AGENT_CPU_REQUEST",
        default_value = "100m"
    )]
    pub agent_cpu_request: String,
    /// Memory request of the file-manager pod.
    #[arg(
        long = "k8s-agent-memory-request",
        env = "GATEWAY_K8S_AGENT_MEMORY_REQUEST",
        default_value = "128Mi"
    )]
    pub agent_memory_request: String,
    /// CPU limit of the file-manager pod.
    #[arg(
        long = "k8s-agent-cpu-limit",
        env = "GATEWAY_K8S_AGENT_CPU_LIMIT",
        default_value = "1"
    )]
    pub agent_cpu_limit: String,
    /// Memory limit of the file-manager pod.
    #[arg(
        long = "k8s-agent-memory-limit",
        env = "GATEWAY_K8S_AGENT_MEMORY_LIMIT",
        default_value = "1Gi"
    )]
    pub agent_memory_limit: String,

    /// Ephemeral storage (writable layer, logs, `/tmp`) each project pod
    /// may use before the kubelet evicts it, so one project cannot fill a
    /// node's disk.
    #[arg(
        long = "k8s-ephemeral-storage-limit",
        env = "GATEWAY_K8S_EPHEMERAL_STORAGE_LIMIT",
        default_value = "2Gi"
    )]
    pub ephemeral_storage_limit: String,
    /// Size limit of each project pod's `/tmp` (an emptyDir).
    #[arg(
        long = "k8s-tmp-size",
        env = "GATEWAY_K8S_TMP_SIZE",
        default_value = "1Gi"
    )]
    pub tmp_size: String,

    /// CPU request of each dev-server pod.
    #[arg(
        long = "k8s-dev-cpu-request",
        env = "GATEWAY_K8S_DEV_CPU_REQUEST",
        default_value = "250m"
    )]
    pub dev_cpu_request: String,
    /// Memory request of each dev-server pod.
    #[arg(
        long = "k8s-dev-memory-request",
        env = "GATEWAY_K8S_DEV_MEMORY_REQUEST",
        default_value = "512Mi"
    )]
    pub dev_memory_request: String,
    /// CPU limit of each dev-server pod.
    #[arg(
        long = "k8s-dev-cpu-limit",
        env = "GATEWAY_K8S_DEV_CPU_LIMIT",
        default_value = "2"
    )]
    pub dev_cpu_limit: String,
    /// Memory limit of each dev-server pod.
    #[arg(
        long = "k8s-dev-memory-limit",
        env = "GATEWAY_K8S_DEV_MEMORY_LIMIT",
        default_value = "2Gi"
    )]
    pub dev_memory_limit: String,

    /// RuntimeClass of dev-server pods (e.g. `gvisor`); empty = the cluster's default.
    #[arg(
        long = "k8s-runtime-class",
        env = "GATEWAY_K8S_RUNTIME_CLASS",
        default_value = ""
    )]
    pub runtime_class: String,

    /// Pods a project namespace may hold (its ResourceQuota).
    #[arg(
        long = "k8s-quota-pods",
        env = "GATEWAY_K8S_QUOTA_PODS",
        default_value = "20"
    )]
    pub quota_pods: String,
    /// Sum of the CPU limits of a project's pods (its ResourceQuota).
    #[arg(
        long = "k8s-quota-cpu",
        env = "GATEWAY_K8S_QUOTA_CPU",
        default_value = "8"
    )]
    pub quota_cpu: String,
    /// Sum of the memory limits of a project's pods (its ResourceQuota).
    #[arg(
        long = "k8s-quota-memory",
        env = "GATEWAY_K8S_QUOTA_MEMORY",
        default_value = "16Gi"
    )]
    pub quota_memory: String,
    /// Sum of the ephemeral-storage limits of a project's pods (its ResourceQuota).
    #[arg(
        long = "k8s-quota-ephemeral-storage",
        env = "GATEWAY_K8S_QUOTA_EPHEMERAL_STORAGE",
        default_value = "20Gi"
    )]
    pub quota_ephemeral_storage: String,
    /// Sum of the storage its volume claims may request (its ResourceQuota).
    #[arg(
        long = "k8s-quota-storage",
        env = "GATEWAY_K8S_QUOTA_STORAGE",
        default_value = "50Gi"
    )]
    pub quota_storage: String,

    /// Seconds to wait for a project's pods to become ready.
    #[arg(
        long = "k8s-ready-timeout-secs",
        env = "GATEWAY_K8S_READY_TIMEOUT_SECS",
        default_value_t = 180
    )]
    pub ready_timeout_secs: u64,

    /// Seconds one call to the API server may take before it counts as unanswered.
    #[arg(
        long = "k8s-api-timeout-secs",
        env = "GATEWAY_K8S_API_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub api_timeout_secs: u64,
}

/// How the gateway reaches pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Access {
    /// In-cluster: the Service's DNS name (the gateway runs in the cluster).
    Service,
    /// Through the API server's port-forward (a gateway on a laptop).
    PortForward,
}

/// Validated settings of the runtime.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prefix of project namespaces: `{prefix}{project}`.
    pub namespace_prefix: String,
    pub agent_image: String,
    pub dev_image: String,
    pub image_pull_policy: String,
    pub gateway_namespace: String,
    /// The port the gateway's pods listen on (its `--listen` port): project
    /// pods may reach the gateway there and nowhere else in its namespace.
    pub gateway_port: u16,
    /// Ranges project pods may not reach (validated CIDRs).
    pub cluster_cidrs: Vec<String>,
    pub access: Access,
    pub agent_port: u16,
    pub storage_size: Quantity,
    pub storage_class: Option<String>,
    pub access_mode: String,
    pub agent_resources: Resources,
    pub dev_resources: Resources,
    /// Ephemeral-storage limit of every project container.
    pub ephemeral_storage_limit: Quantity,
    /// `sizeLimit` of every project pod's `/tmp`.
    pub tmp_size: Quantity,
    /// The ResourceQuota of each project namespace.
    pub quota: Quota,
    pub runtime_class: Option<String>,
    pub ready_timeout: Duration,
    pub api_timeout: Duration,
    /// Pause before a watch that broke (410 Gone, a dropped connection, 5xx)
    /// is made again; waits are watches, never polls.
    pub rewatch_pause: Duration,
    /// A port the S3 endpoint listens on other than 443, opened for egress
    /// (agents GET and PUT snapshot packs on URLs the gateway signed).
    pub s3_port: Option<u16>,
    /// Secret from which each project's agent token is derived.
    pub token_key: Vec<u8>,
}

/// Requests and limits of one kind of pod.
#[derive(Debug, Clone)]
pub struct Quota {
    pub pods: Quantity,
    pub cpu: Quantity,
    pub memory: Quantity,
    pub ephemeral_storage: Quantity,
    pub storage: Quantity,
}

/// Requests and limits of one kind of project pod.
#[derive(Debug, Clone)]
pub struct Resources {
    pub cpu_request: Quantity,
    pub memory_request: Quantity,
    pub cpu_limit: Quantity,
    pub memory_limit: Quantity,
}

impl Settings {
    /// Builds and checks the settings; the error is one line naming the flag.
    pub fn new(
        args: &KubernetesArgs,
        namespace_prefix: &str,
        agent_image: &str,
        token_key: &[u8],
    ) -> Result<Settings, String> {
        let s3_port = std::env::var("AWS_ENDPOINT_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .and_then(|v| endpoint_port(&v))
            .filter(|p| *p != 443);
        let settings = Settings {
            namespace_prefix: namespace_prefix.to_owned(),
            agent_image: agent_image.to_owned(),
            dev_image: args.dev_image.clone(),
            image_pull_policy: args.image_pull_policy.clone(),
            gateway_namespace: args.gateway_namespace.clone(),
            gateway_port: 8080,
            cluster_cidrs: cidrs(&args.cluster_cidrs)?,
            access: args.access,
            agent_port: args.agent_port,
            storage_size: quantity("--k8s-storage-size", &args.storage_size)?,
            storage_class: Some(args.storage_class.clone()).filter(|s| !s.is_empty()),
            access_mode: args.access_mode.clone(),
            agent_resources: Resources {
                cpu_request: quantity("--k8s-agent-cpu-request", &args.agent_cpu_request)?,
                memory_request: quantity("--k8s-agent-memory-request", &args.agent_memory_request)?,
                cpu_limit: quantity("--k8s-agent-cpu-limit", &args.agent_cpu_limit)?,
                memory_limit: quantity("--k8s-agent-memory-limit", &args.agent_memory_limit)?,
            },
            dev_resources: Resources {
                cpu_request: quantity("--k8s-dev-cpu-request", &args.dev_cpu_request)?,
                memory_request: quantity("--k8s-dev-memory-request", &args.dev_memory_request)?,
                cpu_limit: quantity("--k8s-dev-cpu-limit", &args.dev_cpu_limit)?,
                memory_limit: quantity("--k8s-dev-memory-limit", &args.dev_memory_limit)?,
            },
            ephemeral_storage_limit: quantity(
                "--k8s-ephemeral-storage-limit",
                &args.ephemeral_storage_limit,
            )?,
            tmp_size: quantity("--k8s-tmp-size", &args.tmp_size)?,
            quota: Quota {
                pods: quantity("--k8s-quota-pods", &args.quota_pods)?,
                cpu: quantity("--k8s-quota-cpu", &args.quota_cpu)?,
                memory: quantity("--k8s-quota-memory", &args.quota_memory)?,
                ephemeral_storage: quantity(
                    "--k8s-quota-ephemeral-storage",
                    &args.quota_ephemeral_storage,
                )?,
                storage: quantity("--k8s-quota-storage", &args.quota_storage)?,
            },
            runtime_class: Some(args.runtime_class.clone()).filter(|s| !s.is_empty()),
            ready_timeout: Duration::from_secs(args.ready_timeout_secs),
            api_timeout: Duration::from_secs(args.api_timeout_secs.max(1)),
            rewatch_pause: Duration::from_secs(1),
            s3_port,
            token_key: token_key.to_vec(),
        };
        // The namespace is `{prefix}{id}` with ids of up to 40 characters; it
        // must stay a DNS label of at most 63.
        let prefix_ok = settings.namespace_prefix.len() <= 23
            && settings
                .namespace_prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && settings
                .namespace_prefix
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase());
        if !prefix_ok {
            return Err(format!(
                "--k8s-namespace-prefix {:?} must be up to 23 lowercase letters, digits or '-', starting with a letter",
                settings.namespace_prefix
            ));
        }
        if !is_namespace_name(&settings.gateway_namespace) {
            return Err(format!(
                "--k8s-gateway-namespace {:?} is not a namespace name",
                settings.gateway_namespace
            ));
        }
        if settings.agent_image.is_empty() || settings.dev_image.is_empty() {
            return Err("--agent-image and --k8s-dev-image must not be empty".into());
        }
        Ok(settings)
    }
}

/// An RFC 1123 label of up to 63 characters, as namespace names are.
fn is_namespace_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A Kubernetes quantity (`500m`, `2Gi`, `1.5`): digits with an optional
/// fraction, then an optional suffix the API server accepts.
fn quantity(flag: &str, v: &str) -> Result<Quantity, String> {
    const SUFFIXES: &[&str] = &[
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let digits_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, suffix) = v.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && !number.starts_with('.')
        && !number.ends_with('.');
    if number_ok && SUFFIXES.contains(&suffix) {
        Ok(Quantity(v.to_owned()))
    } else {
        Err(format!(
            "{flag} {v:?} is not a Kubernetes quantity (e.g. 500m, 2Gi)"
        ))
    }
}

/// The value of a quantity in whole units (bytes for storage), rounded
/// down: digits with an optional fraction and a binary or decimal suffix, as
/// [`quantity`] accepts and the API server writes back; `None` otherwise
/// (an exponent form, or a value too large).
pub(crate) fn quantity_bytes(v: &str) -> Option<u128> {
    let digits_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, suffix) = v.split_at(digits_end);
    let (scale, divisor): (u128, u128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1000u128.pow(2), 1),
        "G" => (1000u128.pow(3), 1),
        "T" => (1000u128.pow(4), 1),
        "P" => (1000u128.pow(5), 1),
        "E" => (1000u128.pow(6), 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.len() > 18 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u128 = whole.parse().ok()?;
    let frac_den = 10u128.pow(u32::try_from(fraction.len()).ok()?);
    let frac_num: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    let total = whole
        .checked_mul(scale)?
        .checked_add(frac_num.checked_mul(scale)? / frac_den)?;
    Some(total / divisor)
}

/// A comma-separated list of CIDRs (`10.0.0.0/8`, `fc00::/7`), each
/// checked; an empty list is allowed (nothing excluded).
fn cidrs(v: &str) -> Result<Vec<String>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let ok = c.split_once('/').is_some_and(|(addr, len)| {
                match (addr.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
                    (Ok(std::net::IpAddr::V4(_)), Ok(l)) => l <= 32 && !len.starts_with('+'),
                    (Ok(std::net::IpAddr::V6(_)), Ok(l)) => l <= 128 && !len.starts_with('+'),
                    _ => false,
                }
            });
            if ok {
                Ok(c.to_owned())
            } else {
                Err(format!(
                    "--k8s-cluster-cidrs: {c:?} is not a CIDR (e.g. 10.0.0.0/8)"
                ))
            }
        })
        .collect()
}

/// The port of an `http(s)://host[:port][/...]` URL.
fn endpoint_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    // `[v6]:port`, or `host:port`; a bare IPv6 address is not valid in a URL.
    let explicit = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once("]:").and_then(|(_, p)| p.parse().ok()),
        None => host_port.rsplit_once(':').and_then(|(_, p)| p.parse().ok()),
    };
    explicit.or(match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["500m", "2Gi", "1", "1.5", "128Mi", "10G"] {
            assert!(quantity("--x", ok).is_ok(), "{ok}");
        }
        for bad in ["", "Gi", "2GB", "-1", "1..5", ".5", "2 Gi"] {
            assert!(quantity("--x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantity_values() {
        assert_eq!(quantity_bytes("5Gi"), Some(5 << 30));
        assert_eq!(quantity_bytes("5G"), Some(5_000_000_000));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("1500M"), Some(1_500_000_000));
        assert_eq!(quantity_bytes("1024"), Some(1024));
        assert_eq!(quantity_bytes("1500m"), Some(1));
        assert!(quantity_bytes("5Gi") > quantity_bytes("5G"));
        for bad in ["", "Gi", "1e3", "2GB", "-1", "1..5"] {
            assert_eq!(quantity_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn cluster_cidrs() {
        assert_eq!(cidrs(DEFAULT_CLUSTER_CIDRS).unwrap().len(), 7);
        assert_eq!(
            cidrs(" 10.0.0.0/8 , fd00::/8").unwrap(),
            ["10.0.0.0/8", "fd00::/8"]
        );
        assert!(cidrs("").unwrap().is_empty());
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "fc00::/129",
            "example/8",
            "10.0.0.0/+8",
        ] {
            assert!(cidrs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_ports() {
        assert_eq!(endpoint_port("http://minio:9000"), Some(9000));
        assert_eq!(endpoint_port("http://minio.devgate.svc/"), Some(80));
        assert_eq!(endpoint_port("https://s3.example.com"), Some(443));
        assert_eq!(endpoint_port("http://127.0.0.1:4566/path"), Some(4566));
        assert_eq!(endpoint_port("http://[::1]:9000"), Some(9000));
        assert_eq!(endpoint_port("minio:9000"), None);
    }
}
