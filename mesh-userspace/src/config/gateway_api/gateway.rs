//! Gateway API Gateway and GatewayClass: their types, listener helpers and CRD rules.
use super::http_route::hostname_ok;
use super::{cut, Validation, CONTROLLER_NAMES, GROUP};
use serde::Deserialize;

/// `GatewayClass` (cluster-scoped): which controller serves the Gateways of this class.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayClassSpec {
    /// `controllerName`: the controller serving this class's Gateways (`mesh/gateway-controller` or
    /// `istio.io/gateway-controller` is this mesh).
    #[serde(default)]
    pub controller_name: String,
    /// Accepted, not used (no parameters are defined for this mesh).
    #[serde(default)]
    pub parameters_ref: Option<serde_yaml::Value>,
    /// Free-text description of the class.
    #[serde(default)]
    pub description: Option<String>,
}

impl GatewayClassSpec {
    /// Whether this mesh is the class's controller.
    pub fn is_ours(&self) -> bool {
        CONTROLLER_NAMES.contains(&self.controller_name.as_str())
    }
}

/// The GatewayClass CRD's rules: `controllerName` required, a domain-prefixed path of at most
/// 253 characters.
pub fn validate_gateway_class(spec: &GatewayClassSpec) -> Validation {
    let mut v = Validation::default();
    let c = &spec.controller_name;
    let ok = c.len() <= 253
        && c.split_once('/').is_some_and(|(domain, path)| {
            hostname_ok(domain, false)
                && !path.is_empty()
                && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:".contains(&b))
        });
    if c.is_empty() {
        v.errors.push(("spec.controllerName".into(), "Required value".into()));
    } else if !ok {
        v.errors.push((
            "spec.controllerName".into(),
            format!("{:?} is not a domain-prefixed path (e.g. example.com/controller)", cut(c, 60)),
        ));
    }
    if spec.parameters_ref.is_some() {
        v.warnings.push(("spec.parametersRef".into(), "not used by this mesh".into()));
    }
    v
}

/// A Gateway API `Gateway`: listeners (port, protocol, hostname) that routes attach to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeGatewaySpec {
    /// `gatewayClassName`: the GatewayClass this Gateway belongs to; this mesh serves `mesh` and
    /// `istio`, or a class naming its controller.
    #[serde(default)]
    pub gateway_class_name: String,
    /// Where the Gateway accepts traffic: one entry per port, protocol and hostname.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Accepted, not used: the node listens on `--ingress-bind`, whatever address is asked for.
    #[serde(default)]
    pub addresses: Vec<serde_yaml::Value>,
    /// Accepted, not used (labels and annotations for generated infrastructure; none is generated).
    #[serde(default)]
    pub infrastructure: Option<serde_yaml::Value>,
    /// Gateway-wide TLS (client certificate towards backends, frontend client validation):
    /// accepted, not used. Listener TLS (`listeners[].tls`) is implemented.
    #[serde(default)]
    pub tls: Option<serde_yaml::Value>,
    /// Accepted, not used (ListenerSets are not implemented).
    #[serde(default)]
    pub allowed_listeners: Option<serde_yaml::Value>,
    /// Accepted, not used (experimental channel).
    #[serde(default, rename = "backendTLS")]
    pub backend_tls: Option<serde_yaml::Value>,
}

/// A `listeners` entry: a port, protocol and hostname that routes attach to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Name of the listener, unique in the Gateway; a route's `parentRefs[].sectionName` names it.
    #[serde(default)]
    pub name: String,
    /// None: every host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Port to listen on (1 to 65535).
    #[serde(default)]
    pub port: i64,
    /// `HTTP`, `HTTPS`, `TLS`, `TCP` or `UDP`; only `HTTP` and `HTTPS` listeners are served.
    #[serde(default)]
    pub protocol: String,
    /// How an `HTTPS` listener terminates TLS: `mode: Terminate` with `certificateRefs`
    /// (kubernetes.io/tls Secrets; another namespace's with a ReferenceGrant) is served; the
    /// `TLS` protocol (Passthrough, TLSRoute) is not.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// `allowedRoutes`: which routes (by namespace and kind) may attach; routes from the Gateway's
    /// namespace when left out.
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// A listener's `tls`: how TLS is handled and the certificates to terminate it with.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// Default `Terminate`.
    #[serde(default)]
    pub mode: Option<String>,
    /// `certificateRefs`: Secrets holding the certificate and key (kept unparsed); only the first
    /// is used.
    #[serde(default)]
    pub certificate_refs: Vec<serde_yaml::Value>,
    /// Implementation-specific TLS options (key/value); accepted, not used.
    #[serde(default)]
    pub options: Option<serde_yaml::Value>,
    /// `frontendValidation`: how client certificates are verified (mutual TLS); accepted, not used.
    #[serde(default)]
    pub frontend_validation: Option<serde_yaml::Value>,
}

