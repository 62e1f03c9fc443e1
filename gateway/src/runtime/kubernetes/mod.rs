//! The Kubernetes runtime: each project is a namespace `{prefix}{id}` with a
//! NetworkPolicy, the `project-storage` volume, the agent's Secret and the
//! file-manager Deployment and Service; each running dev server a Deployment
//! and Service `dev-{name}` whose pod runs the agent as PID 1 (terminals,
//! exec and logs of the container go to that agent over gRPC). Every write is a server-side apply with one field
//! manager, so opening again converges a half-made project. The only module
//! of the gateway that imports kube-rs.

mod config;
mod forward;
pub mod objects;
mod pods;
mod storage;
mod wait;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Pod, ResourceQuota, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

pub use self::config::{Access, KubernetesArgs, Resources, Settings};
use self::objects::{FIELD_MANAGER, FILE_MANAGER};
pub use self::pods::Kube;
use super::{
    AgentAddress, AgentEndpoint, ByteStream, ContainerRoute, ContainerSpec, ContainerState,
    ExecOutput, ExecSpec, Runtime, ShellTarget,
};
use crate::agent_client::AgentClient;
use crate::error::{Error, Result};

/// (project, container) → the client of the agent in that dev pod.
type DevAgents = HashMap<(String, String), (AgentEndpoint, AgentClient)>;

/// The lifecycle on a cluster, through the API server.
pub struct KubernetesRuntime {
    kube: Kube,
    settings: Arc<Settings>,
    /// Projects whose file-manager was seen ready by this gateway; others are
    /// checked with the API server (after a restart, or on another replica).
    ready: Mutex<HashSet<String>>,
    /// Running dev servers seen by this gateway: (project, name) → port.
    running: Mutex<HashMap<(String, String), u16>>,
    /// Clients of the agents in dev pods, reused between calls.
    dev_agents: Mutex<DevAgents>,
    forwards: Arc<forward::Forwards>,
}

impl KubernetesRuntime {
    /// A runtime over an API client (in a pod: its service account; on a
    /// laptop: the kubeconfig), or over a mock service in tests.
    pub fn new(client: kube::Client, settings: Settings) -> KubernetesRuntime {
        KubernetesRuntime {
            kube: Kube {
                client,
                timeout: settings.api_timeout,
            },
            settings: Arc::new(settings),
            ready: Mutex::default(),
            running: Mutex::default(),
            dev_agents: Mutex::default(),
            forwards: Arc::default(),
        }
    }

    /// Connects with the ambient configuration (in-cluster or kubeconfig).
    pub async fn connect(settings: Settings) -> anyhow::Result<KubernetesRuntime> {
        crate::tls::install_provider();
        let client = kube::Client::try_default()
            .await
            .map_err(|e| anyhow::anyhow!("cannot configure the kubernetes client: {e}"))?;
        Ok(KubernetesRuntime::new(client, settings))
    }

    /// The namespace of a project.
    pub fn namespace(&self, project: &str) -> String {
        format!("{}{project}", self.settings.namespace_prefix)
    }

