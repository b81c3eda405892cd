//! A scripted API server for discovery tests: kube-rs's real client and watchers talk to a
//! `tower_test::mock` service that answers API discovery, lists (full or metadata-only, the
//! same objects either way: kube reads the metadata it asked for) and watches from the state
//! the test edits, so the whole path (list → watch from resourceVersion → events → bookmark →
//! 410 Gone → re-list) runs as it would against a kube-apiserver.
//!
//! The core group and `discovery.k8s.io` are always served. Other API groups can be installed
//! and removed while the discovery runs, each at one or more versions with their own resources;
//! a collection its group does not serve (not installed, or not at that version) answers 404,
//! as the API server does once a CRD is deleted. Changes are sent to the open watches like the
//! API server would, or quietly (to simulate events a watcher missed).
use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt as _, StreamBody};
use serde_json::{json, Value};
use tokio::sync::mpsc;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A resource of a group version: (plural, kind, namespaced).
pub type Resource = (&'static str, &'static str, bool);

pub const NAMESPACES: &str = "/api/v1/namespaces";

/// Path prefixes served without installing anything: the core group and EndpointSlices'.
const BUILT_IN: [&str; 2] = ["/api/", "/apis/discovery.k8s.io/"];

/// An API group the fake can serve: its name and its versions, the preferred one first, each
/// with the resources served at it.
#[derive(Clone)]
pub struct Group {
    pub name: &'static str,
    pub versions: Vec<(&'static str, Vec<Resource>)>,
}

impl Group {
    /// Gateway API at v1 only, every kind there (v1.3 and later).
    pub fn gateway_api() -> Group {
        Group {
            name: "gateway.networking.k8s.io",
            versions: vec![(
                "v1",
                vec![
                    ("httproutes", "HTTPRoute", true),
                    ("grpcroutes", "GRPCRoute", true),
                    ("referencegrants", "ReferenceGrant", true),
                    ("gateways", "Gateway", true),
                    ("gatewayclasses", "GatewayClass", false),
                ],
            )],
        }
    }

    /// Gateway API as v1.2 serves it: v1 (preferred) and v1beta1, ReferenceGrant at v1beta1
    /// only, GRPCRoute at v1 only, the rest at both.
    pub fn gateway_api_v1_2() -> Group {
        let both = [
            ("httproutes", "HTTPRoute", true),
            ("gateways", "Gateway", true),
            ("gatewayclasses", "GatewayClass", false),
        ];
        let with = |extra: Resource| both.into_iter().chain([extra]).collect();
        Group {
            name: "gateway.networking.k8s.io",
            versions: vec![
                ("v1", with(("grpcroutes", "GRPCRoute", true))),
                ("v1beta1", with(("referencegrants", "ReferenceGrant", true))),
            ],
        }
    }

    pub fn istio() -> Group {
        Group {
            name: "networking.istio.io",
            versions: vec![(
                "v1",
                vec![
                    ("virtualservices", "VirtualService", true),
                    ("destinationrules", "DestinationRule", true),
                    ("gateways", "Gateway", true),
                ],
            )],
        }
    }

    /// The collection path of `plural` at the most preferred version serving it.
    pub fn path(&self, plural: &str) -> String {
        let (version, _) = self
            .versions
            .iter()
            .find(|(_, resources)| resources.iter().any(|r| r.0 == plural))
            .unwrap_or_else(|| panic!("{} serves no {plural}", self.name));
        format!("/apis/{}/{version}/{plural}", self.name)
    }

    fn group_version(&self, version: &str) -> String {
        format!("{}/{version}", self.name)
    }

    /// Whether `path` is a collection (cluster-wide or in a namespace) this group serves.
    fn serves(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix(&format!("/apis/{}/", self.name)) else { return false };
        let plural = rest.rsplit('/').next().unwrap_or("");
        self.versions.iter().any(|(version, resources)| {
            rest.starts_with(&format!("{version}/")) && resources.iter().any(|r| r.0 == plural)
        })
    }

    /// The `/apis` entry of this group.
    fn discovery_entry(&self) -> Value {
        let versions: Vec<Value> = self
            .versions
            .iter()
            .map(|(version, _)| json!({"groupVersion": self.group_version(version), "version": version}))
            .collect();
        json!({"name": self.name, "preferredVersion": versions[0].clone(), "versions": versions})
    }

