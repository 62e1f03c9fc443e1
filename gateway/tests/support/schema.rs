//! Checks a Kubernetes object against the API schema as k8s-openapi knows it:
//! the object must deserialize into the typed struct of its kind without a
//! single field being ignored, and serialize back to the same JSON.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Checks one object (any kind this project writes); the error names the
/// object and every offending field.
pub(crate) fn check(obj: &Value) -> Result<(), String> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or("<no name>");
    let what = format!("{api_version}/{kind} {name}");
    use k8s_openapi::api::{admissionregistration, apps, batch, core, networking, policy, rbac};
    let res = match (api_version, kind) {
        ("v1", "Namespace") => typed::<core::v1::Namespace>(obj),
        ("v1", "ServiceAccount") => typed::<core::v1::ServiceAccount>(obj),
        ("v1", "ConfigMap") => typed::<core::v1::ConfigMap>(obj),
        ("v1", "Secret") => typed::<core::v1::Secret>(obj),
        ("v1", "Service") => typed::<core::v1::Service>(obj),
        ("v1", "PersistentVolumeClaim") => typed::<core::v1::PersistentVolumeClaim>(obj),
        ("v1", "Pod") => typed::<core::v1::Pod>(obj),
        ("v1", "ResourceQuota") => typed::<core::v1::ResourceQuota>(obj),
        ("v1", "LimitRange") => typed::<core::v1::LimitRange>(obj),
        ("apps/v1", "Deployment") => typed::<apps::v1::Deployment>(obj),
        ("batch/v1", "Job") => typed::<batch::v1::Job>(obj),
        ("networking.k8s.io/v1", "Ingress") => typed::<networking::v1::Ingress>(obj),
        ("networking.k8s.io/v1", "NetworkPolicy") => typed::<networking::v1::NetworkPolicy>(obj),
        ("policy/v1", "PodDisruptionBudget") => typed::<policy::v1::PodDisruptionBudget>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => typed::<rbac::v1::ClusterRole>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            typed::<rbac::v1::ClusterRoleBinding>(obj)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
            typed::<admissionregistration::v1::ValidatingAdmissionPolicy>(obj)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
            typed::<admissionregistration::v1::ValidatingAdmissionPolicyBinding>(obj)
        }
        ("v1", "DeleteOptions") | ("meta/v1", "DeleteOptions") => {
            typed::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>(obj)
        }
        _ => Err(format!("unknown apiVersion/kind {api_version}/{kind}")),
    };
    res.map_err(|e| format!("{what}: {e}"))
}

/// Deserializes into `T` recording ignored fields, then compares the
/// re-serialized value with the input (catches fields the type drops
/// silently and values it would rewrite).
fn typed<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<(), String> {
    let mut ignored = Vec::new();
    let parsed: T = serde_ignored::deserialize(obj.clone(), |path| ignored.push(path.to_string()))
        .map_err(|e| format!("does not deserialize: {e}"))?;
    if !ignored.is_empty() {
        return Err(format!("unknown fields: {}", ignored.join(", ")));
    }
    let back = serde_json::to_value(&parsed).map_err(|e| format!("does not serialize: {e}"))?;
    let (a, b) = (normalize(obj), normalize(&back));
    if a != b {
        return Err(format!(
            "changes in a round trip through the typed struct:\n  sent: {a}\n  typed: {b}"
        ));
    }
    Ok(())
}

/// Drops nulls and empty maps the typed structs omit (`emptyDir: {}` stays,
/// since its parent key is kept by the struct too).
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}
