//! Compiled match conditions of an Istio `HTTPMatchRequest`. Each condition can test a request
//! without allocating and can say, for `mesh explain`, what it wanted and what it saw.
use std::collections::BTreeMap;

use http::HeaderName;
use regex::Regex;

use super::RequestInfo;
use crate::config::StringMatch;

/// A compiled Istio `StringMatch` (exact, prefix, regex) tested against one request value.
#[derive(Clone, Debug)]
pub enum StrMatch {
    /// The whole value equals this.
    Exact(String),
    /// The value starts with this.
    Prefix(String),
    /// RE2 semantics as Envoy applies them: the whole value must match.
    Regex(Regex),
    /// `{}`: the header is present, whatever its value.
    Present,
    /// Gateway API `PathPrefix`: whole path segments (`/foo` matches `/foo` and `/foo/bar`, not
    /// `/foobar`). Held without its trailing `/`, and `/` as `""`, so the part after the prefix
    /// always starts with `/` (what prefix rewrites need).
    SegmentPrefix(String),
}

impl StrMatch {
    /// Compiles a StringMatch; `ignore_case` folds exact/prefix to lower case (Istio's
    /// `ignoreUriCase`) and makes the regex case-insensitive.
    pub fn compile(m: &StringMatch, ignore_case: bool) -> Result<StrMatch, String> {
        let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()].iter().filter(|b| **b).count();
        if set > 1 {
            return Err("set only one of exact, prefix, regex".into());
        }
        let fold = |s: &String| if ignore_case { s.to_ascii_lowercase() } else { s.clone() };
        Ok(if let Some(e) = &m.exact {
            StrMatch::Exact(fold(e))
        } else if let Some(p) = &m.prefix {
            StrMatch::Prefix(fold(p))
        } else if let Some(r) = &m.regex {
            let flags = if ignore_case { "(?i)" } else { "" };
            StrMatch::Regex(Regex::new(&format!("^{flags}(?:{r})$")).map_err(|e| format!("invalid regex {r:?}: {e}"))?)
        } else {
            StrMatch::Present
        })
    }

    /// Whether `value` matches (ASCII case-insensitively for exact and prefix when `ignore_case`).
    pub fn test(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StrMatch::Exact(e) => {
                if ignore_case {
                    value.eq_ignore_ascii_case(e)
                } else {
                    value == e
                }
            }
            StrMatch::Prefix(p) => {
                value.len() >= p.len()
                    && if ignore_case {
                        value.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
                    } else {
                        value.starts_with(p.as_str())
                    }
            }
            StrMatch::Regex(r) => r.is_match(value),
            StrMatch::Present => true,
            StrMatch::SegmentPrefix(p) => {
                value.strip_prefix(p.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }

    /// The prefix of a prefix match (what `rewrite.uri` and `prefixRewrite` replace).
    pub fn prefix(&self) -> Option<&str> {
        match self {
            StrMatch::Prefix(p) | StrMatch::SegmentPrefix(p) => Some(p),
            _ => None,
        }
    }
}

impl std::fmt::Display for StrMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StrMatch::Exact(e) => write!(f, "exact {e:?}"),
            StrMatch::Prefix(p) => write!(f, "prefix {p:?}"),
            StrMatch::Regex(r) => {
                let s = r.as_str();
                let inner = s.strip_prefix("^").unwrap_or(s).trim_start_matches("(?i)");
                let inner = inner.strip_prefix("(?:").and_then(|i| i.strip_suffix(")$")).unwrap_or(inner);
                write!(f, "regex {inner:?}")
            }
            StrMatch::Present => write!(f, "present"),
            StrMatch::SegmentPrefix(p) => {
                write!(f, "path prefix {:?} (whole segments)", if p.is_empty() { "/" } else { p })
            }
        }
    }
}

/// One condition of an `HTTPMatchRequest`; a request matches the entry when all hold.
#[derive(Clone, Debug)]
pub enum Cond {
    /// `uri` on the path (the flag is `ignoreUriCase`).
    Uri(StrMatch, bool),
    /// `scheme`.
    Scheme(StrMatch),
    /// `method`.
    Method(StrMatch),
    /// `authority` (`:authority` or `Host`).
    Authority(StrMatch),
    /// `headers.<name>`: the header is present and matches.
    Header(HeaderName, StrMatch),
    /// `withoutHeaders.<name>`: the header is absent or does not match.
    WithoutHeader(HeaderName, StrMatch),
    /// `queryParams.<name>`.
    Query(String, StrMatch),
    /// `port`: the destination port.
    Port(u16),
    /// `sourceLabels`: the sending pod has all these labels.
    SourceLabels(BTreeMap<String, String>),
    /// `sourceNamespace`: the sending pod's namespace.
    SourceNamespace(String),
    /// `gateways` of the match: (namespace, name) of Gateways the request must have come through,
    /// `mesh` for pod traffic.
    Gateways(Vec<(String, String)>),
    /// A condition no request can meet here: a JWT claim (the node proxy authenticates no JWT,
    /// so the claim is never present) or the `:status` pseudo header of a request.
    Never(String),
}