    /// The agent's token of a project: derived from the gateway's secret, so
    /// every replica and a restarted gateway know it without reading the
    /// Secret back (the ClusterRole grants no `get` on Secrets).
    pub fn agent_token(&self, project: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"devgate agent token\0");
        h.update(&self.settings.token_key);
        h.update(b"\0");
        h.update(self.namespace(project).as_bytes());
        hex::encode(h.finalize())
    }

    async fn apply<K>(&self, api: &Api<K>, name: &str, obj: &K) -> Result<K>
    where
        K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let kind = K::kind(&K::DynamicType::default()).to_lowercase();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let what = format!("apply {kind} {name}");
        match self
            .kube
            .call(&what, api.patch(name, &params, &Patch::Apply(obj)))
            .await
        {
            // An apply creates what is missing: a 404 means the API server
            // lacks the resource type (or the namespace vanished meanwhile),
            // never that the project is unknown.
            Err(Error::NotFound(_)) => Err(Error::Internal(format!(
                "{what}: the kubernetes api answered 404"
            ))),
            other => other,
        }
    }

    /// Deletes an object; an absent one is not an error.
    async fn delete<K>(&self, api: &Api<K>, name: &str) -> Result<()>
    where
        K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let kind = K::kind(&K::DynamicType::default()).to_lowercase();
        match self
            .kube
            .call(
                &format!("delete {kind} {name}"),
                api.delete(name, &DeleteParams::background()),
            )
            .await
        {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn endpoint(&self, project: &str, address: String) -> AgentEndpoint {
        AgentEndpoint {
            address: AgentAddress::Tcp(address),
            token: self.agent_token(project),
        }
    }

    /// Where the project's agent is reached: the Service's DNS name, or a
    /// loopback listener carried through the API server's port-forward.
    async fn agent_address(&self, project: &str) -> Result<String> {
        let labels = objects::file_manager_labels(project);
        self.address_of(project, FILE_MANAGER, &labels).await
    }

    /// Where the agent of a component (the file-manager, or a dev pod whose
    /// Service is `service`) is reached, as [`Self::agent_address`].
    async fn address_of(
        &self,
        project: &str,
        service: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        let ns = self.namespace(project);
        match self.settings.access {
            Access::Service => Ok(format!(
                "http://{service}.{ns}.svc:{}",
                self.settings.agent_port
            )),
            Access::PortForward => {
                let selector = objects::selector(labels);
                // The file-manager's agent once ready; a dev pod's whenever
                // it runs (it serves while the dev server is down).
                let ready_only = service == FILE_MANAGER;
                let addr = self
                    .forwards
                    .local(
                        &self.kube,
                        &ns,
                        &selector,
                        self.settings.agent_port,
                        ready_only,
                    )
                    .await?;
                Ok(format!("http://{addr}"))
            }
        }
    }

    /// The endpoint of the agent in a running container's dev pod (the
    /// project's token: one Secret per namespace).
    async fn dev_agent(&self, project: &str, name: &str) -> Result<AgentEndpoint> {
        // Not running (no Deployment): a clear answer, not a dial error.
        self.running_port(project, name).await?;
        let address = self
            .address_of(
                project,
                &objects::dev_name(name),
                &objects::dev_labels(project, name),
            )
            .await?;
        Ok(self.endpoint(project, address))
    }

    /// A client of the agent in a running container's dev pod, reused while
    /// its endpoint stays the same.
    async fn dev_client(&self, project: &str, name: &str) -> Result<AgentClient> {
        let endpoint = self.dev_agent(project, name).await?;
        let key = (project.to_owned(), name.to_owned());
        let mut map = self.dev_agents_lock();
        if let Some((e, c)) = map.get(&key)
            && *e == endpoint
        {
            return Ok(c.clone());
        }
        let client = AgentClient::connect_lazy(&endpoint)?;
        map.insert(key, (endpoint, client.clone()));
        Ok(client)
    }

    fn dev_agents_lock(&self) -> std::sync::MutexGuard<'_, DevAgents> {
        // Single inserts and removals: consistent even after a panic.
        self.dev_agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits, up to the ready timeout, for a terminating namespace to be
    /// gone; an absent or live namespace returns at once.
    async fn wait_until_gone_if_terminating(&self, ns: &str) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.kube.client.clone());
        match self
            .kube
            .call(&format!("get namespace {ns}"), api.get(ns))
            .await
        {
            Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
            Ok(n) if n.metadata.deletion_timestamp.is_none() => Ok(()),
            Ok(_) => self.wait_namespace_gone(&api, ns, false).await,
        }
    }

    /// Watches a namespace being deleted until it is gone (or, unless
    /// `absent` is asked for, made again, live, by another replica). Still
    /// there after the ready timeout, it is
    /// stuck: something holds it (a finalizer nobody removes, content that
    /// cannot be deleted), and waiting longer would only hang the caller, so
    /// the answer is [`Error::EnvironmentStuck`] with what the namespace
    /// controller says holds it.
    async fn wait_namespace_gone(
        &self,
        api: &Api<Namespace>,
        ns: &str,
        absent: bool,
    ) -> Result<()> {
        let limit = self.settings.ready_timeout;
        let gone_or_live = |n: Option<&Namespace>| {
            n.is_none_or(|n| !absent && n.metadata.deletion_timestamp.is_none())
        };
        let gone = wait::watch_until(api, ns, limit, self.settings.rewatch_pause, |n| {
            gone_or_live(n).then_some(())
        })
        .await?;
        if gone.is_some() {
            return Ok(());
        }
        let why = match self
            .kube
            .call(&format!("get namespace {ns}"), api.get(ns))
            .await
        {
            Err(Error::NotFound(_)) => return Ok(()),
            Ok(n) if gone_or_live(Some(&n)) => return Ok(()),
            Ok(n) => wait::why_terminating(&n),
            Err(e) => format!("namespace unreadable: {e}"),
        };
        Err(Error::EnvironmentStuck(format!(
            "namespace {ns} still terminating after {}s: {why}",
            limit.as_secs()
        )))
    }

    /// Waits for a Deployment's pod to be ready, watching it; fails when the
    /// project's quota refuses its pod (at once, saying so) or after the
    /// ready timeout saying why (pod states and the namespace's warnings).
    /// A refusal while a pod of the project is still terminating (a dev
    /// server stopped just before) is waited out: its share of the quota
    /// comes back when it is gone.
    async fn wait_ready(&self, ns: &str, name: &str, selector: &str) -> Result<()> {
        let api: Api<Deployment> = Api::namespaced(self.kube.client.clone(), ns);
        let deadline = tokio::time::Instant::now() + self.settings.ready_timeout;
        let d = self
            .kube
            .call(&format!("get deployment {ns}/{name}"), api.get(name))
            .await?;
        let mut seen = match wait::rollout(&d) {
            Some(r) => Some(r),
            None => self.watch_rollout(&api, name, deadline, true).await?,
        };
        if let Some(wait::Rollout::OverQuota(_)) = &seen
            && pods::terminating(&self.kube, ns).await
        {
            tracing::info!(
                namespace = ns,
                deployment = name,
                "over the quota while a pod of the project terminates; waiting for it"
            );
            seen = self.watch_rollout(&api, name, deadline, false).await?;
        }
        match seen {
            Some(wait::Rollout::Ready) => Ok(()),
            Some(wait::Rollout::OverQuota(why)) => Err(Error::Conflict(format!(
                "{name} cannot start: the project is over its quota ({why}); stop a container first"
            ))),
            None => {
                let why = pods::why_not_ready(&self.kube, ns, selector).await;
                Err(Error::Unavailable(format!(
                    "{ns}/{name} not ready after {}s: {why}",
                    self.settings.ready_timeout.as_secs()
                )))
            }
        }
    }

    /// Lists, up to the ready timeout, until no pod matches `selector`: the
    /// one wait that polls (a list every `rewatch_pause`), since a dev
    /// server's pods have no one name to watch and the ClusterRole grants no
    /// `watch` on pods.
    async fn wait_pods_gone(&self, ns: &str, selector: &str) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.kube.client.clone(), ns);
        let deadline = tokio::time::Instant::now() + self.settings.ready_timeout;
        loop {
            let list = self
                .kube
                .call(
                    &format!("list pods {ns} {selector}"),
                    pods.list(&kube::api::ListParams::default().labels(selector)),
                )
                .await?;
            if list.items.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "pods of {selector} in {ns} still there after {}s",
                    self.settings.ready_timeout.as_secs()
                )));
            }
            tokio::time::sleep(self.settings.rewatch_pause).await;
        }
    }

    /// A start whose Deployment was already there with the same spec makes
    /// no new pod ([`same_pod_stays`]); when the server in that pod has ended (it exited, or was
    /// stopped through the agent), its agent starts it again, as the local
    /// runtime starts an ended server. A pod that is not up (a new one is
    /// coming) is left to its own `--start`.
    async fn restart_if_ended(&self, project: &str, spec: &ContainerSpec) {
        let restart = async {
            let address = self
                .address_of(
                    project,
                    &objects::dev_name(&spec.name),
                    &objects::dev_labels(project, &spec.name),
                )
                .await?;
            let client = AgentClient::connect_lazy(&self.endpoint(project, address))?;
            let procs = client.list_background().await?;
            if procs.iter().any(|p| p.name == spec.name && !p.running) {
                tracing::info!(project, container = %spec.name, "dev server had ended; starting it again in its pod");
                client
                    .start_background(&spec.name, &spec.start, &spec.name, BTreeMap::new())
                    .await?;
            }
            Ok::<(), Error>(())
        };
        match tokio::time::timeout(std::time::Duration::from_secs(10), restart).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(project, container = %spec.name, error = %crate::error::Chain(&error), "no running dev pod to restart the server in");
            }
            Err(_) => {
                tracing::debug!(project, container = %spec.name, "the dev pod's agent did not answer in time")
            }
        }
    }

    /// Watches a Deployment until it is ready (or, with `quota`, refused by
    /// the quota), up to `deadline`.
    async fn watch_rollout(
        &self,
        api: &Api<Deployment>,
        name: &str,
        deadline: tokio::time::Instant,
        quota: bool,
    ) -> Result<Option<wait::Rollout>> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        wait::watch_until(api, name, left, self.settings.rewatch_pause, |d| {
            d.and_then(wait::rollout)
                .filter(|r| quota || matches!(r, wait::Rollout::Ready))
        })
        .await
    }

    fn ready_lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Single inserts and removals: consistent even after a panic.
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running_lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u16>> {
        // Single inserts and removals: consistent even after a panic.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready pod of a running dev server.
    async fn dev_pod(&self, project: &str, name: &str) -> Result<(Api<Pod>, String)> {
        let ns = self.namespace(project);
        let pods: Api<Pod> = Api::namespaced(self.kube.client.clone(), &ns);
        let selector = objects::selector(&objects::dev_labels(project, name));
        match pods::ready_pod(&self.kube, &pods, &selector).await {
            Ok(pod) => Ok((pods, pod)),
            Err(Error::Unavailable(_) | Error::NotFound(_)) => Err(Error::Unavailable(format!(
                "container {name} is not running"
            ))),
            Err(e) => Err(e),
        }
    }

    /// The declared port of a running dev server, from this gateway's memory
    /// or from its Deployment.
    async fn running_port(&self, project: &str, name: &str) -> Result<u16> {
        if let Some(port) = self
            .running_lock()
            .get(&(project.to_owned(), name.to_owned()))
        {
            return Ok(*port);
        }
        let ns = self.namespace(project);
        let api: Api<Deployment> = Api::namespaced(self.kube.client.clone(), &ns);
        let dev = objects::dev_name(name);
        let d = match self
            .kube
            .call(&format!("get deployment {ns}/{dev}"), api.get(&dev))
            .await
        {
            Ok(d) => d,
            Err(Error::NotFound(_)) => {
                return Err(Error::Unavailable(format!(
                    "container {name} is not running"
                )));
            }
            Err(e) => return Err(e),
        };
        let port = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.ports.as_ref()?.first())
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| Error::internal(format!("deployment {ns}/{dev} declares no port")))?;
        self.running_lock()
            .insert((project.to_owned(), name.to_owned()), port);
        Ok(port)
    }
}

