//! Gateway API ingress: `Gateway` listeners served on the node's ingress listeners (as Istio
//! `networking.istio.io` Gateways are), and HTTPRoutes / GRPCRoutes attached to them.
//!
//! As Istio's conversion does, the routes attached to one Gateway port are grouped per host name
//! (each route's hostnames intersected with its listener's) into a virtual host: a request on
//! that port is served by the most specific host that matches its `Host` (exact, then the
//! longest `*.` suffix, then `*`), and inside it by the rules of every route attached there,
//! ordered as for mesh routes.
use std::collections::BTreeMap;

use super::{
    build::Builder,
    gateway_api::{ParentReport, ParentTarget},
    gateway_tls, *,
};
use crate::config::{
    self,
    gateway_api::{self as gw, FromNamespaces, HttpRouteSpec, KubeGatewaySpec, Listener, GROUP},
    Sourced,
};

/// One Gateway API Gateway as the compiler sees it: whether it is served, and its listeners.
pub(super) struct ServedGateway {
    pub namespace: String,
    pub name: String,
    /// Err: why no listener of it is served (its class is another controller's).
    pub served: Result<(), String>,
    pub listeners: Vec<Listener>,
    /// Per listener: why it is not served (its protocol, its certificate...), if it is not.
    pub refused: Vec<Option<String>>,
}

/// Where a route attaches: (Gateway namespace, Gateway name, port, virtual host name).
pub(super) type VhostKey = (String, String, u16, String);

