//! Every manifest under `deploy/` is checked against the Kubernetes API types (k8s-openapi, the
//! types generated from the Kubernetes OpenAPI schema): each document must deserialize as its
//! kind, and must carry no field the schema does not know (a typo such as `readinessprobe` is
//! silently dropped by the API server on a lenient apply, so it is caught here). Istio routing
//! documents go through the mesh's own strict parser. The kustomization must name existing files.
use std::path::{Path, PathBuf};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use serde::{de::DeserializeOwned, Deserialize as _, Serialize};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("deploy/ readable").flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// Fields of `original` that are not in `typed` (the typed round trip), as JSON paths.
fn unknown_fields(original: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                let p = format!("{path}.{k}");
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    // null / empty values are legitimately dropped by the typed form.
                    None if v.is_null() || v == &Value::Object(Default::default()) || v == &Value::Array(vec![]) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            for (i, (ov, tv)) in o.iter().zip(t).enumerate() {
                unknown_fields(ov, tv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn check_typed<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T =
        serde_path_to_error::deserialize(doc.clone()).map_err(|e| format!("at {}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    unknown_fields(doc, &back, "", &mut unknown);
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!("fields not in the Kubernetes schema: {}", unknown.join(", ")))
    }
}

fn check_document(file: &Path, text: &str, doc: &Value) -> Result<&'static str, String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or("");
    let kind = doc["kind"].as_str().unwrap_or("");
    match (api_version, kind) {
        ("v1", "Namespace") => check_typed::<Namespace>(doc).map(|_| "Namespace"),
        ("v1", "ServiceAccount") => check_typed::<ServiceAccount>(doc).map(|_| "ServiceAccount"),
        ("v1", "ConfigMap") => {
            check_typed::<ConfigMap>(doc)?;
            // The routing ConfigMap's files are what the agent will load: they must parse too.
            for (key, value) in doc["data"].as_object().into_iter().flatten() {
                let body = value.as_str().unwrap_or("");
                mesh::config::Config::parse_str(key, body)
                    .map_err(|e| format!("data[{key}] is not valid routing YAML:\n{e}"))?;
            }
            Ok("ConfigMap")
        }
        ("v1", "Service") => check_typed::<Service>(doc).map(|_| "Service"),
        ("v1", "Pod") => check_typed::<Pod>(doc).map(|_| "Pod"),
        ("apps/v1", "DaemonSet") => check_typed::<DaemonSet>(doc).map(|_| "DaemonSet"),
        ("apps/v1", "Deployment") => check_typed::<Deployment>(doc).map(|_| "Deployment"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => check_typed::<ClusterRole>(doc).map(|_| "ClusterRole"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            check_typed::<ClusterRoleBinding>(doc).map(|_| "ClusterRoleBinding")
        }
        ("rbac.authorization.k8s.io/v1", "Role") => check_typed::<Role>(doc).map(|_| "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => check_typed::<RoleBinding>(doc).map(|_| "RoleBinding"),
        (v, "VirtualService" | "DestinationRule" | "Gateway") if v.starts_with("networking.istio.io/") => {
            // Checked once per file below with positions; nothing more to do per document.
            let _ = (file, text);
            Ok("istio")
        }
        (v, "HTTPRoute" | "GRPCRoute" | "Gateway" | "GatewayClass" | "ReferenceGrant")
            if v.starts_with("gateway.networking.k8s.io/") =>
        {
            // The mesh's own parser checks them (the CRDs' schemas), once per file below.
            Ok("gateway-api")
        }
        ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {
            let dir = file.parent().unwrap_or(Path::new("."));
            for r in doc["resources"].as_array().into_iter().flatten() {
                let r = r.as_str().ok_or("resources entries must be strings")?;
                if !dir.join(r).exists() {
                    return Err(format!("resource {r} does not exist"));
                }
            }
            Ok("Kustomization")
        }
        _ => Err(format!(
            "unexpected kind {kind:?} (apiVersion {api_version:?}): add it to this test with its schema type"
        )),
    }
}

#[test]
fn every_deploy_manifest_matches_the_kubernetes_schema() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    assert!(files.len() >= 8, "expected the deploy/ manifests, found {files:?}");
    let mut errors = Vec::new();
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable manifest");
        let mut has_istio = false;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value: Value = match serde::Deserialize::deserialize(doc) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(format!("{}: document {i}: not YAML: {e}", file.display()));
                    continue;
                }
            };
            if value.is_null() {
                continue;
            }
            match check_document(file, &text, &value) {
                Ok(kind) => {
                    has_istio |= kind == "istio" || kind == "gateway-api";
                    *seen.entry(kind).or_default() += 1;
                }
                Err(e) => errors.push(format!("{}: document {i} ({}): {e}", file.display(), value["metadata"]["name"])),
            }
        }
        if has_istio {
            if let Err(e) = mesh::config::Config::parse_str(&file.display().to_string(), &text) {
                errors.push(format!("{e}"));
            }
        }
    }
    assert!(errors.is_empty(), "invalid manifests:\n{}", errors.join("\n"));
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Kustomization",
        "Service",
        "Deployment",
        "istio",
        "gateway-api",
    ] {
        assert!(seen.contains_key(kind), "no {kind} checked; seen {seen:?}");
    }
}

#[test]
fn the_checker_catches_a_misspelt_field() {
    let doc: Value = serde_yaml::from_str(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n      - name: c\n        image: i\n        readinessprobe: {httpGet: {path: /ready, port: 15020}}\n",
    )
    .unwrap();
    let err = check_document(Path::new("x.yaml"), "", &doc).unwrap_err();
    assert!(err.contains(".spec.template.spec.containers[0].readinessprobe"), "{err}");
    let doc: Value = serde_yaml::from_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: notanumber}]}\n",
    )
    .unwrap();
    assert!(check_document(Path::new("x.yaml"), "", &doc).is_err());
}

