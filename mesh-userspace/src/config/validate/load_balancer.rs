//! A DestinationRule's load balancer: simple, consistent hash, locality and warmup settings.
use std::collections::BTreeMap;

use super::{enum_value, Validation};
use crate::config::{cut, parse_duration, ConsistentHash, HttpCookie, LoadBalancerSettings, LocalityLbSetting, Warmup};

pub(super) fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x & 1 == 0 {
        return false;
    }
    let mut f = 3u64;
    while f.saturating_mul(f) <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

pub(super) fn load_balancer(v: &mut Validation, base: &str, lb: &LoadBalancerSettings, has_outlier: bool) {
    let policies = [lb.simple.is_some(), lb.consistent_hash.is_some(), lb.backend_utilization.is_some()];
    if policies.iter().filter(|b| **b).count() > 1 {
        v.error(
            base.to_owned(),
            "must validate one and only one schema (oneOf): set only one of simple, consistentHash, backendUtilization",
        );
    }
    enum_value(
        v,
        format!("{base}.simple"),
        lb.simple.as_deref(),
        &["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"],
    );
    if lb.backend_utilization.is_some() {
        v.not_enforced(format!("{base}.backendUtilization"));
    }
    if let Some(ch) = &lb.consistent_hash {
        consistent_hash(v, &format!("{base}.consistentHash"), ch);
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        v.error(base.to_owned(), "only one of localityLbSetting and zoneAwareLbSetting can be set");
    }
    if let Some(l) = &lb.locality_lb_setting {
        locality_lb(v, &format!("{base}.localityLbSetting"), l, has_outlier);
        v.not_enforced(format!("{base}.localityLbSetting"));
    }
    if let Some(z) = &lb.zone_aware_lb_setting {
        zone_aware_lb(v, &format!("{base}.zoneAwareLbSetting"), z, has_outlier);
        v.not_enforced(format!("{base}.zoneAwareLbSetting"));
    }
    if let Some(w) = &lb.warmup {
        warmup(v, &format!("{base}.warmup"), w);
    }
    if let Some(d) = &lb.warmup_duration_secs {
        v.duration(format!("{base}.warmupDurationSecs"), Some(d));
        v.not_enforced(format!("{base}.warmupDurationSecs"));
    }
}

/// `consistentHash`: one hash key, one of ringHash and maglev, a prime maglev table.
fn consistent_hash(v: &mut Validation, cp: &str, ch: &ConsistentHash) {
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip.is_some(),
        ch.http_query_parameter_name.is_some(),
    ];
    if keys.iter().filter(|b| **b).count() > 1 {
        v.error(
            cp.to_owned(),
            "must validate one and only one schema (oneOf): set only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
        );
    }
    if ch.ring_hash.is_some() && ch.maglev.is_some() {
        v.error(cp.to_owned(), "must validate one and only one schema (oneOf): set only one of ringHash, maglev");
    }
    if let Some(c) = &ch.http_cookie {
        http_cookie(v, &format!("{cp}.httpCookie"), c);
    }
    if ch.minimum_ring_size.is_some_and(|n| n != 0) {
        v.warn(
            format!("{cp}.minimumRingSize"),
            "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
        );
        if ch.ring_hash.is_some() || ch.maglev.is_some() {
            v.error(format!("{cp}.minimumRingSize"), "only one of MinimumRingSize or Maglev/Ringhash can be specified");
        }
    }
    if let Some(m) = &ch.maglev {
        let mp = format!("{cp}.maglev.tableSize");
        if m.table_size == 0 {
            v.error(mp.clone(), "tableSize must be set for maglev");
        }
        if m.table_size >= 5_000_011 {
            v.error(mp.clone(), "tableSize must be less than 5000011 for maglev");
        }
        if !is_prime(m.table_size) {
            v.error(mp, "tableSize must be a prime number for maglev");
        }
    }
    if ch.http_header_name.is_none()
        && ch.http_cookie.is_none()
        && ch.use_source_ip.is_none()
        && ch.http_query_parameter_name.is_none()
    {
        v.warn(cp.to_owned(), "consistentHash without a hash key: requests are spread at random");
    }
}

/// A consistent-hash cookie: a name, distinct attribute names, a valid TTL.
fn http_cookie(v: &mut Validation, kp: &str, c: &HttpCookie) {
    if c.name.is_empty() {
        v.error(format!("{kp}.name"), "name required for HttpCookie");
    }
    let mut names = std::collections::HashSet::new();
    for (i, a) in c.attributes.iter().enumerate() {
        if a.name.is_empty() {
            v.error(format!("{kp}.attributes[{i}].name"), "cookie attribute name cannot be empty");
        } else if !names.insert(a.name.as_str()) {
            v.error(
                format!("{kp}.attributes[{i}].name"),
                format!("duplicate cookie attribute name: {}", cut(&a.name, 60)),
            );
        }
    }
    if let Some(ttl) = c.ttl.as_deref() {
        if let Err(e) = parse_duration(ttl) {
            v.error(format!("{kp}.ttl"), e);
        }
    }
    if c.path.is_some() || !c.attributes.is_empty() {
        v.not_enforced(format!("{kp}.attributes"));
    }
}

/// `warmup`: a duration, a minimum percent in 0..=100, a positive aggression.
fn warmup(v: &mut Validation, wp: &str, w: &Warmup) {
    match &w.duration {
        None => v.error(format!("{wp}.duration"), "duration is required"),
        Some(d) => {
            v.duration(format!("{wp}.duration"), Some(d));
        }
    }
    if w.minimum_percent.is_some_and(|p| p > 100.0) {
        v.error(format!("{wp}.minimumPercent"), "minimumPercent value should be less than or equal to 100");
    }
    if w.minimum_percent.is_some_and(|p| p < 0.0) {
        v.error(format!("{wp}.minimumPercent"), "minimumPercent should be greater than or equal to 0");
    }
    if w.aggression.is_some_and(|a| a <= 0.0) {
        v.error(format!("{wp}.aggression"), "aggression should be greater than 0");
    }
    v.not_enforced(wp.to_owned());
}