impl Builder<'_> {
    /// Decides which Gateways are served (their class is ours) and adds one ingress listener per
    /// distinct port of their HTTP and HTTPS listeners to `table.gateways` (an HTTPS port's
    /// certificates to `table.gateway_tls`).
    pub(super) fn kube_gateways(&mut self, config: &config::Config, table: &mut RouteTable) -> Vec<ServedGateway> {
        let mut out = Vec::new();
        for g in &config.kube_gateways {
            let served = class_served(&g.spec, config);
            let mut refused: Vec<Option<String>> = vec![None; g.spec.listeners.len()];
            let key = format!("{}/{}", g.namespace, g.name);
            match &served {
                Err(why) => self.warnings.push(format!("Gateway {key} (gateway.networking.k8s.io): {why}; not served")),
                Ok(()) => {
                    let mut ports = gateway_tls::Ports::new();
                    for (i, l) in g.spec.listeners.iter().enumerate() {
                        let Ok(port) = u16::try_from(l.port) else { continue }; // validated 1-65535
                        let host = l.hostname.clone().filter(|h| !h.is_empty());
                        let added = match l.protocol.as_str() {
                            "HTTP" => {
                                gateway_tls::add_listener(&mut ports, port, [host.unwrap_or_else(|| "*".into())], None)
                            }
                            "HTTPS" => self.https_listener(config, g, i, l).and_then(|key| {
                                let sni = vec![host.clone()];
                                gateway_tls::add_listener(
                                    &mut ports,
                                    port,
                                    [host.unwrap_or_else(|| "*".into())],
                                    Some((sni, key)),
                                )
                            }),
                            "TLS" => Err("TLS listeners (TLSRoute, Passthrough) are not implemented".into()),
                            p => Err(format!("{p}Route is not implemented")),
                        };
                        if let Err(why) = added {
                            let path = if l.protocol == "HTTPS" {
                                format!("spec.listeners[{i}].tls")
                            } else {
                                format!("spec.listeners[{i}]")
                            };
                            self.warnings.push(
                                g.at.error(
                                    path,
                                    format!("listener {:?} ({} port {port}) not served: {why}", l.name, l.protocol),
                                )
                                .to_string(),
                            );
                            refused[i] = Some(why);
                        }
                    }
                    for (port, listeners) in ports {
                        if let Err(why) = gateway_tls::serve_port(table, (&g.namespace, &g.name), port, listeners) {
                            self.warnings
                                .push(format!("Gateway {}/{} port {port} not served: {why}", g.namespace, g.name));
                        }
                    }
                }
            }
            out.push(ServedGateway {
                namespace: g.namespace.clone(),
                name: g.name.clone(),
                served,
                listeners: g.spec.listeners.clone(),
                refused,
            });
        }
        out
    }

    /// The virtual hosts a route attaches to through its Gateway parentRefs, per the spec:
    /// `sectionName` / `port` pick listeners, which must be HTTP, allow the route's kind and
    /// namespace, and share a host name with the route. A parentRef that attaches nowhere is warned.
    pub(super) fn gateway_parents(
        &mut self,
        route: &Sourced<HttpRouteSpec>,
        reports: &mut Vec<ParentReport>,
    ) -> Vec<VhostKey> {
        let mut out: Vec<VhostKey> = Vec::new();
        for (i, p) in route.spec.parent_refs.iter().enumerate() {
            if p.is_service() {
                continue;
            }
            if p.group.as_deref().unwrap_or(GROUP) != GROUP || p.kind.as_deref().unwrap_or("Gateway") != "Gateway" {
                // Warned by config::gateway_api::validate.
                reports.push(foreign_parent(i, p));
                continue;
            }
            let ns = p.namespace.as_deref().unwrap_or(&route.namespace);
            let mut report = ParentReport {
                index: i,
                target: ParentTarget::Gateway {
                    namespace: ns.to_owned(),
                    name: p.name.clone(),
                    section_name: p.section_name.clone(),
                    port: p.port,
                },
                attached: false,
                vhosts: Vec::new(),
                refused: Vec::new(),
            };
            let warn = |b: &mut Self, report: &mut ParentReport, msg: String| {
                b.warnings.push(
                    route
                        .at
                        .error(format!("spec.parentRefs[{i}]"), format!("{msg}; the route is not attached to it"))
                        .to_string(),
                );
                report.refused.push(msg);
            };
            let Some(g) = self.served_gateways.iter().find(|g| g.namespace == ns && g.name == p.name) else {
                warn(self, &mut report, format!("Gateway {ns}/{} is not defined", config::cut(&p.name, 60)));
                reports.push(report);
                continue;
            };
            if let Err(why) = &g.served {
                let why = why.clone();
                warn(self, &mut report, format!("Gateway {ns}/{} is not served ({why})", g.name));
                reports.push(report);
                continue;
            }
            let (attached, candidates, reasons) = self.attach_to_listeners(route, p, g, &mut report, &mut out);
            if candidates == 0 {
                let what = no_listener(p.section_name.as_deref(), p.port);
                warn(self, &mut report, format!("Gateway {ns}/{} has {what} (NoMatchingParent)", g.name));
            } else if !attached {
                let why = reasons.join("; ");
                warn(self, &mut report, why);
                report.refused = reasons;
            } else {
                // Attached to some listeners: the others' reasons still explain a request there.
                report.refused = reasons;
            }
            report.attached = attached;
            reports.push(report);
        }
        out
    }

    /// Attaches `route` to the listeners of the served Gateway `g` its parentRef `p` selects
    /// (`sectionName`, `port`): each listener's virtual hosts go into `report` and `out`.
    /// Returns whether any attached, how many listeners `p` selected, and why the others refused.
    fn attach_to_listeners(
        &self,
        route: &Sourced<HttpRouteSpec>,
        p: &gw::ParentReference,
        g: &ServedGateway,
        report: &mut ParentReport,
        out: &mut Vec<VhostKey>,
    ) -> (bool, usize, Vec<String>) {
        let kind = route.spec.kind();
        let mut reasons: Vec<String> = Vec::new();
        let mut attached = false;
        let mut candidates = 0;
        for (l, unserved) in g.listeners.iter().zip(&g.refused) {
            if p.section_name.as_deref().is_some_and(|s| s != l.name) || p.port.is_some_and(|port| port != l.port) {
                continue;
            }
            candidates += 1;
            if let Some(why) =
                listener_refusal(l, unserved.as_deref(), kind, &g.namespace, &route.namespace, self.namespace_labels)
            {
                reasons.push(why);
                continue;
            }
            let hosts = intersect(l.hostname.as_deref(), &route.spec.hostnames);
            if hosts.is_empty() {
                reasons.push(format!(
                    "no host name of the route matches listener {:?} ({}) (NoMatchingListenerHostname)",
                    l.name,
                    l.hostname.as_deref().unwrap_or("*")
                ));
                continue;
            }
            let Ok(port) = u16::try_from(l.port) else { continue };
            for h in hosts {
                let key = (g.namespace.clone(), g.name.clone(), port, h);
                if !report.vhosts.contains(&key) {
                    report.vhosts.push(key.clone());
                }
                if !out.contains(&key) {
                    out.push(key);
                }
            }
            attached = true;
        }
        (attached, candidates, reasons)
    }
}

