//! Every tunable the agent runs with, in one place: the values the `mesh agent` flags set
//! ([`Settings`], built once by [`crate::agent::AgentArgs::settings`]) and the ones fixed at build
//! time ([`FIXED`]). `/config_dump` shows both under `settings`, so "what is this node's idle
//! timeout?" has one answer, read from the running agent.
//!
//! Limits a pod's annotations override (`mesh/max-connections`, ...) are the defaults here; the
//! per-pod values are in the pod's listener (see `proxy::limits`).
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::{
    ebpf::FailMode,
    proxy::{fair::FairConfig, overload::BudgetOrigin, Limits},
};

/// What the agent's flags add up to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    /// Downstream timeouts, sizes and per-source caps (`--request-headers-timeout`,
    /// `--idle-timeout`, `--max-request-headers-*`, `--source-max-*`, `--memory-budget`, ...).
    pub limits: Limits,
    /// Where `limits.memory_budget` came from: the flag, the agent's cgroup, or the default.
    pub memory_budget_origin: BudgetOrigin,
    /// Per-source fairness of the event loop (`--fair-share-*`).
    pub fair_share: FairConfig,
    /// How long connections may run after SIGTERM or a successor's takeover (`--drain-timeout`).
    #[serde(serialize_with = "duration")]
    pub drain_timeout: Duration,
    /// What an enrolled pod's connect does when no proxy listens for it (`--fail-mode`).
    pub fail_mode: FailMode,
    /// Whether pod ↔ proxy bytes bypass TCP through the sk_msg program (`--sk-msg-bypass`).
    pub sk_msg_bypass: bool,
    /// The proxy's tokio worker threads (`--worker-threads` / `MESH_WORKER_THREADS`); None is one
    /// per core, 1 the single-threaded scheduler.
    pub worker_threads: Option<usize>,
    /// The tunables no flag sets.
    pub fixed: Fixed,
}

impl Default for Settings {
    /// The flags' defaults (`mesh agent` with none given, outside any memory-limited cgroup).
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            memory_budget_origin: BudgetOrigin::Default,
            fair_share: FairConfig::default(),
            drain_timeout: Duration::from_secs(30),
            fail_mode: FailMode::Open,
            sk_msg_bypass: false,
            worker_threads: None,
            fixed: FIXED,
        }
    }
}

/// Tunables fixed at build time: each is a trade-off settled by a measurement or a protocol
/// constant, not something an operator should have to pick. Changing one means changing
/// [`FIXED`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Fixed {
    /// Pause before accepting again after `accept()` failed (EMFILE and the like): long enough
    /// not to spin on a full descriptor table, short enough that a freed descriptor is used soon.
    #[serde(serialize_with = "duration")]
    pub accept_error_pause: Duration,
    /// How long a connection to a port that declares no protocol may stay silent before it is
    /// treated as opaque TCP (server-first protocols send nothing); Istio sniffs the same way.
    #[serde(serialize_with = "duration")]
    pub protocol_sniff_timeout: Duration,
    /// Idle pooled HTTP/1 connections kept per upstream endpoint (hyper's
    /// `pool_max_idle_per_host`); a DestinationRule's `idleTimeout: 0s` keeps none.
    pub upstream_max_idle_per_host: usize,
    /// How soon a pod enrollment that failed (its network namespace vanished between discovery
    /// and `setns`, say) is tried again.
    #[serde(serialize_with = "duration")]
    pub enroll_retry: Duration,
    /// How soon a Kubernetes list/watch that failed is started again.
    #[serde(serialize_with = "duration")]
    pub kube_retry: Duration,
    /// Quiet time after a change to the `--config` directory before it is read: a ConfigMap
    /// update swaps several symlinks, and one reload should see all of them.
    #[serde(serialize_with = "duration")]
    pub config_debounce: Duration,
    /// How often the Istio and Gateway API groups are looked up again, so CRDs installed after
    /// the agent started are watched.
    #[serde(serialize_with = "duration")]
    pub crd_rediscover: Duration,
    /// How often the fairness watcher measures the event loop's lag and refills token buckets.
    #[serde(serialize_with = "duration")]
    pub fair_share_tick: Duration,
    /// An HTTP/1 keep-alive connection idle this long gives back hyper's buffers (parked) until
    /// the client sends again: the idle-connection memory target.
    #[serde(serialize_with = "duration")]
    pub park_idle_http1_after: Duration,
    /// How long a hitless-restart handover transfer may stall before the new agent gives up
    /// on it.
    #[serde(serialize_with = "duration")]
    pub handover_io_timeout: Duration,
}

/// The build's fixed tunables.
pub const FIXED: Fixed = Fixed {
    accept_error_pause: Duration::from_millis(50),
    protocol_sniff_timeout: Duration::from_millis(200),
    upstream_max_idle_per_host: 256,
    enroll_retry: Duration::from_millis(250),
    kube_retry: Duration::from_millis(250),
    config_debounce: Duration::from_millis(100),
    crd_rediscover: Duration::from_secs(30),
    fair_share_tick: Duration::from_millis(5),
    park_idle_http1_after: Duration::from_secs(1),
    handover_io_timeout: Duration::from_secs(10),
};

/// Serializes a duration the way the flags take it: `1h`, `5m`, `30s`, `250ms`; a duration
/// no flag could set (sub-millisecond) in exact nanoseconds.
pub fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// The text [`duration`] writes.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    const MS: u128 = 1_000_000;
    const S: u128 = 1000 * MS;
    if nanos == 0 {
        "0s".to_owned()
    } else if nanos.is_multiple_of(3600 * S) {
        format!("{}h", nanos / (3600 * S))
    } else if nanos.is_multiple_of(60 * S) {
        format!("{}m", nanos / (60 * S))
    } else if nanos.is_multiple_of(S) {
        format!("{}s", nanos / S)
    } else if nanos.is_multiple_of(MS) {
        format!("{}ms", nanos / MS)
    } else {
        format!("{nanos}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_in_the_largest_exact_unit_and_parse_back() {
        for (d, text) in [
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(2), "2ms"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(crate::drain::parse_duration(text), Ok(d), "{text} parses back");
        }
        assert_eq!(format_duration(Duration::from_micros(1500)), "1500000ns");
    }
}
