//! Gateways sharing a port of the node. The node has one ingress listener per port, so the
//! servers (Istio) and HTTP listeners (Gateway API) of every Gateway on a port are served
//! together, by `Host` — as Istio merges the plain-text HTTP servers of Gateways on one port into
//! one listener and one route config (`pilot/pkg/model/gateway.go` `mergeGateways`,
//! `pilot/pkg/networking/core/gateway.go` `buildGatewayHTTPRouteConfig`). What cannot be merged
//! is warned here with both objects' names; the same host name of two Gateway API Gateways is
//! merged into one virtual host (`gateway_api.rs` `gateway_vhosts`).
use std::collections::BTreeMap;

use super::{build::Builder, *};

impl Builder<'_> {
    /// Warns, for each port several Gateways share, about a host name that VirtualServices of
    /// two of them both route: one route table answers for the port, the first VirtualService
    /// listed applies to that host and the other's rules are not reached for it. (Istio appends
    /// the second's routes after the first's; here a VirtualService is matched whole.)
    pub(super) fn shared_gateway_ports(&mut self, table: &RouteTable) {
        let mut by_port: BTreeMap<u16, Vec<(&str, &str)>> = BTreeMap::new();
        for g in &table.gateways {
            let gws = by_port.entry(g.port).or_default();
            if !gws.contains(&(g.namespace.as_str(), g.name.as_str())) {
                gws.push((g.namespace.as_str(), g.name.as_str()));
            }
        }
        for (port, gws) in by_port.into_iter().filter(|(_, gws)| gws.len() > 1) {
            let on_port =
                |vs: &CompiledVs| vs.gateways.iter().find(|(ns, n)| gws.contains(&(ns.as_str(), n.as_str()))).cloned();
            let bound: Vec<(&Arc<CompiledVs>, (String, String))> =
                table.gateway_vs.iter().filter_map(|vs| Some((vs, on_port(vs)?))).collect();
            for (i, (first, (fns, fname))) in bound.iter().enumerate() {
                for (other, (ons, oname)) in bound.iter().skip(i + 1) {
                    if (fns, fname) == (ons, oname) {
                        continue; // One Gateway: VirtualService order decides, as without sharing.
                    }
                    let Some(host) = first.hosts.iter().find(|h| other.hosts.iter().any(|o| o.eq_ignore_ascii_case(h)))
                    else {
                        continue;
                    };
                    self.warnings.push(format!(
                        "Gateways {fns}/{fname} and {ons}/{oname} share port {port}: host {host} is routed by \
                         VirtualService {} (through {fns}/{fname}) and {} (through {ons}/{oname}); {} applies",
                        first.key, other.key, first.key
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "gateway_merge_tests.rs"]
mod tests;
