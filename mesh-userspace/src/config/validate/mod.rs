//! Istio's validation of one object on its own, as its admission webhook and CRD rules decide:
//! `pkg/config/validation/validation.go`, `virtualservice.go` and `agent/validation.go` of
//! istio/istio (1.32-dev), and the schema/CEL rules of the v1 CRDs (`crd-all.gen.yaml`). What
//! Istio rejects is an error here, with Istio's reason; what Istio only warns about is a warning;
//! a field Istio accepts that the node proxy does not act on is accepted with a warning saying
//! so. Nothing here looks at other objects or the registry: references between objects are
//! checked when the route table is built, as warnings.
//!
//! Every user value echoed in a message goes through [`cut`], so a 10 MB value cannot make a
//! 10 MB error line.
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use super::{check_istio_duration, cut, parse_duration, Percent, Sourced};

mod destination_rule;
mod gateway;
mod headers;
mod http_route;
mod load_balancer;
#[cfg(test)]
mod tests;
mod virtual_service;

pub use destination_rule::destination_rule;
pub use gateway::gateway;
pub use headers::{header_value, is_jwt_claim, PSEUDO_HEADERS};
pub use virtual_service::virtual_service;

/// Errors and warnings, each with the field path it is about.
#[derive(Debug, Default)]
pub struct Validation {
    /// What Istio rejects: (field path, Istio's message); any one rejects the object.
    pub errors: Vec<(String, String)>,
    /// What Istio only warns about, or a field the node proxy does not act on: (field path,
    /// message).
    pub warnings: Vec<(String, String)>,
}

/// A user value in a message, quoted and cut.
fn q(s: &str) -> String {
    format!("{:?}", cut(s, 60))
}

impl Validation {
    pub(crate) fn error(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push((path.into(), msg.into()));
    }

    pub(crate) fn warn(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.warnings.push((path.into(), msg.into()));
    }

    fn check(&mut self, path: impl Into<String>, r: Result<(), String>) {
        if let Err(e) = r {
            self.error(path, e);
        }
    }

    /// A field Istio accepts and the node proxy parses but does not act on.
    fn not_enforced(&mut self, path: impl Into<String>) {
        self.warn(path, "accepted as Istio does, but not enforced by the node proxy");
    }

    /// A duration field Istio checks with `agent.ValidateDuration` (and the CRD's CEL rule):
    /// at least 1 ms, whole milliseconds, and a value Go's `time.Duration` can hold.
    fn duration(&mut self, path: impl Into<String>, value: Option<&str>) -> Option<Duration> {
        let path = path.into();
        let d = match parse_duration(value?) {
            Ok(d) => d,
            Err(e) => {
                self.error(path, e);
                return None;
            }
        };
        if let Err(e) = check_istio_duration(d) {
            self.error(path, e);
            return None;
        }
        Some(d)
    }
}

// ---------------------------------------------------------------------------------------------
// Names and hosts (pkg/config/labels, agent.ValidateWildcardDomain / ValidateFQDN).

/// `labels.IsDNS1123Label`: `[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?`, at most 63 (Istio's
/// pattern allows upper case).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// `labels.IsWildcardDNS1123Label`: `*`, or a label optionally prefixed by `*` or `*-`.
fn is_wildcard_label(s: &str) -> bool {
    if s.len() > 63 {
        return false;
    }
    if s == "*" {
        return true;
    }
    let rest = s.strip_prefix("*-").or_else(|| s.strip_prefix('*')).unwrap_or(s);
    is_dns1123_label(rest)
}

fn dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {} too long (max 255)", q(name)));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

fn dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts.last().copied().unwrap_or("");
    if tld.parse::<i64>().is_ok() {
        return Err(format!("domain name {} invalid (top level domain {} cannot be all-numeric)", q(domain), q(tld)));
    }
    for (i, label) in parts.iter().enumerate() {
        // A trailing dot (`istio.io.`) is allowed.
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!("domain name {} invalid (label {} invalid)", q(domain), q(label)));
        }
    }
    Ok(())
}

/// `agent.ValidateWildcardDomain`: an FQDN whose first label may be a wildcard.
pub fn wildcard_domain(domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !is_wildcard_label(first) {
        return Err(format!("domain name {} invalid (label {} invalid)", q(domain), q(first)));
    }
    // Go reports the rest as a domain of its own ("*.com" for "foo.*.com"); naming the whole
    // host says more.
    rest.map_or(Ok(()), dns1123_labels).map_err(|e| match e.strip_prefix("domain name ") {
        Some(_) if rest != Some(domain) => format!("{e} in {}", q(domain)),
        _ => e,
    })
}

/// `agent.ValidateFQDN`.
fn fqdn(name: &str) -> Result<(), String> {
    dns1123_preconditions(name)?;
    dns1123_labels(name)
}

fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// `agent.ValidateIPSubnet`: CIDR or a plain address.
fn ip_subnet(s: &str) -> Result<(), String> {
    if s.matches('/').count() == 1 {
        let ok = s.split_once('/').is_some_and(|(ip, bits)| match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32 && !bits.starts_with('+'),
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128 && !bits.starts_with('+'),
            _ => false,
        });
        return if ok { Ok(()) } else { Err(format!("{} is not a valid CIDR block", cut(s, 60))) };
    }
    ip_address(s)
}

fn ip_address(s: &str) -> Result<(), String> {
    if is_ip(s) {
        Ok(())
    } else {
        Err(format!("{} is not a valid IP", cut(s, 60)))
    }
}

/// `agent.ValidatePort`.
fn port(p: i64) -> Result<(), String> {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(format!("port number {p} must be in the range 1..65535"))
    }
}

