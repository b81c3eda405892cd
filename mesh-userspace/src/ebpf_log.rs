//! Forwards the kernel programs' aya-log records into the agent's `tracing` output.
//!
//! Every record becomes one event under target [`TARGET`] at the record's level, with the pod
//! named: the kernel only knows the cgroup id (connect4) or the netns cookie (sock_ops) and ends
//! its messages with `cgroup=<id>` / `netns=<cookie>`; that word becomes the event's `pod` field
//! (`<namespace>/<name>` of the workload the agent enrolled under the id), or stays in the
//! message when the id is unknown.
//!
//! Whether the kernel logs at all is a level in the `MESH_LOG_LEVEL` map, written from the
//! `tracing` filter ([`level_from_tracing`]), so `RUST_LOG=mesh::ebpf=debug` turns the events on
//! with the same compiled programs; by default it is 0 and the kernel side costs one array
//! lookup and a branch per event site.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use mesh_common::log_level;

/// `tracing` target of the forwarded kernel events.
pub const TARGET: &str = "mesh::ebpf";

/// Names of enrolled pods by the ids the kernel programs can see.
#[derive(Debug, Default)]
pub struct PodNames {
    by_cgroup: HashMap<u64, String>,
    by_netns: HashMap<u64, String>,
}

impl PodNames {
    /// Records an enrolled pod under both of its kernel ids.
    pub fn insert(&mut self, cgroup_id: u64, netns_cookie: u64, name: String) {
        self.by_cgroup.insert(cgroup_id, name.clone());
        self.by_netns.insert(netns_cookie, name);
    }

    /// Forgets an unenrolled pod (both ids).
    pub fn remove(&mut self, cgroup_id: u64) {
        if let Some(name) = self.by_cgroup.remove(&cgroup_id) {
            self.by_netns.retain(|_, n| *n != name);
        }
    }

    /// Takes the `cgroup=`/`netns=` words of a kernel message whose id is a known pod out of the
    /// message. Returns the rest of the message and the pod, if one was found.
    pub fn render(&self, msg: &str) -> (String, Option<String>) {
        let mut pod = None;
        let words: Vec<&str> = msg
            .split(' ')
            .filter(|word| {
                let found = if let Some(id) = word.strip_prefix("cgroup=") {
                    id.parse().ok().and_then(|id: u64| self.by_cgroup.get(&id))
                } else if let Some(id) = word.strip_prefix("netns=") {
                    id.parse().ok().and_then(|id: u64| self.by_netns.get(&id))
                } else {
                    None
                };
                match found {
                    Some(name) => {
                        pod = Some(name.clone());
                        false
                    }
                    None => true,
                }
            })
            .collect();
        (words.join(" "), pod)
    }
}

/// The kernel log level that makes the kernel emit exactly what the `tracing` filter would keep
/// for [`TARGET`].
pub fn level_from_tracing() -> u32 {
    if tracing::enabled!(target: "mesh::ebpf", tracing::Level::TRACE) {
        log_level::TRACE
    } else if tracing::enabled!(target: "mesh::ebpf", tracing::Level::DEBUG) {
        log_level::DEBUG
    } else if tracing::enabled!(target: "mesh::ebpf", tracing::Level::INFO) {
        log_level::INFO
    } else if tracing::enabled!(target: "mesh::ebpf", tracing::Level::WARN) {
        log_level::WARN
    } else if tracing::enabled!(target: "mesh::ebpf", tracing::Level::ERROR) {
        log_level::ERROR
    } else {
        log_level::OFF
    }
}

/// The `log::Log` aya-log hands decoded records to.
pub struct Forwarder {
    /// The enrolled pods' names, shared with [`crate::ebpf::MeshEbpf`], which updates them on (un)enrollment.
    pub names: Arc<Mutex<PodNames>>,
}

impl log::Log for Forwarder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        // The kernel already filtered by level; whatever it sent is wanted.
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args().to_string();
        let (msg, pod) = self.names.lock().unwrap_or_else(|e| e.into_inner()).render(&msg);
        // An unknown id stays in the message; the field is then empty.
        let pod = pod.unwrap_or_default();
        // tracing needs the level at compile time per call site.
        match record.level() {
            log::Level::Error => tracing::error!(target: "mesh::ebpf", %pod, "{msg}"),
            log::Level::Warn => tracing::warn!(target: "mesh::ebpf", %pod, "{msg}"),
            log::Level::Info => tracing::info!(target: "mesh::ebpf", %pod, "{msg}"),
            log::Level::Debug => tracing::debug!(target: "mesh::ebpf", %pod, "{msg}"),
            log::Level::Trace => tracing::trace!(target: "mesh::ebpf", %pod, "{msg}"),
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids_become_pod_names_and_unknown_ones_stay() {
        let mut names = PodNames::default();
        names.insert(42, 7, "default/client".into());
        let (msg, pod) = names.render("connect not redirected: no service entry for 10.96.0.99:8080 cgroup=42");
        assert_eq!(msg, "connect not redirected: no service entry for 10.96.0.99:8080");
        assert_eq!(pod.as_deref(), Some("default/client"));

        let (msg, pod) = names.render("no original-destination record for connection netns=7");
        assert_eq!(msg, "no original-destination record for connection");
        assert_eq!(pod.as_deref(), Some("default/client"));

        let (msg, pod) = names.render("connect redirected cgroup=43 netns=x");
        assert_eq!(msg, "connect redirected cgroup=43 netns=x");
        assert_eq!(pod, None);

        names.remove(42);
        let (msg, pod) = names.render("x cgroup=42 netns=7");
        assert_eq!(msg, "x cgroup=42 netns=7");
        assert_eq!(pod, None);
    }

    #[test]
    fn kernel_level_follows_the_tracing_filter() {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,mesh::ebpf=debug"))
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || assert_eq!(level_from_tracing(), log_level::DEBUG));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || assert_eq!(level_from_tracing(), log_level::INFO));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("mesh::ebpf=off"))
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || assert_eq!(level_from_tracing(), log_level::OFF));
    }
}
