//! Applying a routing config to a running proxy: compile it against the registry the proxy
//! serves and swap the table in with one atomic store, or keep the previous table. The agent
//! calls this for every config change (watched directory, Istio objects); the proxy tests call
//! it too, so the reload race they check is the agent's.
use std::sync::Arc;

use crate::{
    config::{Config, ConfigErrors},
    proxy::ProxyState,
    routing::RouteTable,
};

/// Compiles `update` (a parsed config, or the errors parsing it gave) and, if it compiles, makes
/// it the proxy's route table; returns the applied config. Requests already routed keep the
/// table they loaded (they hold an `Arc` to it), so a reload never changes a request mid-way.
/// Counted in `mesh_config_reloads_total{result="applied"|"rejected"}`.
pub fn apply_config(state: &ProxyState, update: Result<Config, ConfigErrors>) -> Option<Config> {
    let compiled = update.and_then(|c| RouteTable::compile(&c, &state.registry.load()).map(|t| (c, t)));
    match compiled {
        Ok((config, table)) => {
            state.routes.store(Arc::new(table));
            state.metrics.inc("mesh_config_reloads_total", &[("result", "applied")]);
            tracing::info!("routing config reloaded");
            Some(config)
        }
        Err(errors) => {
            state.metrics.inc("mesh_config_reloads_total", &[("result", "rejected")]);
            tracing::error!("routing config rejected, the previous config stays live:\n{errors}");
            None
        }
    }
}
