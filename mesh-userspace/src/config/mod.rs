//! Istio networking YAML: parsing with positions, and the watched ConfigMap directory.
//!
//! A file may hold many documents (`---`). Each document is parsed on its own so an error can be
//! reported as `file:line:col: field.path: what was expected`; positions of fields are kept (a
//! [`Locator`]) so errors found later, when the route table is compiled, point at the field too.
pub mod gateway_api;
pub mod secrets;
pub mod telemetry;
pub mod types;
pub mod validate;
pub mod watch;

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use serde::de::DeserializeOwned;
use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

mod error;
mod values;
mod yaml;

pub use error::*;
pub use types::*;
pub use values::*;
use yaml::*;

/// The API group of the Istio objects the mesh reads.
pub const API_GROUP: &str = "networking.istio.io";
/// The `apiVersion`s of [`API_GROUP`] accepted; the three serve the same schema.
pub const API_VERSIONS: &[&str] = &["v1alpha3", "v1beta1", "v1"];
/// The kinds this mesh acts on.
pub const KINDS: &[&str] = &["VirtualService", "DestinationRule", "Gateway"];
/// Other kinds of `networking.istio.io`: valid Istio, not acted on here (reported, not errors).
const OTHER_ISTIO_KINDS: &[&str] =
    &["ServiceEntry", "Sidecar", "EnvoyFilter", "WorkloadEntry", "WorkloadGroup", "ProxyConfig"];
/// The largest document accepted: etcd refuses objects over 1.5 MiB, so no API server could
/// have served a bigger one, and a bigger one in a ConfigMap is a mistake or an attack.
pub const MAX_DOCUMENT_BYTES: usize = 1536 * 1024;

/// The Istio routing objects of one load (a directory, files, or the API server's watch), before
/// compiling: what the route table is compiled from.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Every accepted VirtualService.
    pub virtual_services: Vec<Sourced<VirtualServiceSpec>>,
    /// Every accepted DestinationRule.
    pub destination_rules: Vec<Sourced<DestinationRuleSpec>>,
    /// Every accepted Gateway.
    pub gateways: Vec<Sourced<GatewaySpec>>,
    /// Gateway API `HTTPRoute`s (`gateway.networking.k8s.io`), see [`gateway_api`].
    pub http_routes: Vec<Sourced<gateway_api::HttpRouteSpec>>,
    /// Gateway API `ReferenceGrant`s: which cross-namespace backendRefs are allowed.
    pub reference_grants: Vec<Sourced<gateway_api::ReferenceGrantSpec>>,
    /// Gateway API `GRPCRoute`s, held converted to their HTTPRoute form (`spec.grpc` set).
    pub grpc_routes: Vec<Sourced<gateway_api::HttpRouteSpec>>,
    /// Gateway API `Gateway`s (ingress; `ObjectKey` kind [`gateway_api::GATEWAY_KIND`]).
    pub kube_gateways: Vec<Sourced<gateway_api::KubeGatewaySpec>>,
    /// Gateway API `GatewayClass`es (cluster-scoped: held under namespace `default`).
    pub gateway_classes: Vec<Sourced<gateway_api::GatewayClassSpec>>,
    /// Labels of the `v1` `Namespace` documents read (for a Gateway listener's
    /// `allowedRoutes.namespaces.from: Selector`); a namespace with no document has none.
    pub namespace_labels: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// `v1` `Secret` documents by (namespace, name): the certificates of TLS Gateway listeners.
    pub secrets: std::collections::BTreeMap<(String, String), secrets::SecretDoc>,
    /// Istio `Telemetry` objects (`telemetry.istio.io`), see [`telemetry`].
    pub telemetries: Vec<Sourced<telemetry::TelemetrySpec>>,
    /// Documents of other kinds (a Service, a ConfigMap...) found in the files: skipped, reported.
    pub skipped: Vec<String>,
    /// Documents rejected one by one (see [`Config::load_dir_all`]).
    pub rejected: Vec<Rejected>,
    /// What Istio's validation warns about in accepted objects, with `file:line:col`.
    pub warnings: Vec<String>,
    /// The mounted ConfigMap's version these files were read from (see [`Config::dir_version`]).
    pub version: Option<String>,
}