/// One `match[]` entry: all conditions must hold.
#[derive(Clone, Debug, Default)]
pub struct MatchRequest {
    /// The entry's `name`, shown by `mesh explain`.
    pub name: Option<String>,
    /// Its conditions, all of which must hold.
    pub conds: Vec<Cond>,
}

impl MatchRequest {
    /// Whether `req` meets every condition.
    pub fn test(&self, req: &RequestInfo<'_>) -> bool {
        self.conds.iter().all(|c| c.test(req))
    }

    /// The first condition that fails, described with what the request had.
    pub fn why_not(&self, req: &RequestInfo<'_>) -> Option<String> {
        self.conds.iter().find(|c| !c.test(req)).map(|c| c.explain_failure(req))
    }

    /// The prefix of this entry's `uri.prefix` condition, if it has one.
    pub fn uri_prefix(&self) -> Option<&str> {
        self.conds.iter().find_map(|c| match c {
            Cond::Uri(m, _) => m.prefix(),
            _ => None,
        })
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

impl Cond {
    /// Whether `req` meets this condition.
    pub fn test(&self, req: &RequestInfo<'_>) -> bool {
        match self {
            Cond::Uri(m, ic) => m.test(req.uri.path(), *ic),
            Cond::Scheme(m) => m.test(req.scheme, false),
            Cond::Method(m) => m.test(req.method.as_str(), false),
            Cond::Authority(m) => req.authority.is_some_and(|a| m.test(a, false)),
            Cond::Header(name, m) => {
                req.headers.get(name).and_then(|v| v.to_str().ok()).is_some_and(|v| m.test(v, false))
            }
            Cond::WithoutHeader(name, m) => {
                !req.headers.get(name).and_then(|v| v.to_str().ok()).is_some_and(|v| m.test(v, false))
            }
            Cond::Query(name, m) => query_param(req.uri.query(), name).is_some_and(|v| m.test(v, false)),
            Cond::Port(p) => req.port() == *p,
            Cond::SourceLabels(labels) => {
                req.source.is_some_and(|w| labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            }
            Cond::SourceNamespace(ns) => req.source.is_some_and(|w| &w.namespace == ns),
            Cond::Gateways(gws) => match req.gateway() {
                Some((name, ns)) => gws.iter().any(|(gns, gname)| gname == name && gns == ns),
                None => gws.iter().any(|(_, g)| g == "mesh"),
            },
            Cond::Never(_) => false,
        }
    }

    pub(crate) fn explain_failure(&self, req: &RequestInfo<'_>) -> String {
        let header = |n: &HeaderName| {
            req.headers.get(n).map_or("absent".to_string(), |v| format!("{:?}", v.to_str().unwrap_or("<binary>")))
        };
        match self {
            Cond::Uri(m, ic) => format!("uri {m}{} ≠ {:?}", if *ic { " (ignoring case)" } else { "" }, req.uri.path()),
            Cond::Scheme(m) => format!("scheme {m} ≠ {:?}", req.scheme),
            Cond::Method(m) => format!("method {m} ≠ {:?}", req.method.as_str()),
            Cond::Authority(m) => format!("authority {m} ≠ {:?}", req.authority.unwrap_or("")),
            Cond::Header(n, m) => format!("header {n} {m} ≠ {}", header(n)),
            Cond::WithoutHeader(n, m) => format!("withoutHeaders {n} {m} but request has {}", header(n)),
            Cond::Query(n, m) => {
                format!("query param {n} {m} ≠ {:?}", query_param(req.uri.query(), n).unwrap_or("absent"))
            }
            Cond::Port(p) => format!("port {p} ≠ {}", req.port()),
            Cond::SourceLabels(l) => format!(
                "sourceLabels {} ⊄ {}",
                fmt_labels(l),
                req.source.map_or("(no source workload)".to_string(), |w| fmt_labels(&w.labels))
            ),
            Cond::SourceNamespace(ns) => {
                format!("sourceNamespace {ns:?} ≠ {:?}", req.source.map_or("", |w| w.namespace.as_str()))
            }
            Cond::Gateways(g) => format!(
                "gateways {:?} do not include {}",
                g.iter().map(|(ns, n)| format!("{ns}/{n}")).collect::<Vec<_>>(),
                req.gateway().map_or("mesh".to_string(), |(n, ns)| format!("{ns}/{n}"))
            ),
            Cond::Never(why) => why.clone(),
        }
    }
}

/// Labels as `{k=v,...}`, for `mesh explain` and logs.
pub fn fmt_labels(l: &BTreeMap<String, String>) -> String {
    format!("{{{}}}", l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
}