/// The DaemonSet rolls hitlessly: a surge pod per node next to the old one (so no hostPort,
/// KEP-1591), never a node without an agent, a grace period above the drain deadline, and the
/// handover socket on a hostPath both pods see.
#[test]
fn daemonset_rolls_with_a_surge_pod_and_hands_over() {
    let text = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).expect("daemonset.yaml");
    let ds: DaemonSet = serde_yaml::from_str(&text).expect("DaemonSet");
    let spec = ds.spec;
    let rolling = spec.update_strategy.and_then(|s| s.rolling_update).expect("rollingUpdate");
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    let pod = spec.template.spec.expect("pod spec");
    let agent = &pod.containers[0];
    let args = agent.args.clone().unwrap_or_default();
    let drain = args
        .iter()
        .find_map(|a| a.strip_prefix("--drain-timeout="))
        .map(|d| mesh::drain::parse_duration(d).expect("drain timeout parses"))
        .expect("--drain-timeout set");
    let grace = pod.termination_grace_period_seconds.expect("terminationGracePeriodSeconds");
    assert!(grace as u64 > drain.as_secs(), "grace {grace}s must exceed the drain deadline {drain:?}");
    let hostports: Vec<_> = pod
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| pod.host_network == Some(true) || p.host_port.is_some())
        .collect();
    assert!(hostports.is_empty(), "a (host) port blocks the surge pod on the same node: {hostports:?}");
    let socket = args.iter().find_map(|a| a.strip_prefix("--handover-socket=")).expect("--handover-socket");
    let mounted = agent.volume_mounts.iter().flatten().find(|m| socket.starts_with(&format!("{}/", m.mount_path)));
    let mount = mounted.expect("the handover socket's directory is mounted");
    let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("volume");
    assert_eq!(volume.host_path.as_ref().map(|h| h.path.as_str()), Some("/run/mesh"), "a hostPath both pods see");
    // The pinned kernel state lives on the host's bpffs, so it outlives the agent's container.
    let pins = args.iter().find_map(|a| a.strip_prefix("--bpf-pin-dir=")).expect("--bpf-pin-dir");
    let mount = agent.volume_mounts.iter().flatten().find(|m| pins.starts_with(&format!("{}/", m.mount_path)));
    let mount = mount.expect("the pin directory's bpffs is mounted");
    let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("volume");
    assert_eq!(volume.host_path.as_ref().map(|h| h.path.as_str()), Some("/sys/fs/bpf"), "the host's bpffs");
}

/// Istio's Prometheus scrape annotations on the agent pods name the admin port the agent listens
/// on (its `--admin` in the DaemonSet, else the flag's default) and the path the admin server
/// serves the metrics at, so an Istio Prometheus install scrapes the agents unchanged.
#[test]
fn daemonset_carries_istios_scrape_annotations_for_the_admin_port() {
    let text = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).expect("daemonset.yaml");
    let ds: DaemonSet = serde_yaml::from_str(&text).expect("DaemonSet");
    let template = ds.spec.template;
    let annotations = template.metadata.and_then(|m| m.annotations).unwrap_or_default();
    let get = |k: &str| annotations.get(k).map(String::as_str);
    assert_eq!(get("prometheus.io/scrape"), Some("true"));
    assert_eq!(get("prometheus.io/path"), Some("/stats/prometheus"));
    let command = <mesh::agent::AgentArgs as clap::Args>::augment_args(clap::Command::new("agent"));
    let default = command
        .get_arguments()
        .find(|a| a.get_id() == "admin")
        .and_then(|a| a.get_default_values().first().and_then(|v| v.to_str()).map(str::to_owned))
        .expect("--admin has a default");
    let args = template.spec.expect("pod spec").containers[0].args.clone().unwrap_or_default();
    let admin = args.iter().find_map(|a| a.strip_prefix("--admin=")).map_or(default.clone(), str::to_owned);
    let admin: std::net::SocketAddr = admin.parse().expect("--admin is an address");
    assert_eq!(
        get("prometheus.io/port"),
        Some(admin.port().to_string().as_str()),
        "--admin {admin} (default {default})"
    );
    let default: std::net::SocketAddr = default.parse().expect("default --admin");
    assert_eq!(default.port(), admin.port(), "the DaemonSet keeps the default admin port Istio's agents use (15020)");
}

/// The ClusterRole lets the agent list and watch every Gateway API kind it watches (a missing
/// grant would be a 403 on the watch, and that kind silently absent).
#[test]
fn cluster_role_grants_the_watched_gateway_api_kinds() {
    let text = std::fs::read_to_string(deploy_dir().join("rbac.yaml")).expect("rbac.yaml");
    let role = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| ClusterRole::deserialize(d).ok())
        .find(|r| r.metadata.name.as_deref() == Some("mesh-agent"))
        .expect("ClusterRole mesh-agent");
    let granted = |resource: &str| {
        role.rules.iter().flatten().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == mesh::discovery::gateway_api::GROUP)
                && r.resources.iter().flatten().any(|x| x == resource)
                && ["get", "list", "watch"].iter().all(|v| r.verbs.iter().any(|x| x == v))
        })
    };
    for kind in mesh::discovery::gateway_api::KINDS {
        // The plural the API server serves each kind under.
        let plural = format!("{}s", kind.to_ascii_lowercase()).replace("classs", "classes");
        assert!(granted(&plural), "{kind} ({plural}) not granted");
    }
}