impl Builder<'_> {
    /// The certificate an `HTTPS` listener terminates TLS with: its first `certificateRef`'s
    /// Secret. Err: why the listener is not served.
    fn https_listener(
        &mut self,
        config: &config::Config,
        g: &Sourced<KubeGatewaySpec>,
        i: usize,
        l: &Listener,
    ) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
        let Some(tls) = &l.tls else { return Err("no tls (certificateRefs) configured".into()) };
        if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
            return Err("only tls.mode Terminate is served on HTTPS".into());
        }
        let Some(first) = tls.certificate_refs.first() else {
            return Err("no certificateRefs (tls.options alone name no certificate)".into());
        };
        if tls.certificate_refs.len() > 1 {
            self.warnings.push(
                g.at.error(
                    format!("spec.listeners[{i}].tls.certificateRefs"),
                    format!(
                        "listener {:?}: only the first of {} certificateRefs is used",
                        l.name,
                        tls.certificate_refs.len()
                    ),
                )
                .to_string(),
            );
        }
        gateway_tls::certificate_ref(config, &g.namespace, first)
    }
}

/// A Gateway's class is served when a GatewayClass of that name has one of our controllerNames,
/// or, with no such GatewayClass, when it is `mesh` or `istio`.
fn class_served(spec: &KubeGatewaySpec, config: &config::Config) -> Result<(), String> {
    let class = &spec.gateway_class_name;
    match config.gateway_classes.iter().find(|c| &c.name == class) {
        Some(c) if c.spec.is_ours() => Ok(()),
        Some(c) => Err(format!(
            "its GatewayClass {:?} has controllerName {:?}, not one of {:?}",
            config::cut(class, 60),
            config::cut(&c.spec.controller_name, 80),
            gw::CONTROLLER_NAMES
        )),
        None if gw::CLASS_NAMES.contains(&class.as_str()) => Ok(()),
        None => Err(format!(
            "GatewayClass {:?} is not defined (classes served without one: {:?})",
            config::cut(class, 60),
            gw::CLASS_NAMES
        )),
    }
}

