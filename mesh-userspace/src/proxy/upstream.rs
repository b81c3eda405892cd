//! The upstream clients: one pool per idle timeout, connect timeout and protocol, and which one
//! a request to a cluster uses. HTTP/1 goes through the proxy's own pool (`pool.rs`); HTTP/2
//! through hyper-util's client, which keeps one multiplexed connection per endpoint.
use std::{sync::Arc, time::Duration};

use http::{Request, Response};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use super::{
    connect::{MeshConnector, SkMsgUpstream},
    http::ProxyBody,
    pool::{Http1Pool, UpstreamBody, UpstreamError},
    ProxyState,
};
use crate::routing::UpstreamProtocol;

impl ProxyState {
    /// How to send a request the client made over `client_version` to `cluster`: the upstream
    /// protocol Istio would pick and the client (pool) for it.
    pub fn upstream(
        &self,
        cluster: &crate::routing::Cluster,
        client_version: ::http::Version,
    ) -> (UpstreamProtocol, UpstreamClient) {
        let protocol = cluster.upstream_protocol(client_version == ::http::Version::HTTP_2);
        (protocol, self.client_for(&cluster.connection_pool, protocol))
    }

    /// A client for `cluster` that never reuses a connection: for the one retry after a pooled
    /// connection closed under a request (see `forward::forward`).
    pub fn fresh_upstream(&self, cluster: &crate::routing::Cluster, protocol: UpstreamProtocol) -> UpstreamClient {
        let key = UpstreamKey {
            idle_timeout: Duration::ZERO,
            connect_timeout: cluster.connection_pool.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            protocol,
        };
        let mut clients = self.pool_clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.entry(key).or_insert_with(|| upstream_client(key, &self.sk_msg)).clone()
    }

    /// The upstream client for a cluster's connection pool settings and upstream protocol.
    fn client_for(&self, pool: &crate::routing::ConnectionPool, protocol: UpstreamProtocol) -> UpstreamClient {
        if pool.idle_timeout.is_none() && pool.connect_timeout.is_none() {
            return match protocol {
                UpstreamProtocol::Http1 => self.client.clone(),
                UpstreamProtocol::Http2 => self.client_h2.clone(),
            };
        }
        let key = UpstreamKey {
            idle_timeout: pool.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            connect_timeout: pool.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            protocol,
        };
        let mut clients = self.pool_clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.entry(key).or_insert_with(|| upstream_client(key, &self.sk_msg)).clone()
    }
}

/// A pool of upstream connections of one protocol.
#[derive(Clone)]
pub enum UpstreamClient {
    Http1(Http1Pool),
    /// Behind an `Arc`: a request clones its client, and hyper-util's is a few hundred bytes.
    Http2(Arc<Client<MeshConnector, ProxyBody>>),
}

impl UpstreamClient {
    /// Sends `req` (URI `http://ip:port/...`, the endpoint the load balancer picked).
    pub async fn request(&self, req: Request<ProxyBody>) -> Result<Response<UpstreamBody>, UpstreamError> {
        match self {
            UpstreamClient::Http1(pool) => pool.request(req).await,
            UpstreamClient::Http2(client) => match client.request(req).await {
                Ok(resp) => Ok(resp.map(UpstreamBody::shared)),
                Err(e) if e.is_connect() => Err(UpstreamError::Connect(Box::new(e))),
                Err(e) => Err(UpstreamError::Request(Box::new(e))),
            },
        }
    }
}

/// Upstream connections idle this long are closed rather than reused. Below the shortest common
/// server keep-alive (gunicorn's 2 s, as Bookinfo's productpage runs; Node.js and Apache use 5 s),
/// so the proxy stops using a connection before the server may close it: reusing one at the
/// instant the server closes it fails the request. The half second margin dwarfs in-cluster RTTs,
/// and the server's timer started earlier than ours (when it wrote the response's last byte).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Envoy's default cluster connect timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What distinguishes one upstream client (hyper has one pool, idle timeout, connect timeout and
/// protocol per client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct UpstreamKey {
    idle_timeout: Duration,
    connect_timeout: Duration,
    protocol: UpstreamProtocol,
}

impl UpstreamKey {
    pub(super) const fn default_for(protocol: UpstreamProtocol) -> Self {
        UpstreamKey { idle_timeout: DEFAULT_IDLE_TIMEOUT, connect_timeout: DEFAULT_CONNECT_TIMEOUT, protocol }
    }
}

pub(super) fn upstream_client(key: UpstreamKey, bypass: &Arc<SkMsgUpstream>) -> UpstreamClient {
    let connector = MeshConnector::new(bypass.clone(), key.connect_timeout);
    // A zero idle timeout means no pool at all: every request gets its own connection.
    let max_idle = if key.idle_timeout.is_zero() { 0 } else { crate::settings::FIXED.upstream_max_idle_per_host };
    if key.protocol == UpstreamProtocol::Http1 {
        return UpstreamClient::Http1(Http1Pool::new(connector, key.idle_timeout, max_idle));
    }
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(key.idle_timeout)
        .pool_max_idle_per_host(max_idle)
        .pool_timer(hyper_util::rt::TokioTimer::new());
    // One multiplexed connection per endpoint, as Envoy keeps for HTTP/2 clusters.
    builder.http2_only(true).timer(hyper_util::rt::TokioTimer::new());
    UpstreamClient::Http2(Arc::new(builder.build(connector)))
}