impl Config {
    /// No objects: plain Kubernetes routing.
    pub fn empty() -> Config {
        Config::default()
    }

    /// Every `*.yaml` / `*.yml` file directly in `dir`, in name order. Dot entries are skipped:
    /// a Kubernetes ConfigMap volume shows each key as a symlink into `..data/`, and also has the
    /// `..data` and timestamped directories themselves.
    pub fn load_dir(dir: &Path) -> Result<Config, ConfigErrors> {
        Config::load_dir_all(dir)?.strict()
    }

    /// Like [`Config::load_dir`], but a bad document is recorded in `rejected` and everything
    /// else is kept: what the agent admits object by object. Err only when the directory itself
    /// cannot be read.
    pub fn load_dir_all(dir: &Path) -> Result<Config, ConfigErrors> {
        // Read before listing: if the version changes in between, the next reload is newer still.
        let version = Config::dir_version(dir);
        let files = Config::list_dir(dir)?;
        Ok(Config { version, ..Config::read_files(&files) })
    }

    /// All or nothing: the config if no document was rejected, else every error.
    pub fn strict(self) -> Result<Config, ConfigErrors> {
        if self.rejected.is_empty() {
            Ok(self)
        } else {
            Err(ConfigErrors(self.rejected.into_iter().flat_map(|r| r.errors).collect()))
        }
    }

    /// The objects of `kind`, `namespace`, `name` this config holds (0 or 1).
    pub fn has(&self, key: &ObjectKey) -> bool {
        let same = |n: &str, ns: &str| n == key.name && ns == key.namespace;
        match key.kind {
            "VirtualService" => self.virtual_services.iter().any(|o| same(&o.name, &o.namespace)),
            "DestinationRule" => self.destination_rules.iter().any(|o| same(&o.name, &o.namespace)),
            "HTTPRoute" => self.http_routes.iter().any(|o| same(&o.name, &o.namespace)),
            "ReferenceGrant" => self.reference_grants.iter().any(|o| same(&o.name, &o.namespace)),
            "GRPCRoute" => self.grpc_routes.iter().any(|o| same(&o.name, &o.namespace)),
            "Telemetry" => self.telemetries.iter().any(|o| same(&o.name, &o.namespace)),
            "GatewayClass" => self.gateway_classes.iter().any(|o| same(&o.name, &o.namespace)),
            gateway_api::GATEWAY_KIND => self.kube_gateways.iter().any(|o| same(&o.name, &o.namespace)),
            _ => self.gateways.iter().any(|o| same(&o.name, &o.namespace)),
        }
    }

    /// Removes the object named by `key`, if present.
    pub fn remove(&mut self, key: &ObjectKey) {
        let keep = |n: &str, ns: &str| !(n == key.name && ns == key.namespace);
        match key.kind {
            "VirtualService" => self.virtual_services.retain(|o| keep(&o.name, &o.namespace)),
            "DestinationRule" => self.destination_rules.retain(|o| keep(&o.name, &o.namespace)),
            "HTTPRoute" => self.http_routes.retain(|o| keep(&o.name, &o.namespace)),
            "ReferenceGrant" => self.reference_grants.retain(|o| keep(&o.name, &o.namespace)),
            "GRPCRoute" => self.grpc_routes.retain(|o| keep(&o.name, &o.namespace)),
            "Telemetry" => self.telemetries.retain(|o| keep(&o.name, &o.namespace)),
            "GatewayClass" => self.gateway_classes.retain(|o| keep(&o.name, &o.namespace)),
            gateway_api::GATEWAY_KIND => self.kube_gateways.retain(|o| keep(&o.name, &o.namespace)),
            _ => self.gateways.retain(|o| keep(&o.name, &o.namespace)),
        }
    }

