//! VirtualService: hosts, gateways, TLS and TCP routes, destinations and weights.
use super::http_route::http_route;
use super::{
    dns1123_preconditions, export_to, gateway_names, host_subset_of, hosts_match, ip_subnet, is_dns1123_label, is_ip,
    is_jwt_claim, labels, metadata, port, q, wildcard_domain, Validation,
};
use crate::config::{cut, Destination, RouteDestination, Sourced, TcpRoute, TlsRoute, VirtualServiceSpec};

/// `ValidateVirtualService`: hosts, gateways and every route, in Istio's order.
pub fn virtual_service(vs: &Sourced<VirtualServiceSpec>) -> Validation {
    let mut v = Validation::default();
    metadata(&mut v, vs);
    let spec = &vs.spec;
    let has_mesh = spec.gateways.iter().any(|g| g == "mesh");
    // Istio's isGateway: no `mesh` among the gateways (true also when there are none).
    let is_gateway = !has_mesh;
    let applies_to_gateway = !spec.gateways.is_empty() && !has_mesh;
    if spec.hosts.is_empty() {
        delegate(&mut v, spec);
    }
    if !spec.gateways.is_empty() {
        gateway_names(&mut v, "spec.gateways", &spec.gateways);
    }
    if !applies_to_gateway {
        jwt_claims_need_a_gateway(&mut v, spec);
    }
    hosts(&mut v, spec, applies_to_gateway);
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        v.error("spec", "http, tcp or tls must be provided in virtual service");
    }
    for (i, r) in spec.http.iter().enumerate() {
        http_route(&mut v, &format!("spec.http[{i}]"), r, spec.hosts.is_empty());
    }
    for (i, t) in spec.tls.iter().enumerate() {
        tls_route(&mut v, &format!("spec.tls[{i}]"), t, is_gateway, &spec.hosts);
    }
    if !spec.tls.is_empty() {
        v.warn("spec.tls", "tls routes are accepted as Istio does, but not served by the node proxy");
    }
    for (i, t) in spec.tcp.iter().enumerate() {
        tcp_route(&mut v, &format!("spec.tcp[{i}]"), t);
    }
    export_to(&mut v, &vs.namespace, &spec.export_to, false);
    v
}

/// A VirtualService without hosts is a delegate (Istio validates it only through its root).
fn delegate(v: &mut Validation, spec: &VirtualServiceSpec) {
    if !spec.gateways.is_empty() {
        v.error("spec.gateways", "delegate virtual service must have no gateways specified");
    }
    if !spec.tls.is_empty() {
        v.error("spec.tls", "delegate virtual service must have no tls route specified");
    }
    if !spec.tcp.is_empty() {
        v.error("spec.tcp", "delegate virtual service must have no tcp route specified");
    }
    v.warn("spec.hosts", "a VirtualService without hosts is a delegate; delegation is not supported by the node proxy, so it routes nothing");
}

/// Header matches on JWT claims, which only a gateway can evaluate.
fn jwt_claims_need_a_gateway(v: &mut Validation, spec: &VirtualServiceSpec) {
    for (i, r) in spec.http.iter().enumerate() {
        for (j, m) in r.matches.iter().enumerate() {
            for (field, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
                for name in map.keys().filter(|n| is_jwt_claim(n)) {
                    v.error(
                        format!("spec.http[{i}].match[{j}].{field}.{name}"),
                        format!(
                            "JWT claim based routing (key: {}) is only supported for gateway, found no gateways: {:?}",
                            cut(name, 60),
                            spec.gateways
                        ),
                    );
                }
            }
        }
    }
}

