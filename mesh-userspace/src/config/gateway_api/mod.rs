//! Kubernetes Gateway API `HTTPRoute` (`gateway.networking.k8s.io` v1 and v1beta1) as users write
//! them, and the rules its CRD (OpenAPI schema and CEL `x-kubernetes-validations`) enforces.
//!
//! Strict like the Istio kinds: an unknown field is an error, because a misspelt field silently
//! ignored is a routing rule silently not applied. Fields of the spec the node proxy does not act
//! on are accepted and each use is a warning that says so. How a route is bound to a Service and
//! compiled is in `routing/gateway_api.rs`.
use super::{cut, validate::Validation};

mod filters;
mod gateway;
mod grpc_route;
mod http_route;
mod reference_grant;
#[cfg(test)]
mod tests;

pub use gateway::*;
pub use grpc_route::*;
pub use http_route::*;
pub use reference_grant::*;

/// The Gateway API's group: `gateway.networking.k8s.io`.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// HTTPRoute is served at v1 and (deprecated, same schema) v1beta1; so is ReferenceGrant.
pub const VERSIONS: &[&str] = &["v1", "v1beta1"];
/// Other kinds of the Gateway API group: valid, not acted on in this release (skipped, reported).
pub const OTHER_KINDS: &[&str] = &["TCPRoute", "TLSRoute", "UDPRoute", "BackendTLSPolicy", "ListenerSet"];
/// How a Gateway API `Gateway` is named in [`super::ObjectKey`] and messages: `Gateway` alone is
/// Istio's `networking.istio.io` kind.
pub const GATEWAY_KIND: &str = "Gateway.gateway.networking.k8s.io";
/// The GatewayClass `controllerName`s this mesh serves: its own, and Istio's (so an Istio
/// install's `istio` GatewayClass keeps working unchanged).
pub const CONTROLLER_NAMES: &[&str] = &["mesh/gateway-controller", "istio.io/gateway-controller"];
/// `gatewayClassName`s served even when no GatewayClass document names them (Istio's samples use
/// `istio`; ours is `mesh`). A GatewayClass of that name, when there is one, decides instead.
pub const CLASS_NAMES: &[&str] = &["mesh", "istio"];

// CRD limits (config/crd/standard/gateway.networking.k8s.io_httproutes.yaml).
const MAX_PARENT_REFS: usize = 32;
const MAX_HOSTNAMES: usize = 16;
const MAX_RULES: usize = 16;
const MAX_MATCHES_PER_RULE: usize = 64;
/// CEL: "the total number of matches across all rules in a route must be less than 128".
const MAX_MATCHES_TOTAL: usize = 128;
const MAX_FILTERS: usize = 16;
const MAX_BACKEND_REFS: usize = 16;
const MAX_HEADER_MATCHES: usize = 16;
const MAX_HEADER_OPS: usize = 16;
const MAX_WEIGHT: i64 = 1_000_000;
const MAX_PATH_VALUE: usize = 1024;
const MAX_HEADER_VALUE: usize = 4096;
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