    /// Copies the object named by `key` from `other` into this config (replacing any version here).
    pub fn take_from(&mut self, other: &Config, key: &ObjectKey) -> bool {
        self.remove(key);
        let same = |n: &str, ns: &str| n == key.name && ns == key.namespace;
        match key.kind {
            "VirtualService" => other
                .virtual_services
                .iter()
                .find(|o| same(&o.name, &o.namespace))
                .cloned()
                .map(|o| self.virtual_services.push(o)),
            "DestinationRule" => other
                .destination_rules
                .iter()
                .find(|o| same(&o.name, &o.namespace))
                .cloned()
                .map(|o| self.destination_rules.push(o)),
            "HTTPRoute" => other
                .http_routes
                .iter()
                .find(|o| same(&o.name, &o.namespace))
                .cloned()
                .map(|o| self.http_routes.push(o)),
            "ReferenceGrant" => other
                .reference_grants
                .iter()
                .find(|o| same(&o.name, &o.namespace))
                .cloned()
                .map(|o| self.reference_grants.push(o)),
            "GRPCRoute" => other
                .grpc_routes
                .iter()
                .find(|o| same(&o.name, &o.namespace))
                .cloned()
                .map(|o| self.grpc_routes.push(o)),
            "Telemetry" => other
                .telemetries
                .iter()
                .find(|o| same(&o.name, &o.namespace))
                .cloned()
                .map(|o| self.telemetries.push(o)),
            "GatewayClass" => other
                .gateway_classes
                .iter()
                .find(|o| same(&o.name, &o.namespace))
                .cloned()
                .map(|o| self.gateway_classes.push(o)),
            gateway_api::GATEWAY_KIND => other
                .kube_gateways
                .iter()
                .find(|o| same(&o.name, &o.namespace))
                .cloned()
                .map(|o| self.kube_gateways.push(o)),
            _ => other.gateways.iter().find(|o| same(&o.name, &o.namespace)).cloned().map(|o| self.gateways.push(o)),
        }
        .is_some()
    }

