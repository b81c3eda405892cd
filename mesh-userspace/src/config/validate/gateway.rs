//! Istio Gateway: servers, ports, binds, hosts and server-side TLS.
use super::{enum_value, ip_address, is_dns1123_label, is_ip, metadata, port, q, wildcard_domain, Validation};
use crate::config::{cut, GatewaySpec, Server, ServerTlsSettings, Sourced};

/// Istio's `protocol.Parse`, for a Gateway port: None is `Unsupported`.
fn protocol(p: &str) -> Option<&'static str> {
    Some(match p.to_ascii_lowercase().as_str() {
        "tcp" => "TCP",
        "udp" => "UDP",
        "grpc" => "GRPC",
        "grpc-web" => "GRPC-Web",
        "http" => "HTTP",
        "http_proxy" => "HTTP_PROXY",
        "http2" => "HTTP2",
        "https" => "HTTPS",
        "tls" => "TLS",
        "mongo" => "Mongo",
        "redis" => "Redis",
        "mysql" => "MySQL",
        _ => return None,
    })
}

/// `ValidateGateway`: the name, at least one server, unique port names, and each server's port,
/// hosts, bind and TLS.
pub fn gateway(gw: &Sourced<GatewaySpec>) -> Validation {
    let mut v = Validation::default();
    metadata(&mut v, gw);
    if !is_dns1123_label(&gw.name) {
        v.error("metadata.name", format!("invalid gateway name: {}", q(&gw.name)));
    }
    if gw.spec.servers.is_empty() {
        v.error("spec.servers", "gateway must have at least one server");
    }
    let mut names = std::collections::HashSet::new();
    for (i, s) in gw.spec.servers.iter().enumerate() {
        let sp = format!("spec.servers[{i}]");
        server(&mut v, &sp, s);
        let name = s.port.name.as_deref().unwrap_or("");
        if !names.insert(name) {
            v.error(
                format!("{sp}.port.name"),
                format!("port names in servers must be unique: duplicate name {}", cut(name, 60)),
            );
        }
        let http = protocol(s.port.protocol.as_deref().unwrap_or(""))
            .is_some_and(|p| matches!(p, "HTTP" | "HTTP2" | "HTTP_PROXY" | "GRPC" | "GRPC-Web"));
        if !http && s.tls.as_ref().and_then(|t| t.https_redirect) == Some(true) {
            v.warn(format!("{sp}.tls.httpsRedirect"), "tls.httpsRedirect should only be used with http servers");
        }
    }
    v
}

fn server(v: &mut Validation, base: &str, s: &Server) {
    if s.hosts.is_empty() {
        v.error(format!("{base}.hosts"), "server config must contain at least one host");
    }
    for (i, h) in s.hosts.iter().enumerate() {
        gateway_host(v, format!("{base}.hosts[{i}]"), h);
    }
    // validateServerPort
    let pp = format!("{base}.port");
    let bind = s.bind.as_deref().unwrap_or("");
    let before = v.errors.len();
    let proto = s.port.protocol.as_deref().unwrap_or("");
    let parsed = protocol(proto);
    if parsed.is_none() {
        v.error(
            format!("{pp}.protocol"),
            format!(
                "invalid protocol {}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                q(proto)
            ),
        );
    }
    if s.port.number > 0 || !bind.starts_with("unix://") {
        v.check(format!("{pp}.number"), port(i64::from(s.port.number)));
    }
    if s.port.target_port.is_some_and(|t| t > 0) {
        v.error(format!("{pp}.targetPort"), "targetPort has no impact on Gateways");
    }
    if s.port.name.as_deref().unwrap_or("").is_empty() {
        v.error(format!("{pp}.name"), format!("port name must be set: number:{} protocol:{}", s.port.number, q(proto)));
    }
    let port_ok = v.errors.len() == before;
    // validateServerBind
    if let Some(path) = bind.strip_prefix("unix://") {
        if path.is_empty() {
            v.error(format!("{base}.bind"), "unix address must not be empty");
        } else if !path.starts_with('@') && (!path.starts_with('/') || path.ends_with('/')) {
            v.error(format!("{base}.bind"), format!("{} is not an absolute path to a file", cut(path, 60)));
        }
        if s.port.number != 0 {
            v.error(
                format!("{base}.bind"),
                format!("port number must be 0 for unix domain socket: number:{}", s.port.number),
            );
        }
    } else if !bind.is_empty() {
        v.check(format!("{base}.bind"), ip_address(bind));
    }
    if let Some(t) = &s.tls {
        server_tls(v, &format!("{base}.tls"), t);
    }
    if port_ok {
        let p = parsed.unwrap_or("");
        let is_tls = p == "HTTPS" || p == "TLS";
        let is_http = matches!(p, "HTTP" | "HTTP2" | "HTTP_PROXY" | "GRPC" | "GRPC-Web");
        match &s.tls {
            None if is_tls => v.error(format!("{base}.tls"), "server must have TLS settings for HTTPS/TLS protocols"),
            Some(t) if !is_tls => {
                let passthrough =
                    matches!(t.mode.as_deref().unwrap_or("PASSTHROUGH"), "PASSTHROUGH" | "AUTO_PASSTHROUGH");
                let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
                if is_http {
                    if !passthrough || set(&t.ca_certificates) || set(&t.private_key) || set(&t.server_certificate) {
                        v.error(format!("{base}.tls"), "server cannot have TLS settings for plain text HTTP ports");
                    }
                } else {
                    v.error(format!("{base}.tls"), "server cannot have TLS settings for non HTTPS/TLS ports");
                }
            }
            _ => {}
        }
    }
    if s.bind.is_some() || s.default_endpoint.is_some() {
        v.not_enforced(format!("{base}.bind"));
    }
}