/// Whether an applied Deployment keeps the pod it had: it has one, and the
/// apply changed nothing of its spec (the generation its status describes
/// is still the current one).
fn same_pod_stays(d: &Deployment) -> bool {
    let Some(status) = &d.status else {
        return false;
    };
    status.replicas.unwrap_or(0) >= 1
        && d.metadata.generation.is_some()
        && status.observed_generation == d.metadata.generation
}

#[async_trait::async_trait]
impl Runtime for KubernetesRuntime {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn ensure(&self, project: &str) -> Result<AgentEndpoint> {
        let ns = self.namespace(project);
        let s = &self.settings;
        let client = &self.kube.client;
        let token = self.agent_token(project);
        let token_hash = hex::encode(Sha256::digest(token.as_bytes()));
        tracing::info!(project, namespace = %ns, "opening project environment");

        // A namespace still terminating (a teardown that outlived its wait)
        // refuses new content: wait for it to go, then make it afresh.
        self.wait_until_gone_if_terminating(&ns).await?;
        self.apply(
            &Api::<Namespace>::all(client.clone()),
            &ns,
            &objects::namespace(&ns, project),
        )
        .await?;
        self.apply(
            &Api::<NetworkPolicy>::namespaced(client.clone(), &ns),
            objects::NETWORK_POLICY,
            &objects::network_policy(s, &ns, project),
        )
        .await?;
        self.apply(
            &Api::<ResourceQuota>::namespaced(client.clone(), &ns),
            objects::QUOTA,
            &objects::quota(s, &ns, project),
        )
        .await?;
        self.apply(
            &Api::<LimitRange>::namespaced(client.clone(), &ns),
            objects::LIMITS,
            &objects::limit_range(s, &ns, project),
        )
        .await?;
        self.ensure_storage(&ns, project).await?;
        self.apply(
            &Api::<Secret>::namespaced(client.clone(), &ns),
            objects::AGENT_SECRET,
            &objects::agent_secret(s, &ns, project, &token),
        )
        .await?;
        self.apply(
            &Api::<Deployment>::namespaced(client.clone(), &ns),
            FILE_MANAGER,
            &objects::file_manager(s, &ns, project, &token_hash),
        )
        .await?;
        self.apply(
            &Api::<Service>::namespaced(client.clone(), &ns),
            FILE_MANAGER,
            &objects::file_manager_service(s, &ns, project),
        )
        .await?;
        let selector = objects::selector(&objects::file_manager_labels(project));
        self.wait_ready(&ns, FILE_MANAGER, &selector).await?;
        self.ready_lock().insert(project.to_owned());
        let address = self.agent_address(project).await?;
        tracing::info!(project, namespace = %ns, "project environment ready");
        Ok(self.endpoint(project, address))
    }

