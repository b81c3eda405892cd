//! Which TLS Gateway listeners are served, from which Secret: cross-namespace references and
//! ReferenceGrants, missing and broken Secrets (warned with where they came from, the other
//! listeners still served), Istio `SIMPLE` servers and the modes that stay unserved.
use crate::{
    config::Config,
    proxy::tls::test_pki::{secret_yaml, Ca, Leaf},
    registry::Registry,
    routing::RouteTable,
};

fn table(files: &[(&str, String)]) -> RouteTable {
    let mut config = Config::default();
    for (f, text) in files {
        config.add_str(f, text).expect("config");
    }
    let (table, rejected) = RouteTable::compile_admitting(&config, &Registry::default());
    assert!(rejected.is_empty(), "{rejected:?}");
    table
}

fn has_warning(t: &RouteTable, needle: &str) -> bool {
    t.warnings.iter().any(|w| w.contains(needle))
}

/// A Gateway `web` in `infra`: an HTTP listener on 80 and an HTTPS one on 443 whose certificate
/// is the Secret `secret_ns/cert`, and a route attached to the HTTPS one by sectionName.
fn gateway(secret_ns: &str) -> (&'static str, String) {
    (
        "gateway.yaml",
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: infra}}\nspec:\n  gatewayClassName: istio\n  listeners:\n  - {{name: http, port: 80, protocol: HTTP}}\n  - {{name: https, port: 443, protocol: HTTPS, hostname: www.example.com, tls: {{certificateRefs: [{{name: cert, namespace: {secret_ns}}}]}}}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: secure, namespace: infra}}\nspec:\n  parentRefs: [{{name: web, sectionName: https}}]\n  rules:\n  - backendRefs: [{{name: echo, port: 80}}]\n"
        ),
    )
}

fn grant(to_name: &str) -> (&'static str, String) {
    (
        "grant.yaml",
        format!("apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: gw-certs, namespace: certs}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}}]\n  to: [{{group: '', kind: Secret, name: {to_name}}}]\n"),
    )
}

fn serves_443(t: &RouteTable) -> bool {
    t.gateway_ports().contains(&443) && t.gateway_tls("infra", "web", 443).is_some()
}

#[test]
fn a_secret_in_the_gateways_namespace_is_served() {
    let leaf = Ca::new().leaf(&["www.example.com"]);
    let t = table(&[gateway("infra"), ("cert.yaml", secret_yaml("infra", "cert", &leaf))]);
    assert!(serves_443(&t), "{:?}", t.warnings);
    let certs = t.gateway_tls("infra", "web", 443).expect("tls");
    assert_eq!(certs.pick(Some("www.example.com")).map(|k| k.cert[0].clone()), Some(leaf.der.clone()));
    // Only the hostname listener: another name is refused.
    assert!(certs.pick(Some("other.example.com")).is_none());
    // The HTTP port is plain, and the route attached to the HTTPS listener.
    assert!(t.gateway_tls("infra", "web", 80).is_none());
    assert!(!has_warning(&t, "the route is not attached"), "{:?}", t.warnings);
}

#[test]
fn a_secret_in_another_namespace_needs_a_reference_grant_for_it() {
    let leaf = Ca::new().leaf(&["www.example.com"]);
    let secret = ("cert.yaml", secret_yaml("certs", "cert", &leaf));
    let t = table(&[gateway("certs"), secret.clone()]);
    assert!(!serves_443(&t));
    assert!(
        has_warning(&t, "no ReferenceGrant in certs allows Gateways of \"infra\" to use it (RefNotPermitted)"),
        "{:?}",
        t.warnings
    );
    // Listeners not served take no route: the route is warned with the listener's reason.
    assert!(has_warning(&t, "listener \"https\" (HTTPS) is not served"), "{:?}", t.warnings);
    // The HTTP listener of the same Gateway is served all the same.
    assert!(t.gateway_ports().contains(&80));
    // A grant for another Secret does not do.
    let t = table(&[gateway("certs"), secret.clone(), grant("other")]);
    assert!(!serves_443(&t), "{:?}", t.warnings);
    let t = table(&[gateway("certs"), secret, grant("cert")]);
    assert!(serves_443(&t), "{:?}", t.warnings);
}

#[test]
fn a_missing_or_broken_secret_leaves_only_that_listener_unserved_with_where_it_came_from() {
    let t = table(&[gateway("infra")]);
    assert!(!serves_443(&t) && t.gateway_ports().contains(&80));
    assert!(
        has_warning(&t, "gateway.yaml:8:")
            && has_warning(&t, "listener \"https\" (HTTPS port 443) not served: Secret infra/cert is not defined"),
        "{:?}",
        t.warnings
    );
    let leaf = Ca::new().leaf(&["www.example.com"]);
    let broken = Leaf { cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(), ..leaf };
    let t = table(&[
        gateway("infra"),
        ("broken.yaml", format!("# a comment first\n{}", secret_yaml("infra", "cert", &broken))),
    ]);
    assert!(!serves_443(&t) && t.gateway_ports().contains(&80));
    assert!(
        has_warning(&t, "Secret infra/cert (broken.yaml:2): tls.crt and tls.key do not belong together"),
        "{:?}",
        t.warnings
    );
    // Not a TLS Secret, and bad base64: warned as such.
    let opaque = "apiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: infra}\nstringData: {tls.crt: x, tls.key: y}\n";
    let t = table(&[gateway("infra"), ("opaque.yaml", opaque.into())]);
    assert!(
        has_warning(&t, "has type \"Opaque\"; a Gateway certificate is a kubernetes.io/tls Secret"),
        "{:?}",
        t.warnings
    );
    let bad64 = "apiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: infra}\ntype: kubernetes.io/tls\ndata: {tls.crt: '!!!', tls.key: '!!!'}\n";
    let t = table(&[gateway("infra"), ("bad64.yaml", bad64.into())]);
    assert!(has_warning(&t, "Secret infra/cert (bad64.yaml:1): Secret infra/cert cannot be read"), "{:?}", t.warnings);
}

