use std::{sync::Arc, time::Duration};
use crate::registry::{Endpoint, Registry, Service, Workload};
use crate::config::Config;
pub struct RouteTable(Registry);
pub struct GatewayListener { pub name: String, pub namespace: String, pub port: u16 }
impl RouteTable {
    pub fn compile(_c: &Config, _r: &Registry) -> Result<RouteTable, crate::config::ConfigErrors> { Ok(RouteTable(_r.clone())) }
    pub fn kubernetes_only(_r: &Registry) -> RouteTable { RouteTable(_r.clone()) }
    pub fn route<R: rand::Rng + ?Sized>(&self, req: &RequestInfo<'_>, _rng: &mut R) -> Decision {
        let Context::Mesh { service, port } = req.context else { return Decision::NoRoute { reason: "gw".into() } };
        let svc = self.0.services.iter().find(|s| s.name == service.name).unwrap().clone();
        let c = Cluster { name: svc.name.clone(), endpoints: self.0.endpoints(&svc, port), service: svc, subset: None, port, lb: LbPolicy::RoundRobin, outlier_detection: None };
        Decision::Forward(Forward { virtual_service: None, rule: None, cluster: Arc::new(c), fault: Fault { delay: None, abort: None }, timeout: None, retries: RetryPolicy { attempts: 2, per_try_timeout: None, retry_on: RetryOn { five_xx: false, gateway_error: false, connect_failure: true, reset: false } }, rewrite: None, request_headers: HeaderOps, response_headers: HeaderOps, mirror: None })
    }
    pub fn route_tcp<R: rand::Rng + ?Sized>(&self, _s: Option<&Workload>, svc: &Service, port: u16, _rng: &mut R) -> Option<Arc<Cluster>> {
        let svc = self.0.services.iter().find(|s| s.name == svc.name).unwrap().clone();
        Some(Arc::new(Cluster { name: svc.name.clone(), endpoints: self.0.endpoints(&svc, port), service: svc, subset: None, port, lb: LbPolicy::RoundRobin, outlier_detection: None }))
    }
    pub fn gateways(&self) -> Vec<GatewayListener> { vec![] }
}
pub enum Context<'a> { Mesh { service: &'a Service, port: u16 }, Gateway { name: &'a str, namespace: &'a str, port: u16 } }
pub struct RequestInfo<'a> { pub context: Context<'a>, pub source: Option<&'a Workload>, pub method: &'a http::Method, pub uri: &'a http::Uri, pub authority: Option<&'a str>, pub scheme: &'a str, pub headers: &'a http::HeaderMap }
pub enum Decision { Forward(Forward), Redirect { status: u16, location: String }, NoRoute { reason: String } }
pub struct Fault { pub delay: Option<Duration>, pub abort: Option<u16> }
pub struct RetryOn { pub five_xx: bool, pub gateway_error: bool, pub connect_failure: bool, pub reset: bool }
impl RetryOn { pub fn status(&self, _s: u16) -> bool { false } }
pub struct RetryPolicy { pub attempts: u32, pub per_try_timeout: Option<Duration>, pub retry_on: RetryOn }
pub struct Rewrite { pub authority: Option<String> }
impl Rewrite { pub fn apply_path(&self, _p: &str) -> Option<String> { None } }
pub struct HeaderOps;
impl HeaderOps { pub fn apply(&self, _h: &mut http::HeaderMap) {} }
pub struct Forward { pub virtual_service: Option<Arc<str>>, pub rule: Option<usize>, pub cluster: Arc<Cluster>, pub fault: Fault, pub timeout: Option<Duration>, pub retries: RetryPolicy, pub rewrite: Option<Rewrite>, pub request_headers: HeaderOps, pub response_headers: HeaderOps, pub mirror: Option<Arc<Cluster>> }
pub enum HashOn { Header(String), Cookie { name: String }, SourceIp }
pub enum LbPolicy { RoundRobin, LeastRequest, Random, Passthrough, ConsistentHash(HashOn) }
pub struct OutlierDetection { pub consecutive_5xx_errors: Option<u32>, pub consecutive_gateway_errors: Option<u32>, pub base_ejection_time: Duration, pub max_ejection_percent: u32 }
pub struct Cluster { pub name: String, pub service: Arc<Service>, pub subset: Option<String>, pub port: u16, pub endpoints: Vec<Endpoint>, pub lb: LbPolicy, pub outlier_detection: Option<OutlierDetection> }