/// A listener's `allowedRoutes`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedRoutes {
    /// From which namespaces routes may attach; `Same` when left out.
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    /// Empty: the kinds the listener's protocol carries (HTTPRoute, GRPCRoute for HTTP).
    #[serde(default)]
    pub kinds: Vec<RouteGroupKind>,
}

/// `allowedRoutes.namespaces`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteNamespaces {
    /// `All`, `Same` (the default) or `Selector`.
    #[serde(default)]
    pub from: Option<String>,
    /// The namespaces admitted when `from` is `Selector`, by their labels.
    #[serde(default)]
    pub selector: Option<LabelSelector>,
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`, ANDed).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// `matchLabels`: labels that must all be present with these values.
    #[serde(default)]
    pub match_labels: std::collections::BTreeMap<String, String>,
    /// `matchExpressions`: requirements that must all hold.
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` requirement: a label key, an operator and values.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label's key.
    #[serde(default)]
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    #[serde(default)]
    pub operator: String,
    /// Values for `In` / `NotIn`; empty for `Exists` / `DoesNotExist`.
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Kubernetes label selector semantics: every matchLabels pair and every expression holds
    /// (an empty selector selects everything).
    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let has = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => has.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => has.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => has.is_some(),
                    "DoesNotExist" => has.is_none(),
                    _ => false, // rejected at admission
                }
            })
    }
}

/// An `allowedRoutes.kinds` entry: a route kind a listener admits.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteGroupKind {
    /// Default `gateway.networking.k8s.io`.
    #[serde(default)]
    pub group: Option<String>,
    /// The route kind, e.g. `HTTPRoute`, `GRPCRoute`.
    #[serde(default)]
    pub kind: String,
}

/// Which namespaces' routes a listener admits.
#[derive(Clone, Debug)]
pub enum FromNamespaces {
    /// `All`: routes from every namespace.
    All,
    /// `Same`: routes from the Gateway's namespace only (the default).
    Same,
    /// `Selector`: routes from namespaces whose labels the selector matches.
    Selector(LabelSelector),
}

impl Listener {
    /// `allowedRoutes.namespaces` with the CRD's default (`Same`).
    pub fn from_namespaces(&self) -> FromNamespaces {
        let ns = self.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref());
        match ns.and_then(|n| n.from.as_deref()) {
            Some("All") => FromNamespaces::All,
            Some("Selector") => FromNamespaces::Selector(ns.and_then(|n| n.selector.clone()).unwrap_or_default()),
            _ => FromNamespaces::Same,
        }
    }

    /// Whether a route of `kind` (HTTPRoute, GRPCRoute) may attach: one of `allowedRoutes.kinds`,
    /// or, when none are listed, one the protocol carries.
    pub fn allows_kind(&self, kind: &str) -> bool {
        let kinds = self.allowed_routes.as_ref().map(|a| a.kinds.as_slice()).unwrap_or(&[]);
        if kinds.is_empty() {
            return match self.protocol.as_str() {
                "HTTP" | "HTTPS" => kind == "HTTPRoute" || kind == "GRPCRoute",
                "TLS" => kind == "TLSRoute",
                "TCP" => kind == "TCPRoute",
                "UDP" => kind == "UDPRoute",
                _ => false,
            };
        }
        kinds.iter().any(|k| k.group.as_deref().unwrap_or(GROUP) == GROUP && k.kind == kind)
    }
}

