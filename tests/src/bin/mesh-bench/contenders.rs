//! Node setup: the pods, the backends, and every contender started with its configuration (the
//! mesh agent's registry and Istio YAML, Envoy's, nginx's and haproxy's equivalents of the same
//! rules).

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use mesh_e2e::*;

use crate::{
    load::proc_tree_status, Contender, ADMIN, BACKENDS, BACKEND_PORT, CORE_LOAD, CORE_PROXY, ENVOY_ADMIN, ENVOY_PORT,
    HAPROXY_H2_PORT, HAPROXY_PORT, NGINX_H2_PORT, NGINX_PORT, PREFIX, SUBNET, SVC_PORT, VIP,
};

pub(crate) fn setup_pods(node: &mut Node) -> Result<()> {
    let hosts = [("web", VIP)];
    node.add_pod("client", 10, &hosts)?;
    node.add_pod("ipt", 11, &hosts)?;
    for (name, _, host) in BACKENDS {
        node.add_pod(name, host, &hosts)?;
    }
    // Both client netns get the same TCP settings: the connection-rate cells open tens of
    // thousands of connections.
    for ns in ["client", "ipt"] {
        let ns = format!("{PREFIX}-{ns}");
        must(&format!(
            "ip netns exec {ns} sysctl -q -w net.ipv4.ip_local_port_range='1024 65000' net.ipv4.tcp_tw_reuse=1 net.core.somaxconn=4096 net.ipv4.tcp_max_syn_backlog=4096"
        ))?;
    }
    Ok(())
}

pub(crate) fn start_backends(node: &mut Node) -> Result<()> {
    let backend = bin("e2e-backend");
    let backend = backend.to_str().context("backend path")?;
    for (name, _, host) in BACKENDS {
        node.spawn(
            name,
            name,
            &["taskset", "-c", &CORE_LOAD.to_string(), backend, "http", name, &format!("0.0.0.0:{BACKEND_PORT}")],
        )?;
        wait_for_port(SocketAddr::from((Ipv4Addr::new(10, 244, SUBNET, host), BACKEND_PORT)), Duration::from_secs(10))?;
    }
    Ok(())
}

pub(crate) fn routing_yaml() -> String {
    "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
spec:
  hosts:
  - web
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: web
        subset: v2
  - route:
    - destination:
        host: web
        subset: v1
      weight: 50
    - destination:
        host: web
        subset: v3
      weight: 50
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: web
spec:
  host: web
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
"
    .to_string()
}

pub(crate) fn start_mesh(node: &mut Node, dir: &Path, extra: &[&str]) -> Result<Contender> {
    let mut registry = service_yaml("web", VIP, SVC_PORT, "http", &[("app", "web")]);
    registry = registry.replacen(
        &format!("    port: {SVC_PORT}\n"),
        &format!("    port: {SVC_PORT}\n    targetPort: {BACKEND_PORT}\n"),
        1,
    );
    registry += &node.pod_yaml("client", &[("app", "bench-client")], 1, true)?;
    registry += &node.pod_yaml("ipt", &[("app", "bench-ipt")], 1, true)?;
    for (name, version, _) in BACKENDS {
        registry += &node.pod_yaml(name, &[("app", "web"), ("version", version)], BACKEND_PORT, true)?;
    }
    let reg = dir.join("registry.yaml");
    fs::write(&reg, registry)?;
    let cfg = dir.join("routing");
    fs::create_dir_all(&cfg)?;
    fs::write(cfg.join("web.yaml"), routing_yaml())?;
    let admin: SocketAddr = ADMIN.parse()?;
    node.spawn_host(
        "agent",
        Command::new("taskset")
            .args(["-c", &CORE_PROXY.to_string()])
            .arg(bin("mesh"))
            .args(["agent", "--registry"])
            .arg(&reg)
            .arg("--config")
            .arg(&cfg)
            .args(["--admin", ADMIN, "--ingress-bind", "127.0.0.1"])
            .args(extra)
            .env("MESH_WORKER_THREADS", "1")
            .env("MESH_EBPF_OBJECT", ebpf_object()),
    )?;
    wait_ready(admin, Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", node.log("agent")))?;
    let pid = node.pid("agent").context("agent pid")?;
    Ok(Contender {
        name: "mesh",
        proc_label: Some("agent"),
        url: format!("http://web:{SVC_PORT}/"),
        url_h2: Some(format!("http://web:{SVC_PORT}/")),
        idle_rss_kb: proc_tree_status(pid, "VmRSS:"),
    })
}

pub(crate) fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, SUBNET, BACKENDS[i].2)
}