    async fn agent(&self, project: &str) -> Result<AgentEndpoint> {
        if !self.ready_lock().contains(project) {
            let ns = self.namespace(project);
            let api: Api<Deployment> = Api::namespaced(self.kube.client.clone(), &ns);
            let found = match self
                .kube
                .call(
                    &format!("get deployment {ns}/{FILE_MANAGER}"),
                    api.get(FILE_MANAGER),
                )
                .await
            {
                Ok(d) => wait::deployment_ready(&d),
                Err(Error::NotFound(_)) => false,
                Err(e) => return Err(e),
            };
            if !found {
                return Err(Error::ProjectNotActive(project.to_owned()));
            }
            self.ready_lock().insert(project.to_owned());
        }
        let address = self.agent_address(project).await?;
        Ok(self.endpoint(project, address))
    }

    async fn start_container(&self, project: &str, spec: &ContainerSpec) -> Result<ContainerRoute> {
        let agent_port = self.settings.agent_port;
        if spec.port == agent_port || spec.ports.contains(&agent_port) {
            return Err(Error::BadRequest(format!(
                "port {agent_port} is the agent's in dev containers on this gateway; declare another port"
            )));
        }
        let ns = self.namespace(project);
        let client = &self.kube.client;
        let name = objects::dev_name(&spec.name);
        tracing::info!(project, container = %spec.name, "starting dev server");
        let applied = self
            .apply(
                &Api::<Deployment>::namespaced(client.clone(), &ns),
                &name,
                &objects::dev_server(&self.settings, &ns, project, spec),
            )
            .await?;
        self.apply(
            &Api::<Service>::namespaced(client.clone(), &ns),
            &name,
            &objects::dev_service(&self.settings, &ns, project, spec),
        )
        .await?;
        if same_pod_stays(&applied) {
            self.restart_if_ended(project, spec).await;
        }
        let selector = objects::selector(&objects::dev_labels(project, &spec.name));
        if let Err(e) = self.wait_ready(&ns, &name, &selector).await {
            // Refused by the quota: the Deployment would make its pod later,
            // when a pod of the project goes, behind the caller's back.
            if matches!(e, Error::Conflict(_))
                && let Err(error) = self.stop_container(project, &spec.name).await
            {
                tracing::warn!(project, container = %spec.name, error = %crate::error::Chain(&error),
                    "cannot remove a dev server the quota refused");
            }
            return Err(e);
        }
        self.running_lock()
            .insert((project.to_owned(), spec.name.clone()), spec.port);
        self.container_route(project, &spec.name, None).await
    }