    /// Every object's key, with the file it came from.
    pub fn objects(&self) -> impl Iterator<Item = (ObjectKey, &Arc<str>)> {
        let key = |kind: &'static str, name: &str, ns: &str| ObjectKey {
            kind,
            namespace: ns.to_owned(),
            name: name.to_owned(),
        };
        self.virtual_services
            .iter()
            .map(move |o| (key("VirtualService", &o.name, &o.namespace), &o.at.file))
            .chain(
                self.destination_rules.iter().map(move |o| (key("DestinationRule", &o.name, &o.namespace), &o.at.file)),
            )
            .chain(self.gateways.iter().map(move |o| (key("Gateway", &o.name, &o.namespace), &o.at.file)))
            .chain(self.http_routes.iter().map(move |o| (key("HTTPRoute", &o.name, &o.namespace), &o.at.file)))
            .chain(
                self.reference_grants.iter().map(move |o| (key("ReferenceGrant", &o.name, &o.namespace), &o.at.file)),
            )
            .chain(self.grpc_routes.iter().map(move |o| (key("GRPCRoute", &o.name, &o.namespace), &o.at.file)))
            .chain(self.telemetries.iter().map(move |o| (key("Telemetry", &o.name, &o.namespace), &o.at.file)))
            .chain(self.gateway_classes.iter().map(move |o| (key("GatewayClass", &o.name, &o.namespace), &o.at.file)))
            .chain(
                self.kube_gateways
                    .iter()
                    .map(move |o| (key(gateway_api::GATEWAY_KIND, &o.name, &o.namespace), &o.at.file)),
            )
    }

    /// The `*.yaml`/`*.yml` files directly in `dir`, in name order (dot entries skipped).
    pub fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
        let shown = dir.display().to_string();
        // A mounted ConfigMap: the kubelet writes each version into a new directory and swaps the
        // `..data` link to it atomically; the top-level names are links into `..data` created
        // and removed around that swap. Reading through `..data` sees one whole version, never a
        // mix; a plain file someone wrote beside it (not a link) is read too.
        let is_yaml = |p: &Path| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
        };
        let read = |d: &Path| {
            std::fs::read_dir(d)
                .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| is_yaml(p)))
                .map_err(|e| ConfigErrors::single(&shown, format!("cannot read config directory: {e}")))
        };
        let data = dir.join("..data");
        let mut files: Vec<PathBuf> = Vec::new();
        if data.is_dir() {
            files.extend(read(&data)?.filter(|p| p.is_file()));
            files.extend(read(dir)?.filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_file())));
        } else {
            files.extend(read(dir)?.filter(|p| p.is_file()));
        }
        files.sort();
        Ok(files)
    }

    /// Which version of a mounted ConfigMap `dir` holds: the directory its `..data` link names
    /// (the kubelet's `..2026_11_27_01_02_03.123456789`); None for a plain directory.
    pub fn dir_version(dir: &Path) -> Option<String> {
        std::fs::read_link(dir.join("..data")).ok().map(|t| t.display().to_string())
    }

    /// Reads `paths`, all or nothing: every error of every file, or the config (`mesh validate`).
    pub fn load_files(paths: &[PathBuf]) -> Result<Config, ConfigErrors> {
        Config::read_files(paths).strict()
    }

    /// Reads every file; a file or document that fails is recorded in `rejected`.
    pub fn read_files(paths: &[PathBuf]) -> Config {
        let mut config = Config::default();
        for path in paths {
            // Files read through a ConfigMap's `..data` are named as the user mounted them.
            let shown = path.display().to_string().replace("/..data/", "/");
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let _ = config.add_str(&shown, &text);
                }
                Err(e) => config.rejected.push(Rejected {
                    object: None,
                    file: Arc::from(shown.as_str()),
                    errors: ConfigErrors::single(&shown, format!("cannot read: {e}")).0,
                }),
            }
        }
        config
    }

    /// Parses one file's text, all or nothing; `file` names it in errors.
    pub fn parse_str(file: &str, text: &str) -> Result<Config, ConfigErrors> {
        let mut config = Config::default();
        config.add_str(file, text)?;
        Ok(config)
    }

    /// Adds every document of one file. A document that fails is recorded in `rejected` and
    /// the others are still added; the errors are also returned, for callers that want all or
    /// nothing.
    pub fn add_str(&mut self, file: &str, text: &str) -> Result<(), ConfigErrors> {
        let file: Arc<str> = Arc::from(file);
        let docs = match split_documents(&file, text) {
            Ok(d) => d,
            Err(e) => {
                self.rejected.push(Rejected { object: None, file: file.clone(), errors: vec![e.clone()] });
                return Err(ConfigErrors(vec![e]));
            }
        };
        let mut errors = Vec::new();
        for doc in docs {
            if let Err((object, e)) = self.add_document(&file, doc) {
                errors.extend(e.iter().cloned());
                self.rejected.push(Rejected { object, file: file.clone(), errors: e });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn add_document(&mut self, file: &Arc<str>, doc: Document) -> Result<(), (Option<ObjectKey>, Vec<ConfigError>)> {
        let at = Arc::new(doc.locator);
        if doc.text.len() > MAX_DOCUMENT_BYTES {
            let msg = format!(
                "document of {} bytes is larger than any Kubernetes object can be ({MAX_DOCUMENT_BYTES} bytes)",
                doc.text.len()
            );
            return Err((None, vec![at.error("", msg)]));
        }
        // Only the head (apiVersion, kind, metadata names) first: the document is typed once it
        // is known to be ours, and building a whole `Value` tree per document was a third parse.
        let head: Option<Head> =
            serde_yaml::from_str(&doc.text).map_err(|e| (None, vec![yaml_error(&at, doc.line_offset, e, "")]))?;
        let Some(head) = head else { return Ok(()) };
        let (api_version, kind, name, namespace) = head.fields();
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        if group == gateway_api::GROUP {
            return self.add_gateway_api_document(
                file,
                (&doc.text, doc.line_offset),
                at,
                &api_version,
                &kind,
                name,
                namespace,
            );
        }
        if api_version == "v1" && kind == "Namespace" {
            self.keep_namespace_labels(&name, &doc.text);
        }
        if api_version == "v1" && kind == "Secret" {
            self.keep_secret(&name, &namespace, &doc.text, at);
            return Ok(());
        }
        if group == telemetry::GROUP {
            return self.add_telemetry_document((&doc.text, doc.line_offset), at, &api_version, &kind, name, namespace);
        }
        let ours = KINDS.iter().find(|k| **k == kind).copied();
        // The kind as the user most likely meant it, for a document that names it in the wrong case.
        let miscased = KINDS.iter().chain(OTHER_ISTIO_KINDS).find(|k| k.eq_ignore_ascii_case(&kind) && **k != kind);
        let key = ours.map(|kind| ObjectKey { kind, namespace: namespace.clone(), name: name.clone() });
        let reject = |path: &str, msg: String| Err((key.clone(), vec![at.error(path, msg)]));
        if kind.is_empty() {
            return reject("kind", "missing `kind`: expected VirtualService, DestinationRule or Gateway".into());
        }
        if let Some(k) = miscased {
            return reject(
                "kind",
                format!("unknown kind {:?}: kinds are case-sensitive; did you mean {k}?", cut(&kind, 40)),
            );
        }
        if api_version.is_empty() {
            return reject("apiVersion", format!("missing `apiVersion`: {kind} is {API_GROUP}/v1"));
        }
        if group != API_GROUP {
            return self
                .skip_other_group(file, &api_version, &kind, &name, ours.is_some())
                .or_else(|m| reject("apiVersion", m));
        }
        let version = api_version.split('/').nth(1).unwrap_or("");
        if !API_VERSIONS.contains(&version) {
            return reject(
                "apiVersion",
                format!(
                    "unsupported apiVersion {:?}: expected {API_GROUP}/v1, v1beta1 or v1alpha3",
                    cut(&api_version, 60)
                ),
            );
        }
        if ours.is_none() {
            return self.skip_other_istio_kind(file, &kind, &name).or_else(|m| reject("kind", m));
        }
        if name.is_empty() {
            return reject("metadata.name", "missing metadata.name".into());
        }
        if let Err(e) = check_object_name(&name).and_then(|()| check_object_name(&namespace)) {
            return reject("metadata", e);
        }
        self.admit_istio((&doc.text, doc.line_offset), at, &kind, key)
    }

    /// Kept for listener `allowedRoutes` selectors; otherwise skipped like other kinds.
    fn keep_namespace_labels(&mut self, name: &str, text: &str) {
        #[derive(serde::Deserialize)]
        struct Ns {
            #[serde(default)]
            metadata: NsMeta,
        }
        #[derive(Default, serde::Deserialize)]
        struct NsMeta {
            #[serde(default)]
            labels: std::collections::BTreeMap<String, String>,
        }
        if let Ok(ns) = serde_yaml::from_str::<Ns>(text) {
            self.namespace_labels.insert(name.to_owned(), ns.metadata.labels);
        }
    }

    /// A document of another API group: skipped with a note, or (an Istio kind in a group
    /// that is not Kubernetes') the message rejecting its apiVersion.
    fn skip_other_group(
        &mut self,
        file: &str,
        api_version: &str,
        kind: &str,
        name: &str,
        ours: bool,
    ) -> Result<(), String> {
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        if ours && !group.ends_with("k8s.io") {
            // A misspelt group would otherwise make a routing rule silently not exist.
            return Err(format!("apiVersion {:?} is not Istio's: {kind} is {API_GROUP}/v1", cut(api_version, 60)));
        }
        self.skipped.push(format!(
            "{file}: {} {} {} (not Istio networking; ignored)",
            cut(api_version, 60),
            cut(kind, 40),
            cut(name, 60)
        ));
        Ok(())
    }

    /// An Istio kind this mesh does not act on: skipped with a note; else the message rejecting
    /// the unknown kind.
    fn skip_other_istio_kind(&mut self, file: &str, kind: &str, name: &str) -> Result<(), String> {
        if OTHER_ISTIO_KINDS.contains(&kind) {
            // ServiceEntry, Sidecar, EnvoyFilter...: valid Istio, not something this mesh acts on.
            self.skipped.push(format!("{file}: {kind} {} (not supported; ignored)", cut(name, 60)));
            return Ok(());
        }
        Err(format!("unknown kind {:?} in {API_GROUP}", cut(kind, 40)))
    }

    /// An Istio kind whose header is checked: typed, validated, and upserted when valid.
    fn admit_istio(
        &mut self,
        (text, line_offset): (&str, usize),
        at: Arc<Locator>,
        kind: &str,
        key: Option<ObjectKey>,
    ) -> Result<(), (Option<ObjectKey>, Vec<ConfigError>)> {
        let typed_err = |e| (key.clone(), vec![e]);
        // Istio's own validation of the object alone (its webhook and CRD rules): errors reject
        // the object, warnings are reported with it.
        let checked = |v: validate::Validation, at: &Arc<Locator>, warnings: &mut Vec<String>| {
            warnings.extend(v.warnings.into_iter().map(|(p, m)| at.error(p, m).to_string()));
            if v.errors.is_empty() {
                Ok(())
            } else {
                Err((key.clone(), v.errors.into_iter().map(|(p, m)| at.error(p, m)).collect::<Vec<_>>()))
            }
        };
        match kind {
            "VirtualService" => {
                let r: Resource<VirtualServiceSpec> = typed(text, &at, line_offset).map_err(typed_err)?;
                let o = sourced(r, at);
                checked(validate::virtual_service(&o), &o.at, &mut self.warnings)?;
                upsert(&mut self.virtual_services, o, kind, &mut self.skipped);
            }
            "DestinationRule" => {
                let r: Resource<DestinationRuleSpec> = typed(text, &at, line_offset).map_err(typed_err)?;
                let o = sourced(r, at);
                checked(validate::destination_rule(&o), &o.at, &mut self.warnings)?;
                upsert(&mut self.destination_rules, o, kind, &mut self.skipped);
            }
            _ => {
                let r: Resource<GatewaySpec> = typed(text, &at, line_offset).map_err(typed_err)?;
                let o = sourced(r, at);
                checked(validate::gateway(&o), &o.at, &mut self.warnings)?;
                upsert(&mut self.gateways, o, kind, &mut self.skipped);
            }
        }
        Ok(())
    }
}

/// What identifies a document; everything else in it is skipped unread.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    api_version: Option<serde_yaml::Value>,
    #[serde(default)]
    kind: Option<serde_yaml::Value>,
    #[serde(default)]
    metadata: Option<HeadMeta>,
}

impl Head {
    /// apiVersion, kind, name and namespace (`default` when not given), as strings.
    fn fields(self) -> (String, String, String, String) {
        let text = |v: &Option<serde_yaml::Value>| v.as_ref().and_then(|v| v.as_str()).unwrap_or("").to_owned();
        let api_version = text(&self.api_version);
        let kind = text(&self.kind);
        let meta = self.metadata.unwrap_or_default();
        let name = text(&meta.name);
        let namespace = match text(&meta.namespace) {
            ns if ns.is_empty() => "default".to_owned(),
            ns => ns,
        };
        (api_version, kind, name, namespace)
    }
}

#[derive(Default, serde::Deserialize)]
struct HeadMeta {
    #[serde(default)]
    name: Option<serde_yaml::Value>,
    #[serde(default)]
    namespace: Option<serde_yaml::Value>,
}

/// Kubernetes object and namespace names (RFC 1123 subdomain for names, as the API server checks).
fn check_object_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a valid Kubernetes name (lower case letters, digits, '-' and '.', at most 253 characters)",
            cut(name, 60)
        ))
    }
}

/// Same kind, namespace and name is the same object: the document loaded later replaces the
/// earlier one, as a second `kubectl apply` would (files load in name order).
fn upsert<S>(list: &mut Vec<Sourced<S>>, new: Sourced<S>, kind: &str, notes: &mut Vec<String>) {
    match list.iter_mut().find(|o| o.name == new.name && o.namespace == new.namespace) {
        Some(old) => {
            notes.push(format!(
                "{kind} {} from {} replaces the one from {} (same name, like kubectl apply)",
                new.key(),
                new.at.file,
                old.at.file
            ));
            *old = new;
        }
        None => list.push(new),
    }
}

fn sourced<S>(r: Resource<S>, at: Arc<Locator>) -> Sourced<S> {
    Sourced {
        name: r.metadata.name,
        namespace: r.metadata.namespace.unwrap_or_else(|| "default".into()),
        api_version: r.api_version,
        annotations: r.metadata.annotations,
        spec: r.spec,
        at,
    }
}

#[cfg(test)]
mod tests;