impl super::Config {
    /// A document of the Gateway API group: an HTTPRoute is typed, validated and admitted on its
    /// own like the Istio kinds; the group's other kinds are skipped with a note.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_gateway_api_document(
        &mut self,
        file: &std::sync::Arc<str>,
        (text, line_offset): (&str, usize),
        at: std::sync::Arc<super::Locator>,
        api_version: &str,
        kind: &str,
        name: String,
        namespace: String,
    ) -> Result<(), (Option<super::ObjectKey>, Vec<super::ConfigError>)> {
        let static_kind = match kind {
            "HTTPRoute" => Some("HTTPRoute"),
            "ReferenceGrant" => Some("ReferenceGrant"),
            "GRPCRoute" => Some("GRPCRoute"),
            "Gateway" => Some(GATEWAY_KIND),
            "GatewayClass" => Some("GatewayClass"),
            _ => None,
        };
        let key = static_kind.map(|kind| super::ObjectKey { kind, namespace: namespace.clone(), name: name.clone() });
        let reject = |path: &str, msg: String| Err((key.clone(), vec![at.error(path, msg)]));
        if static_kind.is_none() {
            return self.skip_or_reject_kind(file, kind, &name).or_else(|(path, msg)| reject(path, msg));
        }
        let version = api_version.split('/').nth(1).unwrap_or("");
        if !VERSIONS.contains(&version) {
            return reject(
                "apiVersion",
                format!("unsupported apiVersion {:?}: {kind} is {GROUP}/v1 (or v1beta1)", cut(api_version, 60)),
            );
        }
        if name.is_empty() {
            return reject("metadata.name", "missing metadata.name".into());
        }
        if let Err(e) = super::check_object_name(&name).and_then(|()| super::check_object_name(&namespace)) {
            return reject("metadata", e);
        }
        self.admit_gateway_api(text, line_offset, at, kind, key)
    }

    /// A kind of the group that is not admitted: skipped with a note when it is one of
    /// [`OTHER_KINDS`], else the path and message of the error (naming the kind meant when only
    /// its case differs).
    fn skip_or_reject_kind(&mut self, file: &str, kind: &str, name: &str) -> Result<(), (&'static str, String)> {
        if OTHER_KINDS.contains(&kind) {
            self.skipped
                .push(format!("{file}: {kind} {} (Gateway API kind not supported yet; ignored)", cut(name, 60)));
            return Ok(());
        }
        let known =
            OTHER_KINDS.iter().chain(["HTTPRoute", "ReferenceGrant", "GRPCRoute", "Gateway", "GatewayClass"].iter());
        if let Some(k) = known.clone().find(|k| k.eq_ignore_ascii_case(kind)) {
            return Err((
                "kind",
                format!("unknown kind {:?}: kinds are case-sensitive; did you mean {k}?", cut(kind, 40)),
            ));
        }
        if kind.is_empty() {
            return Err(("kind", "missing `kind`".into()));
        }
        Err(("kind", format!("unknown kind {:?} in {GROUP}", cut(kind, 40))))
    }

    /// An admitted kind, its header checked: typed, validated, and upserted when valid.
    fn admit_gateway_api(
        &mut self,
        text: &str,
        line_offset: usize,
        at: std::sync::Arc<super::Locator>,
        kind: &str,
        key: Option<super::ObjectKey>,
    ) -> Result<(), (Option<super::ObjectKey>, Vec<super::ConfigError>)> {
        if kind == "ReferenceGrant" {
            let r: super::Resource<ReferenceGrantSpec> =
                super::typed(text, &at, line_offset).map_err(|e| (key.clone(), vec![e]))?;
            let o = super::sourced(r, at);
            let v = validate_reference_grant(&o.spec);
            if !v.errors.is_empty() {
                return Err((key, v.errors.into_iter().map(|(p, m)| o.at.error(p, m)).collect()));
            }
            super::upsert(&mut self.reference_grants, o, kind, &mut self.skipped);
            return Ok(());
        }
        if kind == "GatewayClass" {
            let r: super::Resource<GatewayClassSpec> =
                super::typed(text, &at, line_offset).map_err(|e| (key.clone(), vec![e]))?;
            let o = super::sourced(r, at);
            let v = validate_gateway_class(&o.spec);
            self.warnings.extend(v.warnings.into_iter().map(|(p, m)| o.at.error(p, m).to_string()));
            if !v.errors.is_empty() {
                return Err((key, v.errors.into_iter().map(|(p, m)| o.at.error(p, m)).collect()));
            }
            super::upsert(&mut self.gateway_classes, o, kind, &mut self.skipped);
            return Ok(());
        }
        if kind == "Gateway" {
            let r: super::Resource<KubeGatewaySpec> =
                super::typed(text, &at, line_offset).map_err(|e| (key.clone(), vec![e]))?;
            let o = super::sourced(r, at);
            let v = validate_gateway(&o.spec);
            self.warnings.extend(v.warnings.into_iter().map(|(p, m)| o.at.error(p, m).to_string()));
            if !v.errors.is_empty() {
                return Err((key, v.errors.into_iter().map(|(p, m)| o.at.error(p, m)).collect()));
            }
            super::upsert(&mut self.kube_gateways, o, GATEWAY_KIND, &mut self.skipped);
            return Ok(());
        }
        if kind == "GRPCRoute" {
            let r: super::Resource<GrpcRouteSpec> =
                super::typed(text, &at, line_offset).map_err(|e| (key.clone(), vec![e]))?;
            let created = r.metadata.creation_timestamp.clone();
            let o = super::sourced(r, at);
            let v = validate_grpc_route(&o.spec);
            self.warnings.extend(v.warnings.into_iter().map(|(p, m)| o.at.error(p, m).to_string()));
            if !v.errors.is_empty() {
                return Err((key, v.errors.into_iter().map(|(p, m)| o.at.error(p, m)).collect()));
            }
            let converted = super::Sourced {
                name: o.name,
                namespace: o.namespace,
                api_version: o.api_version,
                annotations: o.annotations,
                spec: o.spec.to_http(created),
                at: o.at,
            };
            super::upsert(&mut self.grpc_routes, converted, kind, &mut self.skipped);
            return Ok(());
        }
        let r: super::Resource<HttpRouteSpec> =
            super::typed(text, &at, line_offset).map_err(|e| (key.clone(), vec![e]))?;
        let created = r.metadata.creation_timestamp.clone();
        let mut o = super::sourced(r, at);
        o.spec.created = created;
        let v = validate(&o.spec);
        self.warnings.extend(v.warnings.into_iter().map(|(p, m)| o.at.error(p, m).to_string()));
        if !v.errors.is_empty() {
            return Err((key, v.errors.into_iter().map(|(p, m)| o.at.error(p, m)).collect()));
        }
        super::upsert(&mut self.http_routes, o, kind, &mut self.skipped);
        Ok(())
    }
}
