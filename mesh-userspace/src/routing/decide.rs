//! Routing one request or connection on the compiled table: the VirtualService and rule that
//! apply, a destination by weight, and the rule's fault, rewrite, header and mirror policies.
use rand::Rng;

use super::*;

impl RouteTable {
    /// Routes one HTTP request: the VirtualService for its destination (or Gateway), the first rule
    /// that matches, a destination by weight, and the rule's policies; plain Kubernetes routing to all
    /// endpoints when no VirtualService applies. `rng` rolls weights and fault/mirror percentages.
    pub fn route<R: Rng + ?Sized>(&self, req: &RequestInfo<'_>, rng: &mut R) -> Decision {
        let Some(vs) = self.virtual_service(req) else {
            return match req.context {
                Context::Mesh { service, port } => match self.default_cluster(service, port) {
                    Some(c) => Decision::Forward(Box::new(Forward {
                        virtual_service: None,
                        rule: None,
                        cluster: c.clone(),
                        fault: Fault::default(),
                        timeout: None,
                        retries: self.default_retries.clone(),
                        rewrite: None,
                        request_headers: HeaderOps::default(),
                        response_headers: HeaderOps::default(),
                        mirrors: Vec::new(),
                    })),
                    None => Decision::NoRoute { reason: format!("service {} has no port {port}", service.name) },
                },
                Context::Gateway { name, .. } => Decision::NoRoute {
                    reason: format!(
                        "no VirtualService bound to Gateway {name} matches host {:?}",
                        req.authority.unwrap_or("")
                    ),
                },
            };
        };
        let Some((index, rule, matched)) =
            vs.http.iter().enumerate().find_map(|(i, r)| rule_matches(r, req).map(|m| (i, r, m)))
        else {
            return Decision::NoRoute { reason: format!("no http route of VirtualService {} matched", vs.key) };
        };
        self.decide(vs, index, rule, matched, req, rng)
    }

    fn decide<R: Rng + ?Sized>(
        &self,
        vs: &CompiledVs,
        index: usize,
        rule: &HttpRule,
        matched: Option<&MatchRequest>,
        req: &RequestInfo<'_>,
        rng: &mut R,
    ) -> Decision {
        let dests = match &rule.action {
            Action::Redirect(r) => {
                let location = r.location_after(req, matched.and_then(|m| m.uri_prefix()));
                return Decision::Redirect { status: r.code, location };
            }
            // A consumer route's catch-all (routing/gateway_api.rs): answered as no route.
            Action::DirectResponse { status: 404, body: None } => {
                return Decision::NoRoute {
                    reason: format!("no http route of {} matched ({})", vs.key, rule.name.as_deref().unwrap_or("")),
                }
            }
            Action::DirectResponse { status, .. } => {
                return Decision::NoRoute {
                    reason: format!(
                    "VirtualService {} http[{index}] has directResponse {status}, which the node proxy does not serve",
                    vs.key
                ),
                }
            }
            Action::Route(d) => d,
        };
        let Some(dest) = pick_weighted(dests, rng) else {
            return Decision::NoRoute { reason: format!("VirtualService {} http[{index}] has no destination", vs.key) };
        };
        let Some(cluster) = dest.dest.pick(req.port()) else {
            return Decision::NoRoute { reason: format!("destination {} has no port", dest.dest.host) };
        };
        let roll = |pct: f64, rng: &mut R| pct >= 100.0 || (pct > 0.0 && rng.gen::<f64>() * 100.0 < pct);
        let fault = Fault {
            delay: rule.fault.delay.and_then(|(d, pct)| roll(pct, rng).then_some(d)),
            // The proxy answers an abort without forwarding: how an unresolved Gateway API
            // backend gets its 500.
            abort: dest.fail_with.or_else(|| rule.fault.abort.and_then(|(s, pct)| roll(pct, rng).then_some(s))),
        };
        // Each mirror rolls its own percentage (Gateway API allows several RequestMirror filters).
        let mut mirrors = Vec::new();
        for (d, pct) in rule.mirrors.iter().chain(&dest.mirrors) {
            if roll(*pct, rng) {
                mirrors.extend(d.pick(req.port()).cloned());
            }
        }
        let rewrite = (rule.rewrite_uri.is_some() || rule.rewrite_authority.is_some()).then(|| Rewrite {
            uri: rule.rewrite_uri.clone(),
            matched_prefix: if rule.rewrite_whole_path {
                None
            } else {
                matched.and_then(|m| m.uri_prefix()).map(str::to_owned)
            },
            authority: rule.rewrite_authority.clone(),
        });
        Decision::Forward(Box::new(Forward {
            virtual_service: Some(vs.key.clone()),
            rule: Some(index),
            cluster: cluster.clone(),
            fault,
            timeout: rule.timeout,
            retries: rule.retries.clone(),
            rewrite,
            request_headers: if dest.request_headers.is_empty() {
                rule.request_headers.clone()
            } else {
                rule.request_headers.merged(&dest.request_headers)
            },
            response_headers: if dest.response_headers.is_empty() {
                rule.response_headers.clone()
            } else {
                rule.response_headers.merged(&dest.response_headers)
            },
            mirrors,
        }))
    }

    /// Routes a TCP connection (a port that is not HTTP): the first `tcp` rule of the service's
    /// VirtualService matching the port and source labels, else all endpoints; None when no rule
    /// matches or nothing serves the port.
    pub fn route_tcp<R: Rng + ?Sized>(
        &self,
        source: Option<&Workload>,
        service: &Service,
        port: u16,
        rng: &mut R,
    ) -> Option<Arc<Cluster>> {
        let vs = self.mesh_vs_for(service);
        if let Some(vs) = vs.filter(|vs| !vs.tcp.is_empty()) {
            let rule = vs.tcp.iter().find(|r| {
                r.port.is_none_or(|p| p == port)
                    && (r.source_labels.is_empty()
                        || source.is_some_and(|w| r.source_labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))))
            })?;
            let dest = pick_weighted(&rule.route, rng)?;
            return dest.dest.pick(port).cloned();
        }
        self.default_cluster(service, port).cloned()
    }
}

/// Whether `rule` matches; Some(the matching condition set) (None inside = no `match`).
fn rule_matches<'r>(rule: &'r HttpRule, req: &RequestInfo<'_>) -> Option<Option<&'r MatchRequest>> {
    if rule.matches.is_empty() {
        return Some(None);
    }
    rule.matches.iter().find(|m| m.test(req)).map(Some)
}

fn pick_weighted<'d, R: Rng + ?Sized>(dests: &'d [WeightedDest], rng: &mut R) -> Option<&'d WeightedDest> {
    if dests.len() <= 1 {
        return dests.first();
    }
    // Envoy splits by weight / total; weights are any non-negative int32 (Istio does not ask
    // them to sum to 100), so the total is summed in u64.
    let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return dests.first();
    }
    let mut x = rng.gen_range(0..total);
    for d in dests {
        let w = u64::from(d.weight);
        if x < w {
            return Some(d);
        }
        x -= w;
    }
    dests.last()
}