    async fn stop_container(&self, project: &str, name: &str) -> Result<()> {
        let ns = self.namespace(project);
        let client = &self.kube.client;
        let dev = objects::dev_name(name);
        tracing::info!(project, container = name, "stopping dev server");
        let key = (project.to_owned(), name.to_owned());
        self.running_lock().remove(&key);
        self.dev_agents_lock().remove(&key);
        let selector = objects::selector(&objects::dev_labels(project, name));
        self.forwards.forget(&ns, Some(&selector));
        // The pod's SIGTERM reaches its agent, which stops the server's
        // process group and ends the container's terminals.
        self.delete(&Api::<Deployment>::namespaced(client.clone(), &ns), &dev)
            .await?;
        self.delete(&Api::<Service>::namespaced(client.clone(), &ns), &dev)
            .await?;
        // As the local runtime's stop, answer once the server is gone (a
        // hibernation cuts its snapshot next): the pod ends when its agent
        // has stopped the group, or when its grace period ran out.
        self.wait_pods_gone(&ns, &selector).await
    }

    async fn container_route(
        &self,
        project: &str,
        name: &str,
        port: Option<u16>,
    ) -> Result<ContainerRoute> {
        let main = self.running_port(project, name).await?;
        let port = port.unwrap_or(main);
        let ns = self.namespace(project);
        match self.settings.access {
            // The declared port through the Service; another port of the
            // same server straight to its pod (the Service exposes one port).
            Access::Service if port == main => Ok(ContainerRoute {
                host: format!("{}.{ns}.svc", objects::dev_name(name)),
                port,
            }),
            Access::Service => {
                let (pods, pod) = self.dev_pod(project, name).await?;
                let p = self
                    .kube
                    .call(&format!("get pod {ns}/{pod}"), pods.get(&pod))
                    .await?;
                let ip = p.status.and_then(|s| s.pod_ip).ok_or_else(|| {
                    Error::Unavailable(format!("container {name} has no address yet"))
                })?;
                Ok(ContainerRoute { host: ip, port })
            }
            Access::PortForward => {
                let selector = objects::selector(&objects::dev_labels(project, name));
                let addr = self
                    .forwards
                    .local(&self.kube, &ns, &selector, port, true)
                    .await?;
                Ok(ContainerRoute {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                })
            }
        }
    }