    /// The APIResourceList of `path` if it is one of this group's versions.
    fn resource_list(&self, path: &str) -> Option<Value> {
        let (version, resources) =
            self.versions.iter().find(|(v, _)| path == format!("/apis/{}", self.group_version(v)))?;
        let resources: Vec<Value> = resources
            .iter()
            .map(|(plural, kind, namespaced)| {
                json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "list", "watch"]})
            })
            .collect();
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": self.group_version(version), "resources": resources}),
        )
    }
}

#[derive(Default)]
struct Collection {
    items: Vec<Value>,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
}

#[derive(Default)]
struct State {
    collections: HashMap<String, Collection>,
    groups: Vec<Group>,
    rv: u64,
    /// "DISCOVER <path>", "LIST <path>[ fieldSelector=<f>]", "WATCH <path> rv=<rv> bookmarks=<b>"
    /// in arrival order (404s are not logged).
    log: Vec<String>,
    /// Paths whose next list answers 500 (the watcher must back off and retry).
    fail_next_list: Vec<String>,
}

impl State {
    /// The discovery document at `path`: the group list, or an installed group version's
    /// resources.
    fn discovery(&self, path: &str) -> Option<Value> {
        if path == "/apis" {
            let groups: Vec<Value> = self.groups.iter().map(Group::discovery_entry).collect();
            return Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}));
        }
        self.groups.iter().find_map(|g| g.resource_list(path))
    }

    fn serves(&self, path: &str) -> bool {
        BUILT_IN.iter().any(|p| path.starts_with(p)) || self.groups.iter().any(|g| g.serves(path))
    }

    /// Stamps the next resourceVersion on `obj` and stores it; the watch event it makes.
    fn put(&mut self, path: &str, mut obj: Value) -> (&mut Collection, Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let c = self.collections.entry(path.to_owned()).or_default();
        let key = key_of(&obj);
        let ty = match c.items.iter().position(|o| key_of(o) == key) {
            Some(i) => {
                c.items[i] = obj.clone();
                "MODIFIED"
            }
            None => {
                c.items.push(obj.clone());
                "ADDED"
            }
        };
        (c, json!({"type": ty, "object": obj}))
    }

    /// Removes the object `ns`/`name` of `path`, if there; the watch event it makes.
    fn remove(&mut self, path: &str, ns: &str, name: &str) -> Option<(&mut Collection, Value)> {
        self.rv += 1;
        let rv = self.rv.to_string();
        let c = self.collections.entry(path.to_owned()).or_default();
        let i = c.items.iter().position(|o| key_of(o) == (ns.to_owned(), name.to_owned()))?;
        let mut obj = c.items.remove(i);
        obj["metadata"]["resourceVersion"] = json!(rv);
        Some((c, json!({"type": "DELETED", "object": obj})))
    }
}

/// The scripted API server; clones share the state.
#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<State>>, Arc<tokio::sync::Notify>);

fn key_of(v: &Value) -> (String, String) {
    let m = &v["metadata"];
    (m["namespace"].as_str().unwrap_or("").into(), m["name"].as_str().unwrap_or("").into())
}

fn send(c: &mut Collection, event: Value) {
    let mut line = serde_json::to_vec(&event).expect("json");
    line.push(b'\n');
    let line = Bytes::from(line);
    c.watchers.retain(|w| w.send(line.clone()).is_ok());
}

fn full(v: Value) -> Body {
    http_body_util::Full::new(Bytes::from(serde_json::to_vec(&v).expect("json"))).boxed_unsync()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let mut r = Response::new(full(
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code.as_u16(), "reason": reason, "message": message}),
    ));
    *r.status_mut() = code;
    r
}