const LISTENER_PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "TLS", "TCP", "UDP"];
const MAX_LISTENERS: usize = 64;
const MAX_ROUTE_KINDS: usize = 8;

/// The Gateway CRD's schema and CEL rules that matter for serving: listeners 1-64, names
/// (section names) unique, port 1-65535, protocol, hostname syntax, the protocol/tls/hostname
/// pairings, unique port+protocol+hostname, allowedRoutes (`from`, selector operators, kinds).
pub fn validate_gateway(spec: &KubeGatewaySpec) -> Validation {
    let mut v = Validation::default();
    let mut err = |p: String, m: String| v.errors.push((p, m));
    let mut warns: Vec<(String, String)> = Vec::new();
    if spec.gateway_class_name.is_empty() {
        err("spec.gatewayClassName".into(), "Required value".into());
    } else if spec.gateway_class_name.len() > 253 {
        err("spec.gatewayClassName".into(), "must be at most 253 characters".into());
    }
    if spec.listeners.is_empty() {
        err("spec.listeners".into(), "Required value: at least 1 item".into());
    } else if spec.listeners.len() > MAX_LISTENERS {
        err("spec.listeners".into(), format!("must have at most {MAX_LISTENERS} items"));
    }
    for (i, l) in spec.listeners.iter().enumerate() {
        check_listener(l, &spec.listeners[..i], &format!("spec.listeners[{i}]"), &mut err, &mut warns);
    }
    for (field, set) in [
        ("addresses", !spec.addresses.is_empty()),
        ("infrastructure", spec.infrastructure.is_some()),
        ("tls", spec.tls.is_some()),
        ("allowedListeners", spec.allowed_listeners.is_some()),
        ("backendTLS", spec.backend_tls.is_some()),
    ] {
        if set {
            warns.push((format!("spec.{field}"), "accepted, not used by this mesh".into()));
        }
    }
    v.warnings = warns;
    v
}

/// One listener: name, port, protocol, hostname, TLS and allowed routes; `earlier` are the
/// listeners before it, which its name and port/protocol/hostname must differ from.
fn check_listener(
    l: &Listener,
    earlier: &[Listener],
    at: &str,
    err: &mut dyn FnMut(String, String),
    warns: &mut Vec<(String, String)>,
) {
    if l.name.is_empty() || l.name.len() > 253 || !hostname_ok(&l.name, false) {
        err(format!("{at}.name"), format!("{:?} is not a valid section name (RFC 1123 subdomain)", cut(&l.name, 60)));
    }
    if let Some(j) = earlier.iter().position(|o| o.name == l.name) {
        err(
            format!("{at}.name"),
            format!("Listener name must be unique within the Gateway (spec.listeners[{j}] has it)"),
        );
    }
    if !(1..=65535).contains(&l.port) {
        err(format!("{at}.port"), format!("{} is not a port number (1-65535)", l.port));
    }
    if !LISTENER_PROTOCOLS.contains(&l.protocol.as_str()) {
        err(
            format!("{at}.protocol"),
            format!(
                "Unsupported value {:?}: supported values: \"HTTP\", \"HTTPS\", \"TLS\", \"TCP\", \"UDP\"",
                cut(&l.protocol, 40)
            ),
        );
    }
    if let Some(h) = &l.hostname {
        if !h.is_empty() && !hostname_ok(h, true) {
            err(
                format!("{at}.hostname"),
                format!("{:?} is not a valid host name (RFC 1123, optionally *. first)", cut(h, 60)),
            );
        }
        if !h.is_empty() && matches!(l.protocol.as_str(), "TCP" | "UDP") {
            err(format!("{at}.hostname"), "hostname must not be specified for protocols ['TCP', 'UDP']".into());
        }
    }
    check_listener_tls(l, at, err);
    let same_host = earlier.iter().position(|o| {
        o.port == l.port
            && o.protocol == l.protocol
            && o.hostname.as_deref().unwrap_or("") == l.hostname.as_deref().unwrap_or("")
    });
    if let Some(j) = same_host {
        err(at.to_owned(), format!("Combination of port, protocol and hostname must be unique for each listener (spec.listeners[{j}] has the same)"));
    }
    if let Some(a) = &l.allowed_routes {
        check_allowed_routes(a, at, err, warns);
    }
}

