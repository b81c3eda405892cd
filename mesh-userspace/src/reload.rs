//! Applying a routing config to a running proxy: admit it object by object against the registry
//! the proxy serves ([`crate::admission`]) and swap the table in with one atomic store. The agent
//! calls this for every config change (watched directory, Istio objects, a new registry); the
//! proxy tests call it too, so the reload race they check is the agent's.

use crate::{admission::Admission, config::Config, proxy::ProxyState, registry::Registry};

/// Admits `candidate` and makes the result the proxy's route table. Requests already routed keep
/// the table they loaded (they hold an `Arc` to it), so a reload never changes a request mid-way.
/// Rejected objects are logged with `file:line:col` and counted per object; the reload is counted
/// in `mesh_config_reloads_total{result="applied"|"partial"|"failed"}`. Returns false only when
/// nothing was applied (the compiler panicked; the previous table stays).
pub fn apply_config(state: &ProxyState, admission: &mut Admission, candidate: Config, registry: &Registry) -> bool {
    apply_config_reporting(state, admission, candidate, registry).is_some()
}

/// What one applied reload left live, for `/config_dump`.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// The objects live now (a rejected object's last good version among them).
    pub config: Config,
    /// Every object or file rejected by this reload.
    pub rejected: Vec<crate::admission::RejectedObject>,
    /// What the compiler warned about (references to things nobody defines...).
    pub warnings: Vec<String>,
}

/// [`apply_config`], returning what is live (None: nothing applied, the previous table stays).
pub fn apply_config_reporting(
    state: &ProxyState,
    admission: &mut Admission,
    candidate: Config,
    registry: &Registry,
) -> Option<Applied> {
    let metrics = &state.metrics;
    let version = candidate.version.clone();
    match admission.admit(candidate, registry) {
        Ok(mut admitted) => {
            let warnings = std::mem::take(&mut admitted.table.warnings);
            for r in &admitted.rejected {
                let errors = crate::config::ConfigErrors(r.errors.clone());
                let kept = if r.kept_previous { "its last good version stays live" } else { "it had no good version" };
                match &r.object {
                    Some(o) => {
                        metrics.inc(
                            "mesh_config_objects_rejected_total",
                            &[("kind", o.kind), ("namespace", &o.namespace), ("name", &o.name)],
                        );
                        tracing::error!(object = %o, "routing object rejected; {kept}:\n{errors}");
                    }
                    None => {
                        metrics.inc(
                            "mesh_config_objects_rejected_total",
                            &[("kind", ""), ("namespace", ""), ("name", "")],
                        );
                        tracing::error!(file = %r.file, "routing file rejected; {kept}:\n{errors}");
                    }
                }
            }
            // What istioctl analyze would say (a subset or Gateway nobody defines yet, ...).
            state.publish_routes(admitted.table);
            for w in admitted.config.warnings.iter().chain(&warnings) {
                tracing::warn!("routing config: {w}");
            }
            let result = if admitted.rejected.is_empty() { "applied" } else { "partial" };
            metrics.inc("mesh_config_reloads_total", &[("result", result)]);
            metrics.inc("mesh_config_generation", &[]);
            // Which ConfigMap version is live: what a rollout (or a test) waits for.
            metrics.set_info("mesh_config_version_info", &[("version", version.as_deref().unwrap_or(""))]);
            tracing::info!(
                virtual_services = admitted.config.virtual_services.len(),
                destination_rules = admitted.config.destination_rules.len(),
                gateways = admitted.config.gateways.len(),
                rejected = admitted.rejected.len(),
                "routing config admitted"
            );
            Some(Applied { config: admitted.config, rejected: admitted.rejected, warnings })
        }
        Err(e) => {
            metrics.inc("mesh_config_reloads_total", &[("result", "failed")]);
            metrics.inc("mesh_config_compile_panics_total", &[]);
            tracing::error!(panic = %e.0, "compiling the routing config panicked; nothing of this reload applied, the previous routes stay live");
            None
        }
    }
}