/// Why a listener a parentRef picked does not take the route (kind, protocol, namespace), if it
/// does not.
fn listener_refusal(
    l: &Listener,
    unserved: Option<&str>,
    kind: &str,
    gateway_ns: &str,
    route_ns: &str,
    labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Option<String> {
    if !l.allows_kind(kind) {
        Some(format!("listener {:?} does not allow kind {kind} (NotAllowedByListeners)", l.name))
    } else if let Some(why) = unserved {
        Some(format!("listener {:?} ({}) is not served: {why}", l.name, l.protocol))
    } else if l.protocol != "HTTP" && l.protocol != "HTTPS" {
        Some(format!("listener {:?} is {} (not served)", l.name, l.protocol))
    } else if !namespace_allowed(l, gateway_ns, route_ns, labels) {
        Some(format!(
            "listener {:?} does not allow routes from namespace {:?} (NotAllowedByListeners)",
            l.name, route_ns
        ))
    } else {
        None
    }
}

/// What a parentRef's `sectionName` and `port` asked for, when no listener has it.
fn no_listener(section_name: Option<&str>, port: Option<i64>) -> String {
    match (section_name, port) {
        (Some(s), Some(port)) => format!("no listener {s:?} with port {port}"),
        (Some(s), None) => format!("no listener {s:?}"),
        (None, Some(port)) => format!("no listener with port {port}"),
        (None, None) => "no listener".into(),
    }
}

fn namespace_allowed(
    l: &Listener,
    gateway_ns: &str,
    route_ns: &str,
    labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> bool {
    match l.from_namespaces() {
        FromNamespaces::All => true,
        FromNamespaces::Same => gateway_ns == route_ns,
        // A namespace with no Namespace document read has no labels: only a selector that
        // selects unlabelled namespaces admits it.
        FromNamespaces::Selector(s) => s.matches(labels.get(route_ns).unwrap_or(&BTreeMap::new())),
    }
}

/// `pattern` (`*.example.com`) covers `host` (`a.example.com`, `a.b.example.com`,
/// `*.a.example.com`): the spec's wildcard matches one or more labels.
fn covers(pattern: &str, host: &str) -> bool {
    pattern.strip_prefix('*').is_some_and(|suffix| {
        suffix.starts_with('.')
            && host.len() > suffix.len()
            && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    })
}

/// The host names a route serves on a listener: the route's hostnames intersected with the
/// listener's hostname (the more specific of two that match); none written on either side is
/// every host (`*`). Empty: they do not intersect, and the route does not attach there.
pub(super) fn intersect(listener: Option<&str>, route: &[String]) -> Vec<String> {
    let listener = listener.filter(|h| !h.is_empty());
    let mut out: Vec<String> = Vec::new();
    match (listener, route.is_empty()) {
        (None, true) => out.push("*".into()),
        (None, false) => out.extend(route.iter().cloned()),
        (Some(l), true) => out.push(l.to_owned()),
        (Some(l), false) => {
            for r in route {
                let h = if r == l || covers(l, r) {
                    r.as_str()
                } else if covers(r, l) {
                    l
                } else {
                    continue;
                };
                if !out.iter().any(|o| o == h) {
                    out.push(h.to_owned());
                }
            }
        }
    }
    out
}

/// Whether a virtual host name (`exact`, `*.suffix`, `*`) serves `host` (no port; ASCII case
/// ignored).
pub(super) fn vhost_matches(vhost: &str, host: &str) -> bool {
    vhost == "*" || covers(vhost, host) || vhost.eq_ignore_ascii_case(host)
}

/// How specific a virtual host name is: smaller is more specific.
pub(super) type VhostRank = (u8, std::cmp::Reverse<usize>);

/// Sort key of a virtual host, most specific first: exact names, then wildcards by longer
/// suffix, then `*` (Envoy's virtual host selection, which Istio relies on).
pub(super) fn vhost_rank(vhost: &str) -> VhostRank {
    match vhost {
        "*" => (2, std::cmp::Reverse(0)),
        v if v.starts_with("*.") => (1, std::cmp::Reverse(v.len())),
        v => (0, std::cmp::Reverse(v.len())),
    }
}

/// The report of a parentRef that is neither a Service nor a Gateway: attached nowhere.
fn foreign_parent(index: usize, p: &gw::ParentReference) -> ParentReport {
    ParentReport {
        index,
        target: ParentTarget::Other(format!(
            "{}/{} {}",
            config::cut(p.group.as_deref().unwrap_or(GROUP), 60),
            config::cut(p.kind.as_deref().unwrap_or("Gateway"), 60),
            config::cut(&p.name, 60)
        )),
        attached: false,
        vhosts: Vec::new(),
        refused: vec!["not a Service or a Gateway: nothing here attaches routes to it".into()],
    }
}

#[cfg(test)]
#[path = "gateway_api_ingress_tests.rs"]
mod tests;
