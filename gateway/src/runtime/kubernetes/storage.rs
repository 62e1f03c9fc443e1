//! The project's volume claim: created when absent, never re-applied (its
//! spec is immutable once bound), expanded when a larger size is configured
//! and its StorageClass allows it, never shrunk.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use super::objects::{self, FIELD_MANAGER};
use super::{KubernetesRuntime, config};
use crate::error::{Error, Result};

impl KubernetesRuntime {
    /// Creates the project's volume claim when it is absent (a create, not
    /// an apply), and otherwise leaves its spec alone: a claim's spec is
    /// immutable once bound (the API server answers 422 to a changed storage
    /// class or access mode), so a changed `--k8s-storage-class` applies to
    /// new projects only. A larger `--k8s-storage-size` is the one change
    /// made to an existing claim, and only when its StorageClass allows
    /// expansion ([`Self::expand_storage`]); a claim never shrinks.
    pub(super) async fn ensure_storage(&self, ns: &str, project: &str) -> Result<()> {
        let api = Api::<PersistentVolumeClaim>::namespaced(self.kube.client.clone(), ns);
        let wanted = objects::storage(&self.settings, ns, project);
        let what = format!("persistentvolumeclaim {ns}/{}", objects::STORAGE);
        let existing = match self
            .kube
            .call(&format!("get {what}"), api.get(objects::STORAGE))
            .await
        {
            Err(Error::NotFound(_)) => {
                let params = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PostParams::default()
                };
                return match self
                    .kube
                    .call(&format!("create {what}"), api.create(&params, &wanted))
                    .await
                {
                    // Another replica made it meanwhile: the same claim.
                    Ok(_) | Err(Error::Conflict(_)) => Ok(()),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
            Ok(existing) => existing,
        };
        let class =
            |c: &PersistentVolumeClaim| c.spec.as_ref().and_then(|s| s.storage_class_name.clone());
        if self.settings.storage_class.is_some() && class(&existing) != class(&wanted) {
            tracing::info!(
                project,
                existing = ?class(&existing),
                configured = ?class(&wanted),
                "keeping the project volume's storage class (immutable)"
            );
        }
        let have = existing
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_default();
        let want = &self.settings.storage_size.0;
        match (config::quantity_bytes(&have), config::quantity_bytes(want)) {
            (Some(h), Some(w)) if w > h => {
                self.expand_storage(&api, &existing, project, &have).await;
            }
            (Some(h), Some(w)) if w < h => tracing::info!(
                project,
                existing = %have,
                configured = %want,
                "keeping the project volume's size: a claim never shrinks"
            ),
            (Some(_), Some(_)) => {}
            _ => tracing::warn!(
                project,
                existing = %have,
                configured = %want,
                "cannot compare the project volume's size with the configured one; leaving it"
            ),
        }
        Ok(())
    }

    /// Asks for the configured, larger size on an existing claim: a merge
    /// patch of `spec.resources.requests.storage` alone, when the claim's
    /// StorageClass has `allowVolumeExpansion`. Anything in the way (no
    /// class, a class that cannot expand, the quota, an API error) is
    /// logged and the project opens on its current volume.
    async fn expand_storage(
        &self,
        api: &Api<PersistentVolumeClaim>,
        existing: &PersistentVolumeClaim,
        project: &str,
        have: &str,
    ) {
        let want = &self.settings.storage_size.0;
        let Some(class) = existing
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone())
        else {
            tracing::warn!(project, existing = %have, configured = %want,
                "the project volume has no storage class; not expanding it");
            return;
        };
        let classes: Api<StorageClass> = Api::all(self.kube.client.clone());
        let expandable = match self
            .kube
            .call(&format!("get storageclass {class}"), classes.get(&class))
            .await
        {
            Ok(sc) => sc.allow_volume_expansion == Some(true),
            Err(error) => {
                tracing::warn!(project, %class, error = %crate::error::Chain(&error),
                    "cannot read the project volume's storage class; not expanding it");
                return;
            }
        };
        if !expandable {
            tracing::warn!(project, %class, existing = %have, configured = %want,
                "the project volume's storage class does not allow expansion; keeping its size");
            return;
        }
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": want}}}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match self
            .kube
            .call(
                &format!("expand persistentvolumeclaim {}", objects::STORAGE),
                api.patch(objects::STORAGE, &params, &Patch::Merge(&patch)),
            )
            .await
        {
            Ok(_) => tracing::info!(project, %class, from = %have, to = %want,
                "expanding the project volume"),
            Err(error) => tracing::warn!(project, %class, from = %have, to = %want,
                error = %crate::error::Chain(&error),
                "cannot expand the project volume; it keeps its size"),
        }
    }
}