fn failover_labels() -> [&'static str; 3] {
    ["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"]
}

/// `agent.ValidateLocalityLbSetting`.
fn locality_lb(v: &mut Validation, base: &str, l: &LocalityLbSetting, has_outlier: bool) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        v.error(base.to_owned(), "can not simultaneously specify 'distribute' and 'failover'");
        return;
    }
    if !l.failover.is_empty() {
        if let Some(p) = l.failover_priority.iter().find(|p| failover_labels().contains(&p.as_str())) {
            v.error(
                format!("{base}.failoverPriority"),
                format!(
                    "can not simultaneously set 'failover' and topology label '{}' in 'failover_priority'",
                    cut(p, 60)
                ),
            );
            return;
        }
    }
    let mut src = Vec::new();
    for (i, d) in l.distribute.iter().enumerate() {
        src.push(d.from.as_str());
        let mut total: i64 = 0;
        for w in d.to.values() {
            if *w <= 0 || *w > 100 {
                v.error(format!("{base}.distribute[{i}].to"), "locality weight must be in range [1, 100]");
                return;
            }
            total += w;
        }
        if total != 100 {
            v.error(format!("{base}.distribute[{i}].to"), format!("total locality weight {total} != 100"));
            return;
        }
        let dst: Vec<&str> = d.to.keys().map(String::as_str).collect();
        v.check(format!("{base}.distribute[{i}].to"), localities(&dst));
    }
    v.check(format!("{base}.distribute"), localities(&src));
    if (!l.failover.is_empty() || !l.failover_priority.is_empty()) && !has_outlier {
        v.warn(base.to_owned(), "outlier detection policy must be provided for failover");
    }
    for (i, f) in l.failover.iter().enumerate() {
        let fp = format!("{base}.failover[{i}]");
        if f.from == f.to {
            v.error(fp.clone(), "locality lb failover settings must specify different regions");
        }
        if f.from.contains('/') || f.to.contains('/') {
            v.error(fp.clone(), "locality lb failover only specify region");
        }
        if f.from.contains('*') || f.to.contains('*') {
            v.error(fp, "locality lb failover region should not contain '*' wildcard");
        }
    }
}

/// `agent.ValidateZoneAwareLbSetting`.
fn zone_aware_lb(v: &mut Validation, base: &str, z: &LocalityLbSetting, has_outlier: bool) {
    if !z.distribute.is_empty() {
        v.error(format!("{base}.distribute"), "unknown field \"distribute\"");
    }
    for (i, p) in z.failover_priority.iter().enumerate() {
        if failover_labels().contains(&p.as_str()) {
            v.error(
                format!("{base}.failoverPriority[{i}]"),
                format!(
                    "'failover_priority' for zone aware lb must not use topology label '{}'; region- and zone-level routing are handled automatically",
                    cut(p, 60)
                ),
            );
        }
    }
    if (!z.failover.is_empty() || !z.failover_priority.is_empty()) && !has_outlier {
        v.warn(base.to_owned(), "outlier detection policy must be provided for failover");
    }
    for (i, f) in z.failover.iter().enumerate() {
        let fp = format!("{base}.failover[{i}]");
        if f.from == f.to {
            v.error(fp.clone(), "zone aware lb failover settings must specify different regions");
        }
        if f.from.contains('/') || f.to.contains('/') {
            v.error(
                fp.clone(),
                "zone aware lb failover only specifies region; zone and subzone failover are handled automatically",
            );
        }
        if f.from.contains('*') || f.to.contains('*') {
            v.error(fp, "zone aware lb failover region should not contain '*' wildcard");
        }
    }
    if z.min_cluster_size == Some(0) {
        v.error(format!("{base}.minClusterSize"), "should be greater than or equal to 1");
    }
}

/// `validateLocalities`: `region[/zone[/subzone]]` with at most one trailing `*`, no overlaps.
pub(super) fn localities(list: &[&str]) -> Result<(), String> {
    // region → zone → subzones; "*" marks "everything below".
    let mut map: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for loc in list {
        let stars = loc.matches('*').count();
        if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
            return Err(format!(
                "locality {} wildcard '*' number can not exceed 1 and must be in the end",
                cut(loc, 60)
            ));
        }
        let overlap = || format!("locality {} overlap with previous specified ones", cut(loc, 60));
        if map.contains_key("*") {
            return Err(overlap());
        }
        let items: Vec<&str> = loc.splitn(3, '/').collect();
        if items.iter().any(|i| i.is_empty()) {
            return Err(format!("locality {} must not contain empty region/zone/subzone info", cut(loc, 60)));
        }
        match items.as_slice() {
            [region] => {
                if map.contains_key(region) {
                    return Err(overlap());
                }
                map.insert(region, BTreeMap::from([("*", vec!["*"])]));
            }
            [region, zone] => {
                let r = map.entry(region).or_default();
                if r.contains_key("*") || r.contains_key(zone) {
                    return Err(overlap());
                }
                r.insert(zone, vec!["*"]);
            }
            [region, zone, sub] => {
                let r = map.entry(region).or_default();
                if r.contains_key("*") {
                    return Err(overlap());
                }
                let z = r.entry(zone).or_default();
                if z.contains(&"*") || z.contains(sub) {
                    return Err(overlap());
                }
                z.push(sub);
            }
            _ => {}
        }
    }
    Ok(())
}