/// `agent.ValidateNamespaceSlashWildcardHostname(host, isGateway=true)`.
fn gateway_host(v: &mut Validation, path: String, h: &str) {
    let name = match h.split_once('/') {
        None => h,
        Some((ns, name)) => {
            if ns.is_empty() || name.is_empty() {
                v.error(path.clone(), "config namespace and dnsName in host entry cannot be empty");
            }
            if ns != "*" && ns != "." && !is_dns1123_label(ns) {
                v.error(path.clone(), format!("invalid namespace value {} in gateway", q(ns)));
            }
            name
        }
    };
    if name != "*" && !name.contains('.') {
        v.error(path.clone(), "short names (non FQDN) are not allowed");
    }
    if let Err(e) = wildcard_domain(name) {
        if !is_ip(name) {
            v.error(path.clone(), e);
        }
    }
    if name.contains('*') && name.len() != 1 && !name.starts_with("*.") {
        v.error(path, format!("partial wildcard {} not allowed", q(name)));
    }
}

/// `validateTLSOptions` (server side, Gateway).
fn server_tls(v: &mut Validation, base: &str, t: &ServerTlsSettings) {
    enum_value(
        v,
        format!("{base}.mode"),
        t.mode.as_deref(),
        &["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"],
    );
    let versions = &["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"];
    enum_value(v, format!("{base}.minProtocolVersion"), t.min_protocol_version.as_deref(), versions);
    enum_value(v, format!("{base}.maxProtocolVersion"), t.max_protocol_version.as_deref(), versions);
    if t.credential_names.len() > 2 {
        v.error(format!("{base}.credentialNames"), "Too many: must have at most 2 items");
    }
    let mode = t.mode.as_deref().unwrap_or("PASSTHROUGH");
    if matches!(t.min_protocol_version.as_deref(), Some("TLSV1_0" | "TLSV1_1")) && t.cipher_suites.is_empty() {
        v.warn(
            base.to_owned(),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers.",
        );
    }
    if mode == "ISTIO_MUTUAL" {
        istio_mutual(v, base, t);
        return;
    }
    if (mode == "PASSTHROUGH" || mode == "AUTO_PASSTHROUGH")
        && (is_set(&t.ca_crl)
            || is_set(&t.server_certificate)
            || is_set(&t.private_key)
            || is_set(&t.ca_certificates)
            || !t.tls_certificates.is_empty()
            || is_set(&t.credential_name)
            || !t.credential_names.is_empty())
    {
        v.warn(base.to_owned(), format!("{mode} mode does not use certificates, they will be ignored"));
    }
    let sources = [
        is_set(&t.server_certificate) && is_set(&t.private_key),
        is_set(&t.credential_name),
        !t.credential_names.is_empty(),
        !t.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|b| **b).count() > 1 {
        v.error(
            base.to_owned(),
            "only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified",
        );
    }
    let terminating = matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL");
    if terminating && (is_set(&t.credential_name) || !t.credential_names.is_empty()) {
        return;
    }
    if terminating {
        server_certificates(v, base, t, mode);
    }
    if is_set(&t.ca_crl) {
        if is_set(&t.credential_name) {
            v.error(
                base.to_owned(),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        if mode == "SIMPLE" {
            v.error(base.to_owned(), "CRL is not supported with SIMPLE TLS");
        }
    }
}

/// Whether an optional string field is set to something.
fn is_set(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

/// ISTIO_MUTUAL takes its certificates from the mesh: none may be given.
fn istio_mutual(v: &mut Validation, base: &str, t: &ServerTlsSettings) {
    for (is, what) in [
        (is_set(&t.server_certificate), "server certificate"),
        (is_set(&t.private_key), "private key"),
        (is_set(&t.ca_certificates), "CA bundle"),
        (!t.tls_certificates.is_empty(), "tlsCertificates"),
        (is_set(&t.credential_name), "credentialName"),
        (!t.credential_names.is_empty(), "credentialNames"),
    ] {
        if is {
            v.error(base.to_owned(), format!("ISTIO_MUTUAL TLS cannot have associated {what}"));
        }
    }
}

/// SIMPLE and MUTUAL without a credential name: a certificate and key for each server
/// certificate, and a client CA bundle for MUTUAL.
fn server_certificates(v: &mut Validation, base: &str, t: &ServerTlsSettings, mode: &str) {
    let prefix = if mode == "SIMPLE" { "SIMPLE TLS" } else { "MUTUAL TLS" };
    if mode != "SIMPLE" && !is_set(&t.ca_certificates) {
        v.error(base.to_owned(), format!("{prefix} requires a client CA bundle"));
    }
    // The CRD says maxItems 2; Istio's webhook (and its tests) only warn.
    if t.tls_certificates.len() > 2 {
        v.warn(format!("{base}.tlsCertificates"), format!("{prefix} can support up to 2 server certificates"));
    }
    let certs: Vec<(bool, bool)> = if t.tls_certificates.is_empty() {
        vec![(is_set(&t.server_certificate), is_set(&t.private_key))]
    } else {
        t.tls_certificates.iter().map(|c| (is_set(&c.server_certificate), is_set(&c.private_key))).collect()
    };
    for (cert, key) in certs {
        if !cert {
            v.error(base.to_owned(), format!("{prefix} requires a server certificate"));
        }
        if !key {
            v.error(base.to_owned(), format!("{prefix} requires a private key"));
        }
    }
}
