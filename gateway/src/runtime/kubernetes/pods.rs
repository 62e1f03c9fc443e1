//! Calls to the API server with a deadline and one error mapping, and what
//! the runtime reads about pods: a ready pod of a component, and why pods are
//! not ready (their container states and the namespace's warning events).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::ListParams;

use crate::error::{Error, Result};

/// The API client and the deadline of each call.
#[derive(Clone)]
pub struct Kube {
    pub client: kube::Client,
    pub timeout: Duration,
}

impl Kube {
    /// Runs one API call with the deadline, mapping its error; `what` names
    /// the call for the message ("apply deployment proj-a/file-manager").
    pub async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_error(what, e)),
            Err(_) => Err(Error::Timeout(format!(
                "kubernetes api did not answer {what} within {:?}",
                self.timeout
            ))),
        }
    }
}

/// Maps a kube-rs error by its cause: the API server's status code when it
/// answered, else "unreachable".
pub(crate) fn map_error(what: &str, e: kube::Error) -> Error {
    match &e {
        kube::Error::Api(s) => match s.code {
            404 => Error::NotFound(format!("{what}: not found")),
            409 => Error::Conflict(format!("{what}: conflict: {}", s.message)),
            // The gateway's ClusterRole lacks a rule, or the namespace is
            // being deleted (creating content in it is forbidden): both are
            // operator problems, reported generically, logged in full.
            403 => Error::Internal(format!(
                "{what}: forbidden by the kubernetes api ({}); check the gateway's ClusterRole",
                s.message
            )),
            422 | 400 => Error::Internal(format!(
                "{what}: rejected by the kubernetes api: {}",
                s.message
            )),
            429 | 500..=599 => {
                Error::Unavailable(format!("{what}: kubernetes api error {}", s.code))
            }
            code => Error::Internal(format!(
                "{what}: kubernetes api answered {code}: {}",
                s.message
            )),
        },
        _ => Error::Unavailable(format!("{what}: kubernetes api unreachable: {e}")),
    }
}

/// Whether a pod is running and its Ready condition is true.
pub(crate) fn is_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    pod.metadata.deletion_timestamp.is_none()
        && status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The name of a ready pod matching `selector`; `Unavailable` when none is.
pub(crate) async fn ready_pod(kube: &Kube, pods: &Api<Pod>, selector: &str) -> Result<String> {
    pick_pod(kube, pods, selector, is_ready, "ready").await
}

/// The name of a running pod matching `selector`, ready or not (a dev pod's
/// agent serves while its server is down); `Unavailable` when none is.
pub(crate) async fn running_pod(kube: &Kube, pods: &Api<Pod>, selector: &str) -> Result<String> {
    let running = |pod: &Pod| {
        pod.metadata.deletion_timestamp.is_none()
            && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    };
    pick_pod(kube, pods, selector, running, "running").await
}

async fn pick_pod(
    kube: &Kube,
    pods: &Api<Pod>,
    selector: &str,
    fits: impl Fn(&Pod) -> bool,
    what: &str,
) -> Result<String> {
    let list = kube
        .call(
            &format!("list pods {selector}"),
            pods.list(&ListParams::default().labels(selector)),
        )
        .await?;
    list.items
        .iter()
        .find(|p| fits(p))
        .and_then(|p| p.metadata.name.clone())
        .ok_or_else(|| Error::Unavailable(format!("no {what} pod for {selector}")))
}

/// Whether a pod of the namespace is terminating (its quota still counted);
/// `false` when the pods cannot be listed.
pub(crate) async fn terminating(kube: &Kube, ns: &str) -> bool {
    let pods: Api<Pod> = Api::namespaced(kube.client.clone(), ns);
    match kube
        .call(
            &format!("list pods {ns}"),
            pods.list(&ListParams::default()),
        )
        .await
    {
        Ok(list) => list
            .items
            .iter()
            .any(|p| p.metadata.deletion_timestamp.is_some()),
        Err(error) => {
            tracing::warn!(namespace = ns, error = %crate::error::Chain(&error), "cannot list the project's pods");
            false
        }
    }
}

/// One line saying why the pods matching `selector` are not ready: each
/// pod's waiting or terminated reasons, then the namespace's last warnings
/// (image pulls, scheduling, volume binding, quota).
pub(crate) async fn why_not_ready(kube: &Kube, ns: &str, selector: &str) -> String {
    let mut parts = Vec::new();
    let pods: Api<Pod> = Api::namespaced(kube.client.clone(), ns);
    match kube
        .call(
            "list pods",
            pods.list(&ListParams::default().labels(selector)),
        )
        .await
    {
        Ok(list) if list.items.is_empty() => parts.push("no pod was created".to_owned()),
        Ok(list) => {
            for pod in &list.items {
                let name = pod.metadata.name.as_deref().unwrap_or("?");
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .unwrap_or("Unknown");
                let mut line = format!("pod {name} is {phase}");
                let statuses = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref());
                for cs in statuses.into_iter().flatten() {
                    let state = cs.state.as_ref();
                    if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
                        line.push_str(&format!(
                            ", {} waiting: {} {}",
                            cs.name,
                            w.reason.as_deref().unwrap_or(""),
                            w.message.as_deref().unwrap_or("")
                        ));
                    }
                    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
                        line.push_str(&format!(
                            ", {} exited {}: {}",
                            cs.name,
                            t.exit_code,
                            t.reason.as_deref().unwrap_or("")
                        ));
                    }
                }
                parts.push(line.trim_end().to_owned());
            }
        }
        Err(error) => parts.push(format!("pods unreadable: {error}")),
    }
    let events: Api<Event> = Api::namespaced(kube.client.clone(), ns);
    match kube
        .call(
            "list events",
            events.list(&ListParams::default().fields("type=Warning")),
        )
        .await
    {
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(|e| e.last_timestamp.clone().map(|t| t.0));
            for e in items.iter().rev().take(5) {
                let object = e.involved_object.name.as_deref().unwrap_or("?");
                parts.push(format!(
                    "event {} on {}: {}",
                    e.reason.as_deref().unwrap_or("?"),
                    object,
                    e.message.as_deref().unwrap_or("").trim()
                ));
            }
        }
        Err(error) => parts.push(format!("events unreadable: {error}")),
    }
    parts.join("; ")
}
