//! ReferenceGrant: which cross-namespace backends a route may use.
use super::*;

// ReferenceGrant: upstream's HTTPRouteReferenceGrant and
// HTTPRoutePartiallyInvalidViaInvalidReferenceGrant, bound to the mesh Service.

/// The backend namespaces of those tests (not in the mesh manifests): a Service and a Pod each.
const OTHER_NAMESPACES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web-backend, namespace: gateway-conformance-web-backend}\nspec:\n  selector: {app: web-backend}\n  ports: [{name: http, port: 8080, targetPort: 3000}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-backend-1, namespace: gateway-conformance-web-backend, labels: {app: web-backend}}\nstatus: {podIP: 10.244.2.1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: app-backend-v1, namespace: gateway-conformance-app-backend}\nspec:\n  selector: {app: app-backend-v1}\n  ports: [{name: http, port: 8080, targetPort: 3000}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: app-backend-v1-1, namespace: gateway-conformance-app-backend, labels: {app: app-backend-v1}}\nstatus: {podIP: 10.244.2.2}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: app-backend-v2, namespace: gateway-conformance-app-backend}\nspec:\n  selector: {app: app-backend-v2}\n  ports: [{name: http, port: 8080, targetPort: 3000}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: app-backend-v2-1, namespace: gateway-conformance-app-backend, labels: {app: app-backend-v2}}\nstatus: {podIP: 10.244.2.3}\n";

fn table_with_other_namespaces(files: &[(&str, &str)]) -> RouteTable {
    let reg = registry_with_others();
    let mut c = Config::default();
    for (f, text) in files {
        c.add_str(f, text).unwrap_or_else(|e| panic!("{e}"));
    }
    RouteTable::compile(&c, &reg).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn reference_grant_allows_a_backend_in_another_namespace() {
    let (f, text) = fixture!("adapted-httproute-reference-grant.yaml");
    let t = table_with_other_namespaces(&[(f, text)]);
    let s = send(&t, "echo", "/", &[]);
    assert_eq!((s.status, s.backend.as_deref()), (200, Some("web-backend")));
    // Without the grant (only the route): RefNotPermitted, 500, warned.
    let route_only = text.split("\n---\n").nth(1).unwrap();
    let t = table_with_other_namespaces(&[("route.yaml", route_only)]);
    assert_eq!(send(&t, "echo", "/", &[]).status, 500);
    assert!(
        t.warnings.iter().any(|w| w.contains("RefNotPermitted: backendRef gateway-conformance-web-backend/web-backend is not accessible to a HTTPRoute in namespace \"gateway-conformance-mesh\"")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn reference_grant_for_another_service_leaves_that_backend_500() {
    let t = table_with_other_namespaces(&[fixture!(
        "adapted-httproute-partially-invalid-via-invalid-reference-grant.yaml"
    )]);
    // The grant names app-backend-v1 only: /v2 (to app-backend-v2) is 500, the rest is served.
    assert_eq!(send(&t, "echo", "/v2", &[]).status, 500);
    let s = send(&t, "echo", "/", &[]);
    assert_eq!((s.status, s.backend.as_deref()), (200, Some("app-backend-v1")));
    assert!(
        t.warnings
            .iter()
            .any(|w| w.contains("RefNotPermitted: backendRef gateway-conformance-app-backend/app-backend-v2")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn reference_grant_must_match_kind_namespace_group_and_name() {
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: gateway-conformance-mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: app-backend-v2, namespace: gateway-conformance-app-backend, port: 8080}}}]\n    backendRefs: [{name: web-backend, namespace: gateway-conformance-web-backend, port: 8080}]\n";
    let grant = |from: &str, to: &str, ns: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: {ns}}}\nspec:\n  from: [{from}]\n  to: [{to}]\n")
    };
    let ok_from = "{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-mesh}";
    let web = "gateway-conformance-web-backend";
    let app = "gateway-conformance-app-backend";
    // (grant, the backend is served, the mirror is sent)
    for (g, served, mirrored) in [
        (grant(ok_from, "{group: \"\", kind: Service}", web), true, false),
        (grant(ok_from, "{group: core, kind: Service, name: web-backend}", web), true, false),
        (grant(ok_from, "{group: \"\", kind: Service, name: other}", web), false, false),
        (grant(ok_from, "{group: \"\", kind: Service}", app), false, true),
        (
            grant(
                "{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: gateway-conformance-mesh}",
                "{group: \"\", kind: Service}",
                web,
            ),
            false,
            false,
        ),
        (
            grant(
                "{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}",
                "{group: \"\", kind: Service}",
                web,
            ),
            false,
            false,
        ),
        (
            grant(
                "{group: \"\", kind: HTTPRoute, namespace: gateway-conformance-mesh}",
                "{group: \"\", kind: Service}",
                web,
            ),
            false,
            false,
        ),
        (grant(ok_from, "{group: apps, kind: Service}", web), false, false),
    ] {
        let reg = registry_with_others();
        let t = table_with_other_namespaces(&[("g.yaml", &g), ("r.yaml", route)]);
        let f = forward_in(&t, &reg, &mut StdRng::seed_from_u64(1), "/");
        assert_eq!(f.fault.abort.is_none(), served, "{g}");
        assert_eq!(!f.mirrors.is_empty(), mirrored, "{g}");
    }
}

#[test]
fn reference_grant_crd_rules() {
    for (spec, want) in [
        ("  from: []\n  to: [{group: \"\", kind: Service}]\n", "spec.from: Required value"),
        ("  from: [{kind: HTTPRoute, namespace: a}]\n  to: [{group: \"\", kind: Service}]\n", "spec.from[0].group: Required value"),
        ("  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: A_b}]\n  to: [{group: \"\", kind: Service}]\n", "spec.from[0].namespace"),
        ("  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: a}]\n  to: [{group: \"\", kind: \"\"}]\n", "spec.to[0].kind"),
        ("  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: a}]\n  to: [{group: \"\", kind: Service, nam: x}]\n", "unknown field `nam`"),
    ] {
        let y = format!("apiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: b}}\nspec:\n{spec}");
        let e = Config::parse_str("g.yaml", &y).unwrap_err().to_string();
        assert!(e.contains(want), "{spec}: want {want:?}, got {e}");
        assert!(e.starts_with("g.yaml:"), "{e}");
    }
}

fn registry_with_others() -> Registry {
    let mut reg = registry();
    reg.add_yaml(Path::new("other.yaml"), OTHER_NAMESPACES).expect("registry");
    reg
}