/// Standard base64, for a Secret's `data` as the API server and kubectl write it.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_secret_with_base64_data_as_kubectl_writes_it_is_read_and_never_shown() {
    let leaf = Ca::new().leaf(&["www.example.com"]);
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: cert, namespace: infra}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        base64(leaf.cert_pem.as_bytes()),
        base64(leaf.key_pem.as_bytes())
    );
    let t = table(&[gateway("infra"), ("cert.yaml", secret.clone())]);
    assert!(serves_443(&t), "{:?}", t.warnings);
    let mut config = Config::default();
    config.add_str("cert.yaml", &secret).expect("config");
    let shown = format!("{config:?}");
    assert!(
        shown.contains("tls.key")
            && !shown.contains("PRIVATE KEY")
            && !shown.contains(&base64(leaf.key_pem.as_bytes())[..20])
    );
}

#[test]
fn istio_simple_servers_terminate_with_their_credential_name_and_other_modes_stay_unserved() {
    let ca = Ca::new();
    let (www, api) = (ca.leaf(&["www.example.com"]), ca.leaf(&["api.example.com"]));
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: ingress, namespace: infra}\nspec:\n  servers:\n  - port: {number: 443, name: https-www, protocol: HTTPS}\n    hosts: [\"www.example.com\"]\n    tls: {mode: SIMPLE, credentialName: www}\n  - port: {number: 443, name: https-api, protocol: HTTPS}\n    hosts: [\"infra/api.example.com\"]\n    tls: {mode: SIMPLE, credentialName: api}\n  - port: {number: 8443, name: https-pass, protocol: HTTPS}\n    hosts: [\"pass.example.com\"]\n    tls: {mode: PASSTHROUGH}\n  - port: {number: 9443, name: https-mutual, protocol: HTTPS}\n    hosts: [\"m.example.com\"]\n    tls: {mode: MUTUAL, credentialName: www}\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n";
    let t = table(&[
        ("gw.yaml", gw.into()),
        ("www.yaml", secret_yaml("infra", "www", &www)),
        ("api.yaml", secret_yaml("infra", "api", &api)),
    ]);
    let certs = t.gateway_tls("infra", "ingress", 443).expect("port 443 terminates TLS");
    assert_eq!(certs.pick(Some("www.example.com")).map(|k| k.cert[0].clone()), Some(www.der.clone()));
    assert_eq!(certs.pick(Some("api.example.com")).map(|k| k.cert[0].clone()), Some(api.der.clone()));
    assert!(certs.pick(Some("other.example.com")).is_none());
    let ports = t.gateway_ports();
    assert!(
        ports.contains(&443) && ports.contains(&80) && !ports.contains(&8443) && !ports.contains(&9443),
        "{ports:?}"
    );
    assert!(t.gateway_tls("infra", "ingress", 80).is_none());
    assert!(
        has_warning(&t, "server on port 8443 not served: tls.mode PASSTHROUGH is not implemented"),
        "{:?}",
        t.warnings
    );
    assert!(has_warning(&t, "server on port 9443 not served: tls.mode MUTUAL is not implemented"), "{:?}", t.warnings);
    // The credentialName is looked up in the Gateway's namespace only.
    let t = table(&[
        ("gw.yaml", gw.into()),
        ("www.yaml", secret_yaml("default", "www", &www)),
        ("api.yaml", secret_yaml("infra", "api", &api)),
    ]);
    assert!(has_warning(&t, "Secret infra/www is not defined"), "{:?}", t.warnings);
    let certs = t.gateway_tls("infra", "ingress", 443).expect("the api server is still served");
    assert!(certs.pick(Some("www.example.com")).is_none());
}

#[test]
fn the_secret_watch_covers_the_namespaces_the_gateways_take_certificates_from() {
    let istio = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: ingress, namespace: edge}\nspec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"*\"]\n    tls: {mode: SIMPLE, credentialName: c}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: plain, namespace: elsewhere}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n";
    let mut config = Config::default();
    for (f, text) in [gateway("certs"), ("istio.yaml", istio.into())] {
        config.add_str(f, &text).expect("config");
    }
    let namespaces: Vec<String> = config.tls_secret_namespaces().into_iter().collect();
    assert_eq!(namespaces, ["certs", "edge"]);
    let mut config = Config::default();
    config.add_str("gateway.yaml", &gateway("infra").1).expect("config");
    assert_eq!(config.tls_secret_namespaces().into_iter().collect::<Vec<_>>(), ["infra"]);
}
