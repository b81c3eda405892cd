//! ReferenceGrant: which kinds in other namespaces may reference this namespace's, and its CRD rules.
use super::http_route::hostname_ok;
use super::{cut, Validation, GROUP};
use serde::Deserialize;

/// `ReferenceGrant`: kinds in other namespaces (`from`) trusted to reference kinds of this
/// namespace (`to`). A backendRef to a Service in another namespace resolves only when one allows it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrantSpec {
    /// Who may refer: kinds in given namespaces (e.g. HTTPRoutes of namespace `team-a`).
    #[serde(default)]
    pub from: Vec<ReferenceGrantFrom>,
    /// What may be referred to in the grant's own namespace (e.g. Services, or one Service by
    /// name).
    #[serde(default)]
    pub to: Vec<ReferenceGrantTo>,
}

/// A `from` entry: a kind of referring object and the namespace it lives in.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrantFrom {
    /// Required; `""` is the core group.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind of the referring object, e.g. `HTTPRoute`, `GRPCRoute`.
    #[serde(default)]
    pub kind: String,
    /// Namespace of the referring objects.
    #[serde(default)]
    pub namespace: String,
}

/// A `to` entry: a kind (and optionally one name) in the grant's namespace that may be referred to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrantTo {
    /// Required; `""` is the core group.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind of the referred object, e.g. `Service`.
    #[serde(default)]
    pub kind: String,
    /// None: every object of the kind in the grant's namespace.
    #[serde(default)]
    pub name: Option<String>,
}

/// The core API group as a reference spells it: `""`, and `core` as Istio also accepts.
fn core_group(g: &str) -> bool {
    g.is_empty() || g == "core"
}

impl ReferenceGrantSpec {
    /// Whether this grant (in the Service's namespace) lets a `from_kind` (`HTTPRoute`,
    /// `GRPCRoute`) of `from_namespace` reference the Service `name`.
    pub fn allows_service(&self, from_kind: &str, from_namespace: &str, name: &str) -> bool {
        self.allows_core(from_kind, from_namespace, "Service", name)
    }

    /// Whether this grant (in the Secret's namespace) lets a `Gateway` of `from_namespace`
    /// reference the Secret `name` (a listener's `certificateRefs`).
    pub fn allows_secret(&self, from_namespace: &str, name: &str) -> bool {
        self.allows_core("Gateway", from_namespace, "Secret", name)
    }

    /// A `from_kind` of [`GROUP`] in `from_namespace` may reference the core `to_kind` `name`.
    fn allows_core(&self, from_kind: &str, from_namespace: &str, to_kind: &str, name: &str) -> bool {
        self.from
            .iter()
            .any(|f| f.group.as_deref() == Some(GROUP) && f.kind == from_kind && f.namespace == from_namespace)
            && self.to.iter().any(|t| {
                t.group.as_deref().is_some_and(core_group)
                    && t.kind == to_kind
                    && t.name.as_deref().is_none_or(|n| n == name)
            })
    }
}

/// The ReferenceGrant CRD's schema: 1 to 16 `from` and `to` entries, group and kind required,
/// `from.namespace` required; names are DNS labels / subdomains.
pub fn validate_reference_grant(spec: &ReferenceGrantSpec) -> Validation {
    let mut v = Validation::default();
    let mut err = |p: String, m: String| v.errors.push((p, m));
    for (field, len) in [("from", spec.from.len()), ("to", spec.to.len())] {
        if len == 0 {
            err(format!("spec.{field}"), "Required value: at least 1 item".into());
        } else if len > 16 {
            err(format!("spec.{field}"), "must have at most 16 items".into());
        }
    }
    let group_ok = |g: &str| g.is_empty() || hostname_ok(g, false);
    let kind_ok = |k: &str| {
        !k.is_empty()
            && k.len() <= 63
            && k.starts_with(|c: char| c.is_ascii_alphabetic())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let label_ok = |n: &str| n.len() <= 63 && hostname_ok(n, false) && !n.contains('.');
    for (i, f) in spec.from.iter().enumerate() {
        let at = format!("spec.from[{i}]");
        match &f.group {
            None => err(format!("{at}.group"), "Required value".into()),
            Some(g) if !group_ok(g) => err(format!("{at}.group"), format!("{:?} is not a valid group", cut(g, 60))),
            _ => {}
        }
        if !kind_ok(&f.kind) {
            err(format!("{at}.kind"), format!("{:?} is not a valid kind", cut(&f.kind, 60)));
        }
        if !label_ok(&f.namespace) {
            err(
                format!("{at}.namespace"),
                format!("{:?} is not a valid namespace (RFC 1123 label)", cut(&f.namespace, 60)),
            );
        }
    }
    for (i, t) in spec.to.iter().enumerate() {
        let at = format!("spec.to[{i}]");
        match &t.group {
            None => err(format!("{at}.group"), "Required value".into()),
            Some(g) if !group_ok(g) => err(format!("{at}.group"), format!("{:?} is not a valid group", cut(g, 60))),
            _ => {}
        }
        if !kind_ok(&t.kind) {
            err(format!("{at}.kind"), format!("{:?} is not a valid kind", cut(&t.kind, 60)));
        }
        if let Some(n) = &t.name {
            if !hostname_ok(n, false) {
                err(format!("{at}.name"), format!("{:?} is not a valid object name", cut(n, 60)));
            }
        }
    }
    v
}
