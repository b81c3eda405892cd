//! Compiling a VirtualService's HTTP rules: match conditions, the action (route, redirect or
//! direct response), fault injection, retries, header operations and mirrors.
use super::*;

/// The lazily built path of a rule (`spec.http[i]`), only needed for errors.
type RulePath<'p> = dyn Fn() -> &'p str + 'p;

impl Builder<'_> {
    pub(super) fn http_rule(
        &mut self,
        r: &config::HttpRoute,
        vs: &Sourced<config::VirtualServiceSpec>,
        index: usize,
    ) -> Option<HttpRule> {
        let at = &vs.at;
        // The rule's path is only needed for errors; build it once, then.
        let cell = std::cell::OnceCell::new();
        let path = || cell.get_or_init(|| format!("spec.http[{index}]")).as_str();
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().enumerate() {
            matches.push(self.match_request(m, vs, &|| format!("{}.match[{j}]", path())));
        }
        if r.delegate.is_some() {
            // A root rule delegating to another VirtualService: not supported, reported by
            // config::validate; the rule routes nothing.
            return None;
        }
        let action = self.rule_action(r, vs, &path)?;
        let fault = self.fault(r, vs, &path);
        let timeout = self.duration(&r.timeout, at, || format!("{}.timeout", path()));
        let retries = self.retries(r, at, &path);
        let (request_headers, response_headers) =
            r.headers.as_ref().map(|h| self.header_ops(h, at, &format!("{}.headers", path()))).unwrap_or_default();
        let mirrors = self.mirrors(r, vs, &path);
        Some(HttpRule {
            name: r.name.clone(),
            matches,
            action,
            fault,
            timeout,
            retries,
            rewrite_uri: r.rewrite.as_ref().and_then(|rw| rw.uri.clone()),
            rewrite_whole_path: false,
            rewrite_authority: r.rewrite.as_ref().and_then(|rw| rw.authority.clone()),
            request_headers,
            response_headers,
            mirrors,
            origin: None,
        })
    }

    /// Route, redirect or direct response; None when the rule has none or both.
    fn rule_action(
        &mut self,
        r: &config::HttpRoute,
        vs: &Sourced<config::VirtualServiceSpec>,
        path: &RulePath<'_>,
    ) -> Option<Action> {
        let at = &vs.at;
        let action = match (&r.redirect, r.route.is_empty()) {
            (Some(_), false) => {
                self.errors
                    .push(at.error(format!("{}.redirect", path()), "a rule has either route or redirect, not both"));
                return None;
            }
            (Some(rd), true) => Action::Redirect(Redirect {
                uri: rd.uri.clone(),
                authority: rd.authority.clone(),
                port: rd.port.and_then(|p| u16::try_from(p).ok()),
                scheme: rd.scheme.clone(),
                // 0 is unset (Istio); any 3xx is Istio's range.
                code: match rd.redirect_code {
                    None | Some(0) => 301,
                    Some(c @ 300..=399) => c as u16,
                    Some(c) => {
                        self.errors.push(at.error(
                            format!("{}.redirect.redirectCode", path()),
                            format!("{c} is not a valid redirect code, must be 3xx"),
                        ));
                        301
                    }
                },
                prefix_rewrite: rd.prefix_rewrite.clone().filter(|p| !p.is_empty()),
                gateway: false,
            }),
            (None, true) if r.direct_response.is_some() => {
                let d = r.direct_response.as_ref();
                let status = d.map_or(0, |d| d.status);
                self.warnings.push(
                    at.error(
                        format!("{}.directResponse", path()),
                        "directResponse is accepted as Istio does, but the node proxy answers 404 instead",
                    )
                    .to_string(),
                );
                Action::DirectResponse {
                    status: u16::try_from(status).unwrap_or(0),
                    body: d.and_then(|d| d.body.as_ref()).and_then(|b| b.string.clone()),
                }
            }
            (None, true) => {
                self.errors.push(at.error(path().to_owned(), "a rule needs a route (or a redirect)"));
                return None;
            }
            (None, false) => Action::Route(self.weighted(
                r.route.iter().map(|d| (&d.destination, d.weight, d.headers.as_ref())),
                &vs.namespace,
                at,
                &|| format!("{}.route", path()),
            )),
        };
        Some(action)
    }

    /// The rule's fault injection: a delay and an abort, each on a percentage of requests.
    fn fault(
        &mut self,
        r: &config::HttpRoute,
        vs: &Sourced<config::VirtualServiceSpec>,
        path: &RulePath<'_>,
    ) -> FaultSpec {
        let at = &vs.at;
        let mut fault = FaultSpec::default();
        if let Some(f) = &r.fault {
            if let Some(d) = &f.delay {
                let fp = format!("{}.fault.delay", path());
                let pct = match (&d.percentage, d.percent) {
                    (Some(p), _) => self.percent(Some(p.value), at, format!("{fp}.percentage.value")),
                    (None, Some(p)) => self.percent(Some(p as f64), at, format!("{fp}.percent")),
                    (None, None) => {
                        self.warnings.push(format!(
                            "VirtualService {}: {fp} has no percentage: Istio injects it into 0% of requests",
                            vs.key()
                        ));
                        0.0
                    }
                };
                match (&d.fixed_delay, &d.exponential_delay) {
                    (Some(fd), _) => match parse_duration(fd) {
                        Ok(dur) => fault.delay = Some((dur, pct)),
                        Err(e) => self.errors.push(at.error(format!("{fp}.fixedDelay"), e)),
                    },
                    (None, Some(_)) => self.errors.push(at.error(
                        format!("{fp}.exponentialDelay"),
                        "exponentialDelay is not supported by Istio; use fixedDelay",
                    )),
                    // Valid Istio (a warning from config::validate): nothing to delay.
                    (None, None) => {}
                }
            }
            if let Some(a) = &f.abort {
                let fp = format!("{}.fault.abort", path());
                let pct = match &a.percentage {
                    Some(p) => self.percent(Some(p.value), at, format!("{fp}.percentage.value")),
                    None => {
                        self.warnings.push(format!(
                            "VirtualService {}: {fp} has no percentage: Istio injects it into 0% of requests",
                            vs.key()
                        ));
                        0.0
                    }
                };
                // gRPC-status aborts and an abort with no error type are valid Istio; they are
                // reported by config::validate and inject nothing here.
                if let Some(s) = a.http_status {
                    match u16::try_from(s) {
                        Ok(s) if (200..=600).contains(&s) => fault.abort = Some((s, pct)),
                        _ => self.errors.push(
                            at.error(format!("{fp}.httpStatus"), format!("HTTP status {s} is not in range 200-599")),
                        ),
                    }
                }
            }
        }
        fault
    }

    /// The rule's retry policy; Istio's default without a `retries` stanza.
    fn retries(&mut self, r: &config::HttpRoute, at: &Arc<Locator>, path: &RulePath<'_>) -> Arc<RetryPolicy> {
        match &r.retries {
            None => self.default_retries.clone(),
            Some(rt) => {
                if rt.attempts < 0 {
                    self.errors.push(at.error(format!("{}.retries.attempts", path()), "attempts must be >= 0"));
                }
                let retry_on = match RetryOn::parse(rt.retry_on.as_deref().unwrap_or(ISTIO_DEFAULT_RETRY_ON)) {
                    Ok(r) => r,
                    Err(e) => {
                        self.errors.push(at.error(format!("{}.retries.retryOn", path()), e));
                        RetryOn::default()
                    }
                };
                Arc::new(RetryPolicy {
                    attempts: rt.attempts.max(0) as u32,
                    per_try_timeout: self
                        .duration(&rt.per_try_timeout, at, || format!("{}.retries.perTryTimeout", path())),
                    retry_on,
                    backoff: None,
                })
            }
        }
    }

    /// The rule's mirror (at most one in Istio's VirtualService), with its percentage.
    fn mirrors(
        &mut self,
        r: &config::HttpRoute,
        vs: &Sourced<config::VirtualServiceSpec>,
        path: &RulePath<'_>,
    ) -> Vec<(DestClusters, f64)> {
        let at = &vs.at;
        match &r.mirror {
            Some(m) => {
                let pct = match (&r.mirror_percentage, r.mirror_percent) {
                    (Some(p), _) => self.percent(Some(p.value), at, format!("{}.mirrorPercentage.value", path())),
                    (None, Some(p)) => self.percent(Some(p as f64), at, format!("{}.mirrorPercent", path())),
                    (None, None) => 100.0,
                };
                self.destination(m, &vs.namespace, at, &|| format!("{}.mirror", path())).map(|d| (d, pct))
            }
            None => None,
        }
        .into_iter()
        .collect()
    }

    fn match_request(
        &mut self,
        m: &config::HttpMatchRequest,
        vs: &Sourced<config::VirtualServiceSpec>,
        path: &dyn Fn() -> String,
    ) -> MatchRequest {
        let at = &vs.at;
        let mut conds = Vec::new();
        if let Some(u) = &m.uri {
            if let Some(c) = self.string_match(at, u, m.ignore_uri_case, || format!("{}.uri", path())) {
                conds.push(Cond::Uri(c, m.ignore_uri_case));
            }
        }
        for (field, v, mk) in [
            ("scheme", &m.scheme, Cond::Scheme as fn(StrMatch) -> Cond),
            ("method", &m.method, Cond::Method),
            ("authority", &m.authority, Cond::Authority),
        ] {
            if let Some(v) = v {
                if let Some(c) = self.string_match(at, v, false, || format!("{}.{field}", path())) {
                    conds.push(mk(c));
                }
            }
        }
        self.header_conds(m, at, path, &mut conds);
        for (name, v) in &m.query_params {
            if let Some(c) = self.string_match(at, v, false, || format!("{}.queryParams.{name}", path())) {
                conds.push(Cond::Query(name.clone(), c));
            }
        }
        if let Some(p) = m.port {
            match u16::try_from(p) {
                Ok(p) if p > 0 => conds.push(Cond::Port(p)),
                _ => self.errors.push(at.error(format!("{}.port", path()), format!("{p} is not a port number"))),
            }
        }
        if !m.source_labels.is_empty() {
            conds.push(Cond::SourceLabels(m.source_labels.clone()));
        }
        if let Some(ns) = &m.source_namespace {
            conds.push(Cond::SourceNamespace(ns.clone()));
        }
        if !m.gateways.is_empty() {
            let gws = m
                .gateways
                .iter()
                .map(|g| match g.split_once('/') {
                    Some((ns, n)) => (ns.to_owned(), n.to_owned()),
                    None if g == "mesh" => (String::new(), g.clone()),
                    None => (vs.namespace.clone(), g.clone()),
                })
                .collect();
            conds.push(Cond::Gateways(gws));
        }
        MatchRequest { name: m.name.clone(), conds }
    }

    /// The `headers` and `withoutHeaders` conditions of a match (pseudo headers and JWT claims
    /// included).
    fn header_conds(
        &mut self,
        m: &config::HttpMatchRequest,
        at: &Arc<Locator>,
        path: &dyn Fn() -> String,
        conds: &mut Vec<Cond>,
    ) {
        for (field, map, without) in [("headers", &m.headers, false), ("withoutHeaders", &m.without_headers, true)] {
            for (name, v) in map {
                // `regex: "*"` in withoutHeaders is Istio's "present": the header must be absent.
                let star = config::StringMatch { regex: None, ..v.clone() };
                let v = if without && v.regex.as_deref() == Some("*") { &star } else { v };
                if config::validate::is_jwt_claim(name) {
                    // No JWT is authenticated by the node proxy, so no claim is ever present.
                    if !without {
                        conds.push(Cond::Never(format!(
                            "JWT claim {} (the node proxy authenticates no JWT)",
                            config::cut(name, 60)
                        )));
                    }
                    continue;
                }
                if name.starts_with(':') {
                    let Some(c) = self.string_match(at, v, false, || format!("{}.{field}.{name}", path())) else {
                        continue;
                    };
                    conds.extend(pseudo_header_cond(name, without, c));
                    continue;
                }
                let Ok(hn) = HeaderName::from_bytes(name.as_bytes()) else {
                    self.errors.push(at.error(
                        format!("{}.{field}.{name}", path()),
                        format!("header name {} is not a valid header name", config::cut(name, 60)),
                    ));
                    continue;
                };
                if let Some(c) = self.string_match(at, v, false, || format!("{}.{field}.{name}", path())) {
                    conds.push(if without { Cond::WithoutHeader(hn, c) } else { Cond::Header(hn, c) });
                }
            }
        }
    }
}

/// The condition a pseudo header (`:authority`, `:path`, ...) match stands for (`without`: in
/// withoutHeaders), None when it always holds.
fn pseudo_header_cond(name: &str, without: bool, c: StrMatch) -> Option<Cond> {
    match (name, without) {
        (":authority", false) => Some(Cond::Authority(c)),
        (":method", false) => Some(Cond::Method(c)),
        (":scheme", false) => Some(Cond::Scheme(c)),
        (":path", false) => Some(Cond::Uri(c, false)),
        // A request has no :status, so it never matches and is always "without" it.
        (":status", false) => Some(Cond::Never(format!("{name} (requests have no status)"))),
        (":status", true) => None,
        // Every request has :authority, :method, :scheme and :path; negating a
        // value on them is not supported, so such a rule never matches (and
        // `mesh explain` says why) rather than matching too much.
        (_, true) => Some(Cond::Never(format!("withoutHeaders {name} (not supported on a pseudo header)"))),
        _ => Some(Cond::Never(format!("unknown pseudo header {name}"))),
    }
}