    async fn container_shell(
        &self,
        project: &str,
        name: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<ShellTarget> {
        // The pod has PORT and HOST already; the container's current env
        // goes on top, as in the local runtime.
        let endpoint = self.dev_agent(project, name).await?;
        Ok(ShellTarget::Agent {
            endpoint,
            cwd: name.to_owned(),
            env: env
                .iter()
                .filter(|(k, _)| !k.starts_with("AGENT_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    async fn container_exec(
        &self,
        project: &str,
        name: &str,
        mut spec: ExecSpec,
    ) -> Result<ExecOutput> {
        let client = self.dev_client(project, name).await?;
        spec.cwd = super::container_cwd(name, &spec.cwd);
        client.run(spec).await
    }

    async fn container_logs(&self, project: &str, name: &str, follow: bool) -> Result<ByteStream> {
        use futures::StreamExt as _;
        let client = self.dev_client(project, name).await?;
        match client.background_logs(name, 0, follow).await {
            Ok(s) => Ok(s),
            // The agent has not started it (yet): no output.
            Err(Error::NotFound(_)) => Ok(futures::stream::empty().boxed()),
            Err(e) => Err(e),
        }
    }

    async fn container_state(&self, project: &str, name: &str) -> Result<Option<ContainerState>> {
        match self.running_port(project, name).await {
            Ok(_) => {}
            // No Deployment: nothing runs.
            Err(Error::Unavailable(_)) => return Ok(Some(ContainerState::Absent)),
            Err(e) => return Err(e),
        }
        let procs = self
            .dev_client(project, name)
            .await?
            .list_background()
            .await?;
        Ok(Some(match procs.iter().find(|p| p.name == name) {
            Some(p) if p.running => ContainerState::Running,
            Some(p) => ContainerState::Exited(p.exit_code),
            None => ContainerState::Absent,
        }))
    }

    async fn teardown(&self, project: &str) -> Result<()> {
        let ns = self.namespace(project);
        tracing::info!(project, namespace = %ns, "deleting project namespace");
        self.ready_lock().remove(project);
        self.running_lock().retain(|(p, _), _| p != project);
        self.dev_agents_lock().retain(|(p, _), _| p != project);
        self.forwards.forget(&ns, None);
        let api: Api<Namespace> = Api::all(self.kube.client.clone());
        self.delete(&api, &ns).await?;
        // Gone means gone: a restore right after must not meet the old
        // namespace still terminating (its content cannot be re-created).
        match self
            .kube
            .call(&format!("get namespace {ns}"), api.get(&ns))
            .await
        {
            Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => self.wait_namespace_gone(&api, &ns, true).await,
        }
    }

    /// Always ready: nothing the API server answers. Running projects are
    /// reached at their Services (or, with port-forward access, through the
    /// API server per request), so a control-plane upgrade or blip must not
    /// make every replica unready and take every preview down with it; a
    /// call that needs the API server fails on its own, with its error.
    async fn ready(&self) -> Result<()> {
        Ok(())
    }
}