/// Istio's `host.Name.Matches`: one host (or wildcard) covers the other.
fn hosts_match(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => {
            if a.len() < b.len() {
                sb.ends_with(sa)
            } else {
                sa.ends_with(sb)
            }
        }
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Istio's `host.Name.SubsetOf`.
fn host_subset_of(n: &str, o: &str) -> bool {
    match (n.strip_prefix('*'), o.strip_prefix('*')) {
        (Some(sn), Some(so)) => sn.ends_with(so),
        (Some(_), None) => false,
        (None, Some(so)) => n.ends_with(so),
        (None, None) => n == o,
    }
}

/// Kubernetes qualified name: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `labels.Instance.Validate`: label keys and values as Kubernetes allows them.
fn labels(l: &BTreeMap<String, String>) -> Result<(), String> {
    let mut errs = Vec::new();
    for (k, v) in l {
        let key_ok = match k.split_once('/') {
            Some((prefix, name)) => {
                prefix.len() <= 253
                    && prefix.split('.').all(is_dns1123_label)
                    && is_qualified_name(name)
                    && name.len() <= 63
            }
            None => is_qualified_name(k) && k.len() <= 63,
        };
        if !key_ok {
            errs.push(format!("invalid tag key: {}", q(k)));
        }
        if !(v.is_empty() || is_qualified_name(v)) {
            errs.push(format!("invalid tag value: {}", q(v)));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// `validateExportTo` (not a ServiceEntry).
fn export_to(v: &mut Validation, namespace: &str, list: &[String], dr_with_selector: bool) {
    if list.is_empty() {
        return;
    }
    let mut set: Vec<&str> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let path = format!("spec.exportTo[{i}]");
        let key = if e == "." { namespace } else { e.as_str() };
        if set.contains(&key) {
            if key != e {
                v.error(path, format!("duplicate entries in exportTo: . and current namespace {}", cut(namespace, 60)));
            } else {
                v.error(path, format!("duplicate entries in exportTo for entry {}", cut(e, 60)));
            }
            continue;
        }
        match key {
            "*" => set.push(key),
            "~" => v.error(path, "exportTo ~ (none) is not allowed for Istio configuration objects"),
            _ if e == "." || is_dns1123_label(key) => set.push(key),
            _ => v.error(path, "only .,*, or a valid DNS 1123 label is allowed as exportTo entry"),
        }
    }
    if dr_with_selector && !set.is_empty() {
        if set.contains(&namespace) {
            if set.len() > 1 {
                v.error(
                    "spec.exportTo",
                    "destination rule with workload selector cannot have multiple entries in exportTo",
                );
            }
        } else {
            v.error(
                "spec.exportTo",
                "destination rule with workload selector cannot have exportTo beyond current namespace",
            );
        }
    }
    if set.contains(&"*") && list.len() > 1 {
        v.error("spec.exportTo", "cannot have both public (*) and non-public exportTo values for a resource");
    }
}

/// `checkDryRunAnnotation`: only an AuthorizationPolicy may carry `istio.io/dry-run`.
fn metadata<S>(v: &mut Validation, o: &Sourced<S>) {
    if o.annotations.contains_key("istio.io/dry-run") {
        v.error(
            "metadata.annotations",
            format!(
                "{}/{} has unsupported annotation istio.io/dry-run, please remove the annotation",
                o.namespace, o.name
            ),
        );
    }
}

/// `validateGatewayNames`: `mesh`, `name`, or `namespace/name` (Go returns after the first
/// name without a slash; so do we).
fn gateway_names(v: &mut Validation, base: &str, names: &[String]) {
    for (i, g) in names.iter().enumerate() {
        let path = format!("{base}[{i}]");
        match g.split_once('/') {
            None => {
                if g.contains('.') {
                    v.warn(
                        path.clone(),
                        format!("using legacy gatewayName format {}; prefer <namespace>/<name>", q(g)),
                    );
                }
                v.check(path, fqdn(g));
                return;
            }
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    v.error(path.clone(), "config namespace and gateway name cannot be empty");
                }
                if !is_dns1123_label(ns) {
                    v.error(path.clone(), format!("invalid value for namespace: {}", q(ns)));
                }
                if !is_dns1123_label(name) {
                    v.error(path, format!("invalid value for gateway name: {}", q(name)));
                }
            }
        }
    }
}

fn percentage(p: &Option<Percent>) -> Result<(), String> {
    match p {
        Some(p) if !(0.0..=100.0).contains(&p.value) || (p.value > 0.0 && p.value < 0.0001) => {
            Err(format!("percentage {} is neither 0.0, nor in range [0.0001, 100.0]", p.value))
        }
        _ => Ok(()),
    }
}

/// `validateHTTPStatus`: Istio's range is 200..=600 (its message says 200-599).
fn http_status(s: i64) -> Result<(), String> {
    if (200..=600).contains(&s) {
        Ok(())
    } else {
        Err(format!("HTTP status {s} is not in range 200-599"))
    }
}

/// An int32 field of the CRD given a larger number.
fn int32(v: &mut Validation, path: String, n: Option<i64>) {
    if let Some(n) = n {
        if i32::try_from(n).is_err() {
            v.error(path, format!("{n} is out of range for int32"));
        }
    }
}

/// The CRD enums: the API server answers `Unsupported value`.
fn enum_value(v: &mut Validation, path: String, value: Option<&str>, allowed: &[&str]) {
    if let Some(x) = value {
        if !allowed.contains(&x) {
            let list = allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
            v.error(path, format!("Unsupported value: {}: supported values: {list}", q(x)));
        }
    }
}
