//! Per-object admission of routing config, as the API server admits objects one by one.
//!
//! The routing ConfigMap is shared by every node, so whatever one bad object does to one agent it
//! does to all of them at once. Here a reload never fails as a whole: each document
//! (kind/namespace/name) is accepted or rejected on its own; a rejected object keeps its last
//! good version live (if it had one), and every other object's change in the same reload is
//! applied. A panic while compiling is caught and treated as a rejection of that reload, so a bug
//! in the compiler cannot take the node's proxy down.
use std::{
    collections::{BTreeMap, HashSet},
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
};

use crate::{
    config::{Config, ConfigError, ObjectKey, Rejected},
    registry::Registry,
    routing::RouteTable,
};

/// What happened to one rejected object in a reload.
#[derive(Clone, Debug)]
pub struct RejectedObject {
    /// None: a whole file could not be read as YAML.
    pub object: Option<ObjectKey>,
    /// The file it came from.
    pub file: Arc<str>,
    /// Why it was rejected.
    pub errors: Vec<ConfigError>,
    /// Its last good version is still live.
    pub kept_previous: bool,
}

/// The result of admitting one candidate config.
pub struct Admitted {
    /// The objects now live: the candidate, with rejected objects replaced by their last good version or left out.
    pub config: Config,
    /// The route table compiled from `config`, to be swapped in.
    pub table: RouteTable,
    /// Every object (or unreadable file) rejected in this reload.
    pub rejected: Vec<RejectedObject>,
}

/// The compiler panicked: nothing of this reload was applied.
#[derive(Debug)]
pub struct CompilePanic(pub String);

/// The objects last admitted; a rejected object falls back to its version here.
#[derive(Default)]
pub struct Admission {
    last_good: Config,
}

impl Admission {
    /// The objects live now.
    pub fn live(&self) -> &Config {
        &self.last_good
    }

    /// Admits `candidate` object by object against `registry`. On success the admitted config
    /// becomes the new last good one.
    pub fn admit(&mut self, mut candidate: Config, registry: &Registry) -> Result<Admitted, CompilePanic> {
        let mut report = Vec::new();
        let parse_rejects = std::mem::take(&mut candidate.rejected);
        // Files that could not be split into documents: keep everything they held last time.
        let unreadable: HashSet<&str> = parse_rejects.iter().filter(|r| r.object.is_none()).map(|r| &*r.file).collect();
        for r in &parse_rejects {
            let kept = match &r.object {
                Some(key) => !candidate.has(key) && candidate.take_from(&self.last_good, key),
                None => false,
            };
            report.push(RejectedObject {
                object: r.object.clone(),
                file: r.file.clone(),
                errors: r.errors.clone(),
                kept_previous: kept,
            });
        }
        let from_unreadable: Vec<ObjectKey> = self
            .last_good
            .objects()
            .filter(|(key, file)| unreadable.contains(&***file) && !candidate.has(key))
            .map(|(key, _)| key)
            .collect();
        for key in &from_unreadable {
            candidate.take_from(&self.last_good, key);
        }
        if !from_unreadable.is_empty() {
            for r in report.iter_mut().filter(|r| r.object.is_none()) {
                r.kept_previous = true;
            }
        }

        // Semantic errors: leave the object out, fall back to its last good version, compile
        // again. The last good version compiled before and its checks do not depend on other
        // objects, so this settles in two rounds; the bound is for safety.
        let mut fell_back: BTreeMap<ObjectKey, usize> = BTreeMap::new();
        for _round in 0..4 {
            let (table, rejects) = compile_guarded(&candidate, registry)?;
            if rejects.is_empty() {
                let admitted = Admitted { config: candidate.clone(), table, rejected: report };
                self.last_good = candidate;
                return Ok(admitted);
            }
            for Rejected { object, file, errors } in rejects {
                let Some(key) = object else {
                    // Not attributable to an object: nothing can be left out, so the reload fails.
                    return Err(CompilePanic(format!("{file}: unattributed errors: {errors:?}")));
                };
                let tries = fell_back.entry(key.clone()).or_default();
                *tries += 1;
                let kept = *tries == 1 && candidate.take_from(&self.last_good, &key);
                if !kept {
                    candidate.remove(&key);
                }
                report.push(RejectedObject { object: Some(key), file, errors, kept_previous: kept });
            }
        }
        Err(CompilePanic("admission did not settle after 4 rounds".into()))
    }
}

/// Compiles, turning a panic into an error: the proxy keeps its current table.
fn compile_guarded(config: &Config, registry: &Registry) -> Result<(RouteTable, Vec<Rejected>), CompilePanic> {
    guarded(|| RouteTable::compile_admitting(config, registry))
}

fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, CompilePanic> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        CompilePanic(msg)
    })
}

#[cfg(test)]
mod tests;