pub(crate) fn envoy_yaml() -> String {
    let cluster = |name: &str, i: usize| {
        format!(
            "  - name: {name}
    type: STATIC
    connect_timeout: 10s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {}, port_value: {BACKEND_PORT} }}
",
            backend_ip(i)
        )
    };
    format!(
        "admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {ENVOY_ADMIN} }}
static_resources:
  listeners:
  - name: web
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {ENVOY_PORT} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: web
              domains: [\"*\"]
              routes:
              - match:
                  prefix: /
                  headers:
                  - name: end-user
                    string_match: {{ exact: jason }}
                route: {{ cluster: v2 }}
              - match: {{ prefix: / }}
                route:
                  weighted_clusters:
                    clusters:
                    - {{ name: v1, weight: 50 }}
                    - {{ name: v3, weight: 50 }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{}{}{}",
        cluster("v1", 0),
        cluster("v2", 1),
        cluster("v3", 2)
    )
}

pub(crate) fn start_envoy(node: &mut Node, dir: &Path, envoy: &Path) -> Result<Contender> {
    let cfg = dir.join("envoy.yaml");
    fs::write(&cfg, envoy_yaml())?;
    let envoy = envoy.to_str().context("envoy path")?;
    let cfg_s = cfg.to_str().context("path")?;
    node.spawn(
        "client",
        "envoy",
        &[
            "taskset",
            "-c",
            &CORE_PROXY.to_string(),
            envoy,
            "-c",
            cfg_s,
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warn",
            "--use-dynamic-base-id",
        ],
    )?;
    wait_in_netns(node, "client", ENVOY_PORT, "envoy")
        .map_err(|e| anyhow::anyhow!("{e}\nenvoy log:\n{}", node.log("envoy")))?;
    let pid = node.pid("envoy").context("envoy pid")?;
    Ok(Contender {
        name: "envoy",
        proc_label: Some("envoy"),
        url: format!("http://127.0.0.1:{ENVOY_PORT}/"),
        url_h2: Some(format!("http://127.0.0.1:{ENVOY_PORT}/")),
        idle_rss_kb: proc_tree_status(pid, "VmRSS:"),
    })
}

pub(crate) fn nginx_conf(dir: &Path) -> String {
    format!(
        "worker_processes 1;
daemon off;
user root;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/nginx-tmp;
  proxy_temp_path {dir}/nginx-tmp;
  fastcgi_temp_path {dir}/nginx-tmp;
  uwsgi_temp_path {dir}/nginx-tmp;
  scgi_temp_path {dir}/nginx-tmp;
  keepalive_requests 1000000;
  upstream v1 {{ server {v1}:{BACKEND_PORT}; keepalive 512; }}
  upstream v2 {{ server {v2}:{BACKEND_PORT}; keepalive 512; }}
  upstream v3 {{ server {v3}:{BACKEND_PORT}; keepalive 512; }}
  split_clients \"${{request_id}}\" $weighted {{ 50% v1; * v3; }}
  map $http_end_user $pool {{ jason v2; default $weighted; }}
  server {{
    listen 127.0.0.1:{NGINX_PORT} backlog=4096;
    listen 127.0.0.1:{NGINX_H2_PORT} http2 backlog=4096;
    location / {{
      proxy_pass http://$pool;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }}
  }}
}}
",
        dir = dir.display(),
        v1 = backend_ip(0),
        v2 = backend_ip(1),
        v3 = backend_ip(2),
    )
}

pub(crate) fn start_nginx(node: &mut Node, dir: &Path) -> Result<Contender> {
    fs::create_dir_all(dir.join("nginx-tmp"))?;
    let cfg = dir.join("nginx.conf");
    fs::write(&cfg, nginx_conf(dir))?;
    let cfg_s = cfg.to_str().context("path")?;
    let prefix = format!("{}/", dir.display());
    node.spawn("client", "nginx", &["taskset", "-c", &CORE_PROXY.to_string(), "nginx", "-p", &prefix, "-c", cfg_s])?;
    wait_in_netns(node, "client", NGINX_PORT, "nginx")
        .map_err(|e| anyhow::anyhow!("{e}\nnginx log:\n{}", node.log("nginx")))?;
    let pid = node.pid("nginx").context("nginx pid")?;
    Ok(Contender {
        name: "nginx",
        proc_label: Some("nginx"),
        url: format!("http://127.0.0.1:{NGINX_PORT}/"),
        url_h2: Some(format!("http://127.0.0.1:{NGINX_H2_PORT}/")),
        idle_rss_kb: proc_tree_status(pid, "VmRSS:"),
    })
}

pub(crate) fn haproxy_cfg() -> String {
    format!(
        "global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 10s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend web
  bind 127.0.0.1:{HAPROXY_PORT}
  bind 127.0.0.1:{HAPROXY_H2_PORT} proto h2
  use_backend v2 if {{ req.hdr(end-user) -m str jason }}
  default_backend weighted
backend v2
  server v2 {v2}:{BACKEND_PORT}
backend weighted
  balance random
  server v1 {v1}:{BACKEND_PORT} weight 50
  server v3 {v3}:{BACKEND_PORT} weight 50
",
        v1 = backend_ip(0),
        v2 = backend_ip(1),
        v3 = backend_ip(2),
    )
}

pub(crate) fn start_haproxy(node: &mut Node, dir: &Path) -> Result<Contender> {
    let cfg = dir.join("haproxy.cfg");
    fs::write(&cfg, haproxy_cfg())?;
    let cfg_s = cfg.to_str().context("path")?;
    node.spawn("client", "haproxy", &["taskset", "-c", &CORE_PROXY.to_string(), "haproxy", "-db", "-f", cfg_s])?;
    wait_in_netns(node, "client", HAPROXY_PORT, "haproxy")
        .map_err(|e| anyhow::anyhow!("{e}\nhaproxy log:\n{}", node.log("haproxy")))?;
    let pid = node.pid("haproxy").context("haproxy pid")?;
    Ok(Contender {
        name: "haproxy",
        proc_label: Some("haproxy"),
        url: format!("http://127.0.0.1:{HAPROXY_PORT}/"),
        url_h2: Some(format!("http://127.0.0.1:{HAPROXY_H2_PORT}/")),
        idle_rss_kb: proc_tree_status(pid, "VmRSS:"),
    })
}

/// Waits until something listens on 127.0.0.1:`port` inside `pod`'s netns.
/// Waits until something listens on 127.0.0.1:`port` inside `pod`'s netns; fails early when the
/// process `label` has exited.
pub(crate) fn wait_in_netns(node: &Node, pod: &str, port: u16, label: &str) -> Result<()> {
    let ns = &node.pod(pod)?.netns;
    let pid = node.pid(label).context("no such process")?;
    let alive = || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
    };
    let mut died = false;
    wait_until(&format!("a listener on 127.0.0.1:{port} in {ns}"), Duration::from_secs(30), || {
        died = !alive();
        died || sh(&format!("ip netns exec {ns} ss -Hltn 'sport = :{port}'"))
            .map(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
            .unwrap_or(false)
    })?;
    if died {
        bail!("{label} exited before listening on {port}");
    }
    Ok(())
}
