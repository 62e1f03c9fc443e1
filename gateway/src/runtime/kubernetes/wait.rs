//! Waiting on the API server with watches, not by polling (the one poll: a
//! stopped dev server's pods, listed until gone, in `stop_container`): one object is
//! watched by name (kube-rs's watcher: a list then a watch from its
//! resourceVersion, listed again when the watch expires) until a check on it
//! gives an answer or a deadline passes. What the runtime waits for: a
//! Deployment's pod to be ready (or refused by the project's quota), and a
//! namespace to be gone (or stuck terminating).

use std::pin::pin;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;

use super::pods::map_error;
use crate::error::{Error, Result};

/// Watches `name` until `check` gives `Some`, for at most `limit`;
/// `Ok(None)` when the time is up. A watch the API server refuses for good
/// (403, 404 of the resource type, 400) is an error at once; one that breaks
/// (410 Gone, a dropped connection, 5xx) is made again after `pause`.
pub(super) async fn watch_until<K, T>(
    api: &Api<K>,
    name: &str,
    limit: Duration,
    pause: Duration,
    mut check: impl FnMut(Option<&K>) -> Option<T>,
) -> Result<Option<T>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_lowercase();
    let what = format!("watch {kind} {name}");
    let deadline = tokio::time::Instant::now() + limit;
    let mut stream = pin!(watcher::watch_object(api.clone(), name));
    loop {
        let item = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) | Ok(None) => return Ok(None),
            Ok(Some(item)) => item,
        };
        match item {
            Ok(obj) => {
                if let Some(answer) = check(obj.as_ref()) {
                    return Ok(Some(answer));
                }
            }
            Err(e) => {
                if let Some(error) = lasting(&what, e) {
                    return Err(error);
                }
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
            }
        }
    }
}

/// The error of a watch that will not work by trying again; `None` (after
/// logging it) for one that may.
fn lasting(what: &str, e: watcher::Error) -> Option<Error> {
    let api_error = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => kube::Error::Api(status),
        watcher::Error::NoResourceVersion => {
            return Some(Error::Internal(format!(
                "{what}: the kubernetes api gave no resourceVersion"
            )));
        }
    };
    match &api_error {
        kube::Error::Api(s) if matches!(s.code, 400 | 401 | 403 | 404 | 422) => {
            Some(map_error(what, api_error))
        }
        _ => {
            tracing::debug!(what, error = %api_error, "watch broke; watching again");
            None
        }
    }
}

/// What became of a Deployment being waited for.
pub(super) enum Rollout {
    Ready,
    /// Its ReplicaSet cannot make the pod because the project namespace's
    /// ResourceQuota is used up (the API server's message).
    OverQuota(String),
}

/// A Deployment whose current spec has a ready, updated pod.
pub(super) fn deployment_ready(d: &Deployment) -> bool {
    let Some(status) = &d.status else {
        return false;
    };
    let generation = d.metadata.generation.unwrap_or(0);
    status.observed_generation.unwrap_or(0) >= generation
        && status.updated_replicas.unwrap_or(0) >= 1
        && status.ready_replicas.unwrap_or(0) >= 1
        && status.replicas.unwrap_or(0) == status.updated_replicas.unwrap_or(0)
}

/// Ready, refused by the quota, or neither yet. The deployment controller
/// copies its ReplicaSet's `ReplicaFailure` condition (reason
/// `FailedCreate`, the admission's message) to the Deployment.
pub(super) fn rollout(d: &Deployment) -> Option<Rollout> {
    if deployment_ready(d) {
        return Some(Rollout::Ready);
    }
    let conditions = d.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .find(|c| {
            c.type_ == "ReplicaFailure"
                && c.status == "True"
                && c.message
                    .as_deref()
                    .is_some_and(|m| m.contains("exceeded quota"))
        })
        .and_then(|c| c.message.clone())
        .map(Rollout::OverQuota)
}

/// Why a namespace is still terminating, as the namespace controller says in
/// its conditions (finalizers or content remaining, a failed deletion).
pub(super) fn why_terminating(n: &Namespace) -> String {
    let conditions = n.status.as_ref().and_then(|s| s.conditions.as_ref());
    let reasons: Vec<String> = conditions
        .into_iter()
        .flatten()
        .filter(|c| c.status == "True")
        .map(|c| {
            format!(
                "{}: {}",
                c.type_,
                c.message.as_deref().unwrap_or_default().trim()
            )
        })
        .collect();
    if reasons.is_empty() {
        "the namespace controller reports no cause".to_owned()
    } else {
        reasons.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};

    #[test]
    fn readiness_needs_an_updated_ready_pod() {
        let mut d = Deployment::default();
        assert!(!deployment_ready(&d));
        d.metadata.generation = Some(2);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(1),
            updated_replicas: Some(1),
            ready_replicas: Some(1),
            ..Default::default()
        });
        assert!(!deployment_ready(&d), "status of an older spec");
        d.status.as_mut().unwrap().observed_generation = Some(2);
        assert!(deployment_ready(&d));
        d.status.as_mut().unwrap().replicas = Some(2);
        assert!(!deployment_ready(&d), "old pod still there");
    }

    #[test]
    fn a_quota_refusal_is_told_apart() {
        let mut d = Deployment::default();
        assert!(rollout(&d).is_none());
        let condition = |message: &str| DeploymentCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(message.into()),
            ..Default::default()
        };
        d.status = Some(DeploymentStatus {
            conditions: Some(vec![condition("pods \"x\" is forbidden: no node")]),
            ..Default::default()
        });
        assert!(rollout(&d).is_none(), "another failure is waited out");
        d.status = Some(DeploymentStatus {
            conditions: Some(vec![condition(
                "pods \"x\" is forbidden: exceeded quota: project-quota, requested: pods=1",
            )]),
            ..Default::default()
        });
        assert!(matches!(rollout(&d), Some(Rollout::OverQuota(m)) if m.contains("pods=1")));
    }
}