/// A listener's `tls`, as its protocol requires.
fn check_listener_tls(l: &Listener, at: &str, err: &mut dyn FnMut(String, String)) {
    match (&l.tls, l.protocol.as_str()) {
        (Some(_), "HTTP" | "TCP" | "UDP") => {
            err(format!("{at}.tls"), "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']".into())
        }
        (Some(t), "HTTPS") if t.mode.as_deref().is_some_and(|m| m != "Terminate") => {
            err(format!("{at}.tls.mode"), "tls mode must be Terminate for protocol HTTPS".into())
        }
        (None, "TLS") => err(format!("{at}.tls"), "tls mode must be set for protocol TLS".into()),
        (Some(t), "TLS") if t.mode.is_none() => {
            err(format!("{at}.tls.mode"), "tls mode must be set for protocol TLS".into())
        }
        _ => {}
    }
    if let Some(t) = &l.tls {
        if let Some(m) = t.mode.as_deref().filter(|m| !["Terminate", "Passthrough"].contains(m)) {
            err(
                format!("{at}.tls.mode"),
                format!("Unsupported value {:?}: supported values: \"Terminate\", \"Passthrough\"", cut(m, 40)),
            );
        }
        if t.mode.as_deref().unwrap_or("Terminate") == "Terminate"
            && t.certificate_refs.is_empty()
            && t.options.is_none()
        {
            err(format!("{at}.tls"), "certificateRefs or options must be specified when mode is Terminate".into());
        }
    }
}

/// `allowedRoutes`: a valid `from`, well-formed selector expressions and route kinds.
fn check_allowed_routes(
    a: &AllowedRoutes,
    at: &str,
    err: &mut dyn FnMut(String, String),
    warns: &mut Vec<(String, String)>,
) {
    if let Some(ns) = &a.namespaces {
        match ns.from.as_deref() {
            None | Some("All" | "Same") => {}
            Some("Selector") => {}
            Some(f) => err(
                format!("{at}.allowedRoutes.namespaces.from"),
                format!("Unsupported value {:?}: supported values: \"All\", \"Selector\", \"Same\"", cut(f, 40)),
            ),
        }
        for (k, e) in ns.selector.iter().flat_map(|s| s.match_expressions.iter()).enumerate() {
            let ep = format!("{at}.allowedRoutes.namespaces.selector.matchExpressions[{k}]");
            match (e.operator.as_str(), e.values.is_empty()) {
                ("In" | "NotIn", false) | ("Exists" | "DoesNotExist", true) => {}
                ("In" | "NotIn", true) => {
                    err(format!("{ep}.values"), "must be specified when `operator` is 'In' or 'NotIn'".into())
                }
                ("Exists" | "DoesNotExist", false) => err(
                    format!("{ep}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'".into(),
                ),
                (o, _) => err(
                    format!("{ep}.operator"),
                    format!(
                        "Unsupported value {:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\"",
                        cut(o, 40)
                    ),
                ),
            }
        }
        if ns.from.as_deref() != Some("Selector") && ns.selector.is_some() {
            warns.push((format!("{at}.allowedRoutes.namespaces.selector"), "ignored: `from` is not Selector".into()));
        }
    }
    if a.kinds.len() > MAX_ROUTE_KINDS {
        err(format!("{at}.allowedRoutes.kinds"), format!("must have at most {MAX_ROUTE_KINDS} items"));
    }
    for (k, rk) in a.kinds.iter().enumerate() {
        let kp = format!("{at}.allowedRoutes.kinds[{k}]");
        let kind_ok = !rk.kind.is_empty()
            && rk.kind.len() <= 63
            && rk.kind.starts_with(|c: char| c.is_ascii_alphabetic())
            && rk.kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !kind_ok {
            err(format!("{kp}.kind"), format!("{:?} is not a valid kind", cut(&rk.kind, 60)));
        }
        if let Some(g) = &rk.group {
            if !g.is_empty() && !hostname_ok(g, false) {
                err(format!("{kp}.group"), format!("{:?} is not a valid group", cut(g, 60)));
            }
        }
    }
}
