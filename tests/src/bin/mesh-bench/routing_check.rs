//! Correctness before speed: every proxy must route the bench's requests as configured.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use mesh_e2e::Node;

use crate::Contender;

pub(crate) struct RoutingCheck {
    pub(crate) rows: Vec<(String, String)>,
}

/// Anonymous requests of the routing check: enough that a split off 50/50 by 10 points (60/40)
/// falls outside the 99.9% binomial bound (±52 around 500) in all but ~0.1% of runs; with 200
/// the bound is ±24 and a 60/40 router would pass most runs.
pub(crate) const ROUTING_CHECK_ANON: usize = 1000;

/// Sends 1000 anonymous and 20 jason requests through each contender and counts which backend
/// answered; the bench refuses to compare proxies that do not route alike.
pub(crate) fn check_routing(node: &Node, contenders: &[Contender]) -> Result<RoutingCheck> {
    let mut rows = vec![];
    for c in contenders.iter().filter(|c| c.proc_label.is_some()) {
        let count = |jason: bool, n: usize| -> Result<BTreeMap<String, usize>> {
            let mut args =
                vec!["curl".to_string(), "-s".into(), "--max-time".into(), "5".into(), "-w".into(), "\\n".into()];
            if jason {
                args.extend(["-H".into(), "end-user: jason".into()]);
            }
            for _ in 0..n {
                args.push(c.url.clone());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = node.exec("client", &args)?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut m = BTreeMap::new();
            for l in text.lines().filter(|l| !l.trim().is_empty()) {
                let b =
                    l.split_whitespace().next().and_then(|w| w.strip_prefix("backend=")).unwrap_or("error").to_string();
                *m.entry(b).or_default() += 1;
            }
            Ok(m)
        };
        let anon = count(false, ROUTING_CHECK_ANON)?;
        let jason = count(true, 20)?;
        let fmt =
            |m: &BTreeMap<String, usize>| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
        let (v1, v3) = (anon.get("web-v1").copied().unwrap_or(0), anon.get("web-v3").copied().unwrap_or(0));
        if jason.get("web-v2") != Some(&20)
            || v1 + v3 != ROUTING_CHECK_ANON
            || !mesh_e2e::bookinfo::within_binomial(v1, ROUTING_CHECK_ANON, 0.5)
        {
            bail!("{} does not route as configured: anonymous {{{}}}, jason {{{}}}", c.name, fmt(&anon), fmt(&jason));
        }
        println!("   routing check {:>8}: anonymous {{{}}}  jason {{{}}}", c.name, fmt(&anon), fmt(&jason));
        rows.push((c.name.to_string(), format!("anonymous: {}; jason: {}", fmt(&anon), fmt(&jason))));
    }
    Ok(RoutingCheck { rows })
}
