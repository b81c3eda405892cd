//! A stand-in for kube-apiserver, good enough for the agent's watchers: HTTP/1.1 on loopback,
//! `GET <collection>` lists and `GET <collection>?watch=true` streams (chunked, kept open) for the
//! collections the agent watches. No kube-apiserver can run on this machine; this lets the real
//! agent binary run in `--kubernetes` mode against the real kernel.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    thread,
};

use anyhow::Result;
use serde_json::{json, Value};

pub const SERVICES: &str = "/api/v1/services";
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
pub const PODS: &str = "/api/v1/pods";
pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const VIRTUAL_SERVICES: &str = "/apis/networking.istio.io/v1/virtualservices";
pub const DESTINATION_RULES: &str = "/apis/networking.istio.io/v1/destinationrules";
pub const GATEWAYS: &str = "/apis/networking.istio.io/v1/gateways";
pub const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const GATEWAY_API: [&str; 5] = [
    HTTP_ROUTES,
    "/apis/gateway.networking.k8s.io/v1/grpcroutes",
    "/apis/gateway.networking.k8s.io/v1/referencegrants",
    "/apis/gateway.networking.k8s.io/v1/gateways",
    "/apis/gateway.networking.k8s.io/v1/gatewayclasses",
];
const COLLECTIONS: [&str; 7] = [SERVICES, SLICES, PODS, NAMESPACES, VIRTUAL_SERVICES, DESTINATION_RULES, GATEWAYS];

#[derive(Default)]
struct Collection {
    items: Vec<Value>,
    watchers: Vec<mpsc::Sender<Vec<u8>>>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    collections: HashMap<String, Collection>,
}

#[derive(Clone)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

fn key_of(v: &Value) -> (String, String) {
    let m = &v["metadata"];
    (m["namespace"].as_str().unwrap_or("").into(), m["name"].as_str().unwrap_or("").into())
}

impl FakeApiServer {
    pub fn start() -> Result<FakeApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let server = FakeApiServer { addr: listener.local_addr()?, inner: Arc::default() };
        let s = server.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                thread::spawn(move || s.serve(conn));
            }
        });
        Ok(server)
    }

    /// A kubeconfig pointing at this server, for `KUBECONFIG`.
    pub fn kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\ncurrent-context: fake\n",
                self.addr
            ),
        )?;
        Ok(path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces an object and tells the open watches.
    pub fn apply(&self, collection: &str, mut obj: Value) {
        let mut inner = self.lock();
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        let c = inner.collections.entry(collection.into()).or_default();
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
        broadcast(c, json!({"type": ty, "object": obj}));
    }

    pub fn delete(&self, collection: &str, namespace: &str, name: &str) {
        let mut inner = self.lock();
        inner.rv += 1;
        let rv = inner.rv.to_string();
        let c = inner.collections.entry(collection.into()).or_default();
        if let Some(i) = c.items.iter().position(|o| key_of(o) == (namespace.to_owned(), name.to_owned())) {
            let mut obj = c.items.remove(i);
            obj["metadata"]["resourceVersion"] = json!(rv);
            broadcast(c, json!({"type": "DELETED", "object": obj}));
        }
    }

    /// Number of open watch streams on `collection` (to know an event will be seen live).
    pub fn watchers(&self, collection: &str) -> usize {
        self.lock().collections.get(collection).map_or(0, |c| c.watchers.len())
    }

    fn serve(&self, conn: TcpStream) {
        let Ok(read_half) = conn.try_clone() else { return };
        let mut reader = BufReader::new(read_half);
        let mut out = conn;
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                if header == "\r\n" || header == "\n" {
                    break;
                }
            }
            let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            if query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1") {
                let (tx, rx) = mpsc::channel::<Vec<u8>>();
                self.lock().collections.entry(path.into()).or_default().watchers.push(tx);
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if out.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for line in rx {
                    let chunk = [format!("{:x}\r\n", line.len()).into_bytes(), line, b"\r\n".to_vec()].concat();
                    if out.write_all(&chunk).and_then(|_| out.flush()).is_err() {
                        return;
                    }
                }
                return;
            }
            let body = if path == "/apis" {
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{"name": "networking.istio.io",
                    "versions": [{"groupVersion": "networking.istio.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "networking.istio.io/v1", "version": "v1"}},
                    {"name": "gateway.networking.k8s.io",
                    "versions": [{"groupVersion": "gateway.networking.k8s.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "gateway.networking.k8s.io/v1", "version": "v1"}}]})
            } else if path == "/apis/networking.istio.io/v1" {
                let r = |plural: &str, kind: &str| json!({"name": plural, "singularName": "", "namespaced": true, "kind": kind, "verbs": ["get", "list", "watch"]});
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "networking.istio.io/v1",
                    "resources": [r("virtualservices", "VirtualService"), r("destinationrules", "DestinationRule"), r("gateways", "Gateway")]})
            } else if path == "/apis/gateway.networking.k8s.io/v1" {
                let r = |plural: &str, kind: &str, namespaced: bool| json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "list", "watch"]});
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "gateway.networking.k8s.io/v1",
                    "resources": [r("httproutes", "HTTPRoute", true), r("grpcroutes", "GRPCRoute", true),
                        r("referencegrants", "ReferenceGrant", true), r("gateways", "Gateway", true),
                        r("gatewayclasses", "GatewayClass", false)]})
            } else {
                let mut inner = self.lock();
                let rv = inner.rv.to_string();
                match inner.collections.get_mut(path) {
                    Some(c) => {
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": c.items})
                    }
                    None if COLLECTIONS.contains(&path) || GATEWAY_API.contains(&path) => {
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": []})
                    }
                    None => {
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": path})
                    }
                }
            };
            let status = if body["kind"] == "Status" { "404 Not Found" } else { "200 OK" };
            let body = body.to_string();
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if out.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    }
}

fn broadcast(c: &mut Collection, event: Value) {
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    c.watchers.retain(|w| w.send(line.clone()).is_ok());
}