/// The query parameters, as sent (not percent-decoded).
fn query_of(uri: &Uri) -> HashMap<String, String> {
    let pairs = uri.query().unwrap_or("").split('&');
    pairs.filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// Whether log line `l` is `line`, or `line` followed by a space and more.
fn matches(l: &str, line: &str) -> bool {
    l.strip_prefix(line).is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

impl FakeApi {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A kube client whose every request this fake answers.
    pub fn client(&self) -> kube::Client {
        let (mock, mut handle) = tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((req, reply)) = handle.next_request().await {
                reply.send_response(api.respond(&req));
            }
        });
        kube::Client::new(mock, "default")
    }

    /// Serves `group` from now on (its CRDs installed).
    pub fn install(&self, group: Group) {
        self.state().groups.push(group);
    }

    /// Stops serving the group: its objects are gone and its open watches end, as when the
    /// CRDs are deleted.
    pub fn uninstall(&self, name: &str) {
        let mut s = self.state();
        let prefix = format!("/apis/{name}/");
        s.groups.retain(|g| g.name != name);
        s.collections.retain(|path, _| !path.starts_with(&prefix));
    }

    /// Adds or replaces an object, and sends the event to the open watches.
    pub fn apply(&self, path: &str, obj: Value) {
        let mut s = self.state();
        let (c, event) = s.put(path, obj);
        send(c, event);
    }

    /// Adds or replaces an object without telling the open watches (an event they missed).
    pub fn apply_quietly(&self, path: &str, obj: Value) {
        self.state().put(path, obj);
    }

    /// Deletes an object (if there), and sends the event to the open watches.
    pub fn delete(&self, path: &str, ns: &str, name: &str) {
        let mut s = self.state();
        if let Some((c, event)) = s.remove(path, ns, name) {
            send(c, event);
        }
    }

    /// Deletes an object (if there) without telling the open watches.
    pub fn delete_quietly(&self, path: &str, ns: &str, name: &str) {
        self.state().remove(path, ns, name);
    }

    /// Sends `event` as it is to the open watches of `path` (a bookmark, an error).
    pub fn event(&self, path: &str, event: Value) {
        send(self.state().collections.entry(path.to_owned()).or_default(), event);
    }

    /// Ends the open watches of `path` (like the API server's watch timeout).
    pub fn close_watches(&self, path: &str) {
        self.state().collections.entry(path.to_owned()).or_default().watchers.clear();
    }

    /// The next list of `path` answers 500 (once per call).
    pub fn fail_next_list(&self, path: &str) {
        self.state().fail_next_list.push(path.to_owned());
    }

    pub fn log(&self) -> Vec<String> {
        self.state().log.clone()
    }

    /// How many logged requests are `line` or `line` followed by a space and more (so
    /// "LIST <path>" counts that path's lists with and without a field selector, not those of
    /// a longer path).
    pub fn count(&self, line: &str) -> usize {
        self.state().log.iter().filter(|l| matches(l, line)).count()
    }

    /// Waits (bounded) until `n` requests matching `line` (as [`FakeApi::count`] does) have
    /// arrived: e.g. the watch that an applied object's event must reach is open.
    pub async fn logged(&self, line: &str, n: usize) {
        let wait = async {
            loop {
                let arrived = self.1.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if self.count(line) >= n {
                    return;
                }
                arrived.await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(5), wait).await.is_err() {
            panic!("no {n}× {line:?} within 5 s; log: {:?}", self.log());
        }
    }

    fn record(&self, s: &mut State, line: String) {
        s.log.push(line);
        self.1.notify_waiters();
    }

    fn respond(&self, req: &Request<kube::client::Body>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let query = query_of(req.uri());
        let mut s = self.state();
        if let Some(document) = s.discovery(&path) {
            self.record(&mut s, format!("DISCOVER {path}"));
            return Response::new(full(document));
        }
        if !s.serves(&path) {
            return status(StatusCode::NOT_FOUND, "NotFound", &path);
        }
        if query.get("watch").is_some_and(|w| w == "true") {
            return self.watch(&mut s, path, &query);
        }
        self.list(&mut s, path, &query)
    }

    /// Opens a watch of `path`: a body that streams the collection's events.
    fn watch(&self, s: &mut State, path: String, query: &HashMap<String, String>) -> Response<Body> {
        let param = |k: &str| query.get(k).map(String::as_str).unwrap_or("");
        let line = format!("WATCH {path} rv={} bookmarks={}", param("resourceVersion"), param("allowWatchBookmarks"));
        self.record(s, line);
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        s.collections.entry(path).or_default().watchers.push(tx);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, Infallible>(http_body::Frame::data(chunk)), rx))
        });
        Response::new(StreamBody::new(stream).boxed_unsync())
    }

    /// Lists `path` at the current resourceVersion, or fails once if asked to.
    fn list(&self, s: &mut State, path: String, query: &HashMap<String, String>) -> Response<Body> {
        let line = match query.get("fieldSelector") {
            Some(f) => format!("LIST {path} fieldSelector={f}"),
            None => format!("LIST {path}"),
        };
        self.record(s, line);
        if let Some(i) = s.fail_next_list.iter().position(|p| *p == path) {
            s.fail_next_list.remove(i);
            return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "etcd is sad");
        }
        let rv = s.rv.to_string();
        let items = s.collections.entry(path).or_default().items.clone();
        Response::new(full(
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}),
        ))
    }
}

/// A Namespace object with `labels`.
pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}
