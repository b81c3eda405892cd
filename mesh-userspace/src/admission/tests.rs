use super::*;
use crate::routing::tests::{registry, req, subset_of, DR};

fn vs(name: &str, subset: &str, extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: {subset}}}\n{extra}"
    )
}

fn config(files: &[(&str, &str)]) -> Config {
    let mut c = Config::default();
    for (file, text) in files {
        let _ = c.add_str(file, text);
    }
    c
}

fn admit(a: &mut Admission, files: &[(&str, &str)]) -> Admitted {
    a.admit(config(files), &registry()).expect("no panic")
}

fn reviews(t: &RouteTable) -> String {
    subset_of(t, &req("/reviews/0", &[]))
}

#[test]
fn a_bad_object_keeps_its_last_good_version_and_the_rest_applies() {
    let mut a = Admission::default();
    let first = admit(&mut a, &[("dr.yaml", DR), ("vs.yaml", &vs("reviews", "v1", ""))]);
    assert!(first.rejected.is_empty());
    assert_eq!(reviews(&first.table), "v1");

    // The VirtualService gets an overflowing timeout (Istio rejects it); in the same reload the
    // DestinationRule gains a subset, which must apply.
    let bad = vs("reviews", "v3", "    timeout: 99999999999999999999s\n");
    let dr2 = DR.replace(
        "  - {name: v3, labels: {version: v3}}\n",
        "  - {name: v3, labels: {version: v3}}\n  - {name: v4, labels: {version: v3}}\n",
    );
    let second = admit(&mut a, &[("dr.yaml", &dr2), ("vs.yaml", &bad)]);
    assert_eq!(second.rejected.len(), 1, "{:?}", second.rejected);
    let r = &second.rejected[0];
    assert_eq!(r.object.as_ref().map(|o| o.to_string()).as_deref(), Some("VirtualService default/reviews"));
    assert!(r.kept_previous);
    assert!(r.errors[0].to_string().contains("out of range"), "{}", r.errors[0]);
    assert_eq!(reviews(&second.table), "v1", "the last good VirtualService stays live");
    let dr = &second.config.destination_rules[0];
    assert_eq!(dr.spec.subsets.len(), 4, "the DestinationRule change in the same reload applied");

    // Fixed: the new version applies.
    let third = admit(&mut a, &[("dr.yaml", &dr2), ("vs.yaml", &vs("reviews", "v3", ""))]);
    assert!(third.rejected.is_empty());
    assert_eq!(reviews(&third.table), "v3");
}

