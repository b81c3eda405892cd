//! A scripted API server for discovery tests: kube-rs's real client and watchers talk to a
//! `tower_test::mock` service that answers API discovery, lists (full or metadata-only, the
//! same objects either way: kube reads the metadata it asked for) and watches from the state
//! the test edits. API groups can be installed and removed while the discovery runs; the
//! collections of a group that is not installed answer 404, as the API server does once a CRD
//! is deleted.
use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt as _, StreamBody};
use serde_json::{json, Value};
use tokio::sync::mpsc;

type Body = UnsyncBoxBody<Bytes, Infallible>;

pub const NAMESPACES: &str = "/api/v1/namespaces";

/// An API group the fake can serve: its name, one version, and (plural, kind, namespaced).
#[derive(Clone)]
pub struct Group {
    pub name: &'static str,
    pub version: &'static str,
    pub resources: Vec<(&'static str, &'static str, bool)>,
}

impl Group {
    pub fn gateway_api() -> Group {
        Group {
            name: "gateway.networking.k8s.io",
            version: "v1",
            resources: vec![
                ("httproutes", "HTTPRoute", true),
                ("grpcroutes", "GRPCRoute", true),
                ("referencegrants", "ReferenceGrant", true),
                ("gateways", "Gateway", true),
                ("gatewayclasses", "GatewayClass", false),
            ],
        }
    }

    pub fn istio() -> Group {
        Group {
            name: "networking.istio.io",
            version: "v1",
            resources: vec![
                ("virtualservices", "VirtualService", true),
                ("destinationrules", "DestinationRule", true),
                ("gateways", "Gateway", true),
            ],
        }
    }

    /// The collection path of `plural` in this group.
    pub fn path(&self, plural: &str) -> String {
        format!("/apis/{}/{}/{plural}", self.name, self.version)
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
    /// "DISCOVER <path>", "LIST <path>", "WATCH <path>" in arrival order.
    log: Vec<String>,
}

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

fn not_found(path: &str) -> Response<Body> {
    let mut r = Response::new(full(
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": path}),
    ));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
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
    pub fn apply(&self, path: &str, mut obj: Value) {
        let mut s = self.state();
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        let c = s.collections.entry(path.to_owned()).or_default();
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
        send(c, json!({"type": ty, "object": obj}));
    }

    pub fn log(&self) -> Vec<String> {
        self.state().log.clone()
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.state().log.iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// Waits (bounded) until `n` requests logged as `line` have arrived: e.g. the watch that
    /// an applied object's event must reach is open.
    pub async fn logged(&self, line: &str, n: usize) {
        let wait = async {
            loop {
                let arrived = self.1.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if self.state().log.iter().filter(|l| *l == line).count() >= n {
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

    fn served(&self, path: &str) -> bool {
        path.starts_with("/api/") || self.state().groups.iter().any(|g| path.starts_with(&format!("/apis/{}/", g.name)))
    }

    fn respond(&self, req: &Request<kube::client::Body>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let watch = req.uri().query().unwrap_or("").split('&').any(|kv| kv == "watch=true");
        if path == "/apis" {
            let mut s = self.state();
            self.record(&mut s, format!("DISCOVER {path}"));
            let groups: Vec<Value> = s
                .groups
                .iter()
                .map(|g| {
                    let gv = json!({"groupVersion": format!("{}/{}", g.name, g.version), "version": g.version});
                    json!({"name": g.name, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            return Response::new(full(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})));
        }
        let mut s = self.state();
        let resources = s.groups.iter().find(|g| path == format!("/apis/{}/{}", g.name, g.version)).map(|g| {
            let r: Vec<Value> = g
                .resources
                .iter()
                .map(|(plural, kind, namespaced)| {
                    json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "list", "watch"]})
                })
                .collect();
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{}/{}", g.name, g.version), "resources": r})
        });
        if let Some(list) = resources {
            self.record(&mut s, format!("DISCOVER {path}"));
            return Response::new(full(list));
        }
        drop(s);
        if !self.served(&path) {
            return not_found(&path);
        }
        let mut s = self.state();
        if watch {
            self.record(&mut s, format!("WATCH {path}"));
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            s.collections.entry(path).or_default().watchers.push(tx);
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((Ok::<_, Infallible>(http_body::Frame::data(chunk)), rx))
            });
            return Response::new(StreamBody::new(stream).boxed_unsync());
        }
        self.record(&mut s, format!("LIST {path}"));
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