/// Each host a valid domain (`*` only on a gateway), no two hosts overlapping.
fn hosts(v: &mut Validation, spec: &VirtualServiceSpec, applies_to_gateway: bool) {
    let applies_to_mesh = !applies_to_gateway;
    let sni = spec.tls.iter().any(|t| t.matches.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_hosts_valid = true;
    for (i, h) in spec.hosts.iter().enumerate() {
        let r = if applies_to_gateway { gateway_bound_domain(sni, h) } else { wildcard_domain(h) };
        match r {
            Err(e) if !is_ip(h) => {
                v.error(format!("spec.hosts[{i}]"), e);
                all_hosts_valid = false;
            }
            Err(_) => {}
            Ok(()) if applies_to_mesh && h == "*" => {
                v.error(
                    format!("spec.hosts[{i}]"),
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_hosts_valid = false;
            }
            Ok(()) => {}
        }
    }
    if all_hosts_valid {
        for i in 0..spec.hosts.len() {
            for j in i + 1..spec.hosts.len() {
                if hosts_match(&spec.hosts[i], &spec.hosts[j]) {
                    v.error(
                        format!("spec.hosts[{j}]"),
                        format!(
                            "duplicate hosts in virtual service: {} & {}",
                            cut(&spec.hosts[i], 60),
                            cut(&spec.hosts[j], 60)
                        ),
                    );
                }
            }
        }
    }
}

/// `validateTLSRoute`: matches with SNI hosts, and destinations.
fn tls_route(v: &mut Validation, base: &str, t: &TlsRoute, is_gateway: bool, hosts: &[String]) {
    if t.matches.is_empty() {
        v.error(base.to_owned(), "TLS route must have at least one match condition");
    }
    for (j, m) in t.matches.iter().enumerate() {
        let mp = format!("{base}.match[{j}]");
        if m.sni_hosts.is_empty() {
            v.error(mp.clone(), "TLS match must have at least one SNI host");
        }
        for (k, h) in m.sni_hosts.iter().enumerate() {
            sni_host(v, format!("{mp}.sniHosts[{k}]"), h, is_gateway, hosts);
        }
        for (k, s) in m.destination_subnets.iter().enumerate() {
            v.check(format!("{mp}.destinationSubnets[{k}]"), ip_subnet(s));
        }
        if let Some(p) = m.port.filter(|p| *p != 0) {
            v.check(format!("{mp}.port"), port(i64::from(p)));
        }
        v.check(format!("{mp}.sourceLabels"), labels(&m.source_labels));
        gateway_names(v, &format!("{mp}.gateways"), &m.gateways);
    }
    if t.route.is_empty() {
        v.error(base.to_owned(), "TLS route is required");
    }
    route_destinations(v, &format!("{base}.route"), &t.route);
}

/// `validateTCPRoute`: matches and destinations.
fn tcp_route(v: &mut Validation, base: &str, t: &TcpRoute) {
    for (j, m) in t.matches.iter().enumerate() {
        let mp = format!("{base}.match[{j}]");
        for (k, s) in m.destination_subnets.iter().enumerate() {
            v.check(format!("{mp}.destinationSubnets[{k}]"), ip_subnet(s));
        }
        if !m.destination_subnets.is_empty() || m.source_subnet.is_some() {
            v.not_enforced(format!("{mp}.destinationSubnets"));
        }
        if let Some(p) = m.port.filter(|p| *p != 0) {
            v.check(format!("{mp}.port"), port(i64::from(p)));
        }
        v.check(format!("{mp}.sourceLabels"), labels(&m.source_labels));
        gateway_names(v, &format!("{mp}.gateways"), &m.gateways);
    }
    if t.route.is_empty() {
        v.error(base.to_owned(), "TCP route is required");
    }
    route_destinations(v, &format!("{base}.route"), &t.route);
}

/// `agent.ValidateWildcardDomainForVirtualServiceBoundToGateway`: also the `outbound_.<port>_._.<host>`
/// SNI names of AUTO_PASSTHROUGH.
fn gateway_bound_domain(sni: bool, domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    if sni && domain.starts_with("outbound_") {
        let parts: Vec<&str> = domain.split('_').collect();
        if parts.len() < 4 {
            return Err(format!(
                "domain name {} invalid, should follow 'outbound_.<PORT>_._.<HOSTNAME>' format",
                q(domain)
            ));
        }
        let port = parts[1].trim_matches('.');
        let host = parts[3].trim_matches('.');
        if parts[0] != "outbound" {
            return Err(format!("domain name {} invalid (label {} invalid)", q(domain), q(parts[0])));
        }
        if !port.bytes().any(|c| c.is_ascii_digit()) {
            return Err(format!("domain name {} invalid (label {} invalid)", q(domain), q(port)));
        }
        if !host.bytes().any(|c| c.is_ascii_alphabetic()) {
            return Err(format!("domain name {} invalid (label {} invalid)", q(domain), q(host)));
        }
        return Ok(());
    }
    wildcard_domain(domain)
}

fn sni_host(v: &mut Validation, path: String, h: &str, is_gateway: bool, hosts: &[String]) {
    let r = if is_gateway { gateway_bound_domain(true, h) } else { wildcard_domain(h) };
    if let Err(e) = r {
        if is_ip(h) {
            v.warn(
                path,
                format!("using an IP address ({}) goes against SNI spec and most clients do not support this", q(h)),
            );
        } else {
            v.error(path, e);
        }
        return;
    }
    if hosts.iter().any(|o| host_subset_of(h, o)) {
        return;
    }
    v.error(
        path,
        format!(
            "SNI host {} is not a compatible subset of any of the virtual service hosts: [{}]",
            q(h),
            cut(&hosts.join(", "), 200)
        ),
    );
}

/// `validateDestination`.
pub(super) fn destination(v: &mut Validation, base: &str, d: &Destination) {
    if d.left_out {
        // Left out entirely (serde fills in an empty one).
        v.error(base.to_owned(), "destination is required");
        return;
    }
    if d.host == "*" {
        v.error(format!("{base}.host"), "invalid destination host *");
    } else {
        v.check(format!("{base}.host"), wildcard_domain(&d.host));
    }
    if let Some(s) = d.subset.as_deref().filter(|s| !s.is_empty()) {
        v.check(format!("{base}.subset"), subset_name(s));
    }
    if let Some(p) = &d.port {
        v.check(format!("{base}.port.number"), port(i64::from(p.number)));
    }
}

pub(super) fn subset_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("subset name cannot be empty".into());
    }
    if !is_dns1123_label(name) {
        return Err(format!("subset name is invalid: {}", cut(name, 60)));
    }
    Ok(())
}

pub(super) fn weight(v: &mut Validation, path: String, w: Option<i64>, total: &mut i64) {
    let w = w.unwrap_or(0);
    if w < 0 {
        v.error(path, format!("weight {w} < 0"));
    } else if i32::try_from(w).is_err() {
        v.error(path, format!("weight {w} is out of range for int32"));
    } else {
        *total = total.saturating_add(w);
    }
}

/// `validateRouteDestinations` (tcp and tls).
fn route_destinations(v: &mut Validation, base: &str, dests: &[RouteDestination]) {
    let mut total = 0i64;
    for (i, d) in dests.iter().enumerate() {
        destination(v, &format!("{base}[{i}].destination"), &d.destination);
        weight(v, format!("{base}[{i}].weight"), d.weight, &mut total);
    }
    if dests.len() > 1 && total == 0 {
        v.error(format!("{base}[0].weight"), "total destination weight = 0");
    }
}