#[test]
fn a_new_bad_object_is_rejected_and_others_are_served() {
    let mut a = Admission::default();
    let bad = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - match:\n    - uri: {regex: \"(unclosed\"}\n    route:\n    - destination: {host: reviews, subset: v2}\n";
    let out = admit(&mut a, &[("dr.yaml", DR), ("vs.yaml", bad)]);
    assert_eq!(out.rejected.len(), 1, "{:?}", out.rejected);
    assert!(!out.rejected[0].kept_previous);
    assert_eq!(out.config.destination_rules.len(), 1);
    assert!(out.config.virtual_services.is_empty());
    assert_eq!(reviews(&out.table), "all", "no VirtualService: plain Kubernetes routing");
}

#[test]
fn apply_order_never_matters_a_subset_before_its_destination_rule() {
    let mut a = Admission::default();
    // kubectl apply -f dir/ in name order: the VirtualService naming v2 lands first.
    let early = admit(&mut a, &[("vs.yaml", &vs("reviews", "v2", ""))]);
    assert!(early.rejected.is_empty(), "a missing subset is a warning, not a rejection");
    assert!(
        early.table.warnings.iter().any(|w| w.contains("vs.yaml:") && w.contains("subset \"v2\"")),
        "{:?}",
        early.table.warnings
    );
    assert_eq!(reviews(&early.table), "v2");
    let info = crate::routing::tests::cluster_endpoints(&early.table, &req("/", &[]));
    assert_eq!(info, 0, "until the DestinationRule arrives the route has no endpoint (503)");
    let later = admit(&mut a, &[("vs.yaml", &vs("reviews", "v2", "")), ("dr.yaml", DR)]);
    assert!(later.rejected.is_empty());
    assert_eq!(crate::routing::tests::cluster_endpoints(&later.table, &req("/", &[])), 1);
}

#[test]
fn a_misspelt_api_version_is_a_rejection_not_silence() {
    let mut a = Admission::default();
    admit(&mut a, &[("dr.yaml", DR), ("vs.yaml", &vs("reviews", "v1", ""))]);
    let misspelt = vs("reviews", "v3", "").replace("networking.istio.io/v1", "networking.istio.oi/v1");
    let out = admit(&mut a, &[("dr.yaml", DR), ("vs.yaml", &misspelt)]);
    assert_eq!(out.rejected.len(), 1);
    assert!(out.rejected[0].kept_previous);
    assert!(out.rejected[0].errors[0].message.contains("is not Istio's"), "{:?}", out.rejected[0].errors);
    assert_eq!(reviews(&out.table), "v1");
    let miscased = vs("reviews", "v3", "").replace("kind: VirtualService", "kind: virtualservice");
    let out = admit(&mut a, &[("dr.yaml", DR), ("vs.yaml", &miscased)]);
    assert!(out.rejected[0].errors[0].message.contains("did you mean VirtualService"), "{:?}", out.rejected[0].errors);
    assert_eq!(reviews(&out.table), "v1");
}

#[test]
fn an_unreadable_file_keeps_everything_it_held() {
    let mut a = Admission::default();
    admit(&mut a, &[("dr.yaml", DR), ("vs.yaml", &vs("reviews", "v1", ""))]);
    let out = admit(&mut a, &[("dr.yaml", DR), ("vs.yaml", "kind: [unclosed\n")]);
    assert_eq!(out.rejected.len(), 1);
    assert!(out.rejected[0].object.is_none() && out.rejected[0].kept_previous);
    assert_eq!(reviews(&out.table), "v1");
    // Deleting the file deletes its objects.
    let out = admit(&mut a, &[("dr.yaml", DR)]);
    assert_eq!(reviews(&out.table), "all");
}

#[test]
fn oversized_and_alias_bomb_documents_are_rejected() {
    let mut a = Admission::default();
    let huge = format!(
        "{}\n    headers: {{request: {{set: {{x-pad: \"{}\"}}}}}}\n",
        vs("reviews", "v1", ""),
        "a".repeat(2 << 20)
    );
    let out = admit(&mut a, &[("dr.yaml", DR), ("big.yaml", &huge)]);
    assert_eq!(out.rejected.len(), 1, "{:?}", out.rejected);
    assert!(out.rejected[0].errors[0].message.contains("larger than any Kubernetes object"));
    assert!(out.rejected[0].errors[0].to_string().len() < 400);
    let bomb = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bomb}\nspec:\n  a: &a [x, x, x, x, x, x, x, x, x]\n  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n";
    let out = admit(&mut a, &[("dr.yaml", DR), ("bomb.yaml", bomb)]);
    assert_eq!(out.rejected.len(), 1, "{:?}", out.rejected);
}

#[test]
fn a_panicking_compile_is_a_rejected_reload() {
    let e = guarded(|| -> () { panic!("boom") });
    assert_eq!(e.unwrap_err().0, "boom");
    assert!(guarded(|| 7).is_ok());
}

#[test]
fn a_bad_httproute_keeps_its_last_good_version() {
    let route = |host: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: reviews}}]\n  rules:\n  - filters: [{{type: RequestRedirect, requestRedirect: {{hostname: {host}}}}}]\n")
    };
    let mut a = Admission::default();
    // No port in the filter: the Service port (9080), which is not http's default, so it is shown.
    let first = admit(&mut a, &[("r.yaml", &route("good.example"))]);
    assert!(first.rejected.is_empty(), "{:?}", first.rejected);
    assert_eq!(reviews(&first.table), "redirect 302 http://good.example:9080/reviews/0");
    let second = admit(&mut a, &[("dr.yaml", DR), ("r.yaml", &route("Bad_Host"))]);
    assert_eq!(second.rejected.len(), 1, "{:?}", second.rejected);
    let r = &second.rejected[0];
    assert_eq!(r.object.as_ref().map(|o| o.to_string()).as_deref(), Some("HTTPRoute default/r"));
    assert!(r.kept_previous);
    assert!(r.errors[0].to_string().contains("r.yaml:7:"), "{}", r.errors[0]);
    assert_eq!(
        reviews(&second.table),
        "redirect 302 http://good.example:9080/reviews/0",
        "the last good HTTPRoute stays live"
    );
    assert_eq!(second.config.destination_rules.len(), 1, "the rest of the reload applied");
}
