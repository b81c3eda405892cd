//! The certificates of TLS ingress Gateway listeners, resolved when the table is compiled from
//! the Secrets of the config (`config::secrets`): Gateway API `certificateRefs` (a ReferenceGrant
//! needed for a Secret in another namespace) and Istio `credentialName` (a Secret in the
//! Gateway's namespace). A listener whose Secret is missing, not allowed or not a usable key pair
//! is warned and not served; every other listener, of that Gateway and of the others, is.
//! A table compiled after a Secret changed holds the new certificate; the proxy looks the port's
//! certificates up per handshake, so rotation needs no listener to be reopened.
use std::{collections::BTreeMap, sync::Arc};

use rustls::sign::CertifiedKey;

use super::{GatewayListener, GatewayTls, RouteTable};
use crate::{
    config::{
        self,
        secrets::{TLS_CERT_KEY, TLS_PRIVATE_KEY, TLS_SECRET_TYPE},
    },
    proxy::tls::{certified_key, ServerCerts},
};

/// The listeners of one Gateway port, as they are collected: plain or TLS (one port cannot be
/// both), the host names they admit and, for TLS, each listener's certificate and SNI name.
pub(super) struct PortListeners {
    pub tls: bool,
    pub hosts: Vec<String>,
    pub certs: Vec<(Option<String>, Arc<CertifiedKey>)>,
}

/// A Gateway's ports, by number.
pub(super) type Ports = BTreeMap<u16, PortListeners>;

/// Adds a listener to its port: Err when the port already has listeners of the other kind
/// (plain and TLS cannot share a socket; Gateway API's ProtocolConflict).
pub(super) fn add_listener(
    ports: &mut Ports,
    port: u16,
    hosts: impl IntoIterator<Item = String>,
    cert: Option<(Vec<Option<String>>, Arc<CertifiedKey>)>,
) -> Result<(), String> {
    let entry = ports.entry(port).or_insert_with(|| PortListeners {
        tls: cert.is_some(),
        hosts: Vec::new(),
        certs: Vec::new(),
    });
    if entry.tls != cert.is_some() {
        let (this, other) = if entry.tls { ("plain HTTP", "TLS") } else { ("TLS", "plain HTTP") };
        return Err(format!(
            "port {port} already has {other} listeners, so this {this} one cannot be served there (ProtocolConflict)"
        ));
    }
    entry.hosts.extend(hosts);
    if let Some((names, key)) = cert {
        entry.certs.extend(names.into_iter().map(|n| (n, key.clone())));
    }
    Ok(())
}

/// Serves one port of a Gateway (Istio's or the Gateway API's): files a TLS port's
/// certificates in `table.gateway_tls`, then the port's listener in `table.gateways`. Err: its
/// SNI table could not be built, and the port is not to be listened on.
pub(super) fn serve_port(
    table: &mut RouteTable,
    (namespace, name): (&str, &str),
    port: u16,
    listeners: PortListeners,
) -> Result<(), String> {
    if listeners.tls {
        let certs = ServerCerts::new(listeners.certs).map_err(|e| e.to_string())?;
        table.gateway_tls.push(GatewayTls { namespace: namespace.to_owned(), name: name.to_owned(), port, certs });
    }
    table.gateways.push(GatewayListener {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        port,
        hosts: listeners.hosts,
    });
    Ok(())
}

/// The key pair of a listener's first `certificateRef` (a Gateway API Gateway in `gateway_ns`).
/// Err: why the listener is not served (with the spec's condition reason).
pub(super) fn certificate_ref(
    config: &config::Config,
    gateway_ns: &str,
    r: &serde_yaml::Value,
) -> Result<Arc<CertifiedKey>, String> {
    let field = |k: &str| r.get(k).and_then(serde_yaml::Value::as_str);
    let (group, kind) = (field("group").unwrap_or(""), field("kind").unwrap_or("Secret"));
    let Some(name) = field("name").filter(|n| !n.is_empty()) else {
        return Err("certificateRefs[0] names no Secret (InvalidCertificateRef)".into());
    };
    if !(group.is_empty() || group == "core") || kind != "Secret" {
        return Err(format!(
            "certificateRefs[0] is {}/{}: only core Secrets are read (InvalidCertificateRef)",
            config::cut(group, 60),
            config::cut(kind, 60)
        ));
    }
    let ns = field("namespace").unwrap_or(gateway_ns);
    if ns != gateway_ns
        && !config.reference_grants.iter().any(|g| g.namespace == ns && g.spec.allows_secret(gateway_ns, name))
    {
        return Err(format!(
            "Secret {ns}/{} is in another namespace and no ReferenceGrant in {ns} allows Gateways of {gateway_ns:?} to use it (RefNotPermitted)",
            config::cut(name, 60)
        ));
    }
    secret_key_pair(config, ns, name).map_err(|e| format!("{e} (InvalidCertificateRef)"))
}

/// The key pair held by the Secret `namespace/name` (`kubernetes.io/tls`: `tls.crt`, `tls.key`).
/// Err: why not, with where the Secret came from.
pub(super) fn secret_key_pair(
    config: &config::Config,
    namespace: &str,
    name: &str,
) -> Result<Arc<CertifiedKey>, String> {
    let shown = format!("Secret {namespace}/{}", config::cut(name, 60));
    let Some(s) = config.secrets.get(&(namespace.to_owned(), name.to_owned())) else {
        return Err(format!("{shown} is not defined"));
    };
    let from = format!("{shown} ({}:{})", s.at.file, s.at.first_line());
    if let Some(p) = &s.problem {
        return Err(format!("{from}: {p}"));
    }
    if s.secret_type != TLS_SECRET_TYPE {
        return Err(format!(
            "{from} has type {:?}; a Gateway certificate is a {TLS_SECRET_TYPE} Secret",
            config::cut(&s.secret_type, 60)
        ));
    }
    let (Some(crt), Some(key)) = (s.data.get(TLS_CERT_KEY), s.data.get(TLS_PRIVATE_KEY)) else {
        return Err(format!("{from} lacks {TLS_CERT_KEY} or {TLS_PRIVATE_KEY}"));
    };
    certified_key(crt, key).map_err(|e| format!("{from}: {e}"))
}

/// The SNI names of an Istio server: its `hosts` without their `namespace/` part; `*` is any
/// name (None).
pub(super) fn istio_sni_names(hosts: &[String]) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = Vec::new();
    for h in hosts {
        let host = h.split_once('/').map_or(h.as_str(), |(_, h)| h);
        let name = (host != "*" && !host.is_empty()).then(|| host.to_ascii_lowercase());
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
#[path = "gateway_tls_tests.rs"]
mod tests;
