//! Watches a routing config directory (a mounted ConfigMap) and delivers each new version.
//!
//! The kubelet updates a ConfigMap volume by writing a new timestamped directory and atomically
//! renaming the `..data` symlink onto it; users editing files by hand write or rename files in
//! place. Both show up as inotify events on the directory. Events are debounced (a ConfigMap
//! update is several events) and then the whole directory is read again, so a half-written
//! state is never delivered: each delivery is the whole directory, bad documents included as
//! rejects (the agent admits it object by object).
use std::{path::PathBuf, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Config, ConfigErrors};

const DEBOUNCE: Duration = crate::settings::FIXED.config_debounce;

/// One delivery: the whole directory as [`Config::load_dir_all`] read it (bad documents in
/// `rejected`), or why the directory could not be read.
pub type Update = Result<Config, ConfigErrors>;

/// Watches `dir` (not its subdirectories) and, after each burst of changes settles (100 ms with no
/// event), sends the whole directory read again; nothing is sent before the first change.
///
/// Err when `dir` cannot be watched. The task ends when the receiver is dropped. Call within a
/// Tokio runtime.
pub fn spawn_watcher(dir: PathBuf) -> anyhow::Result<mpsc::Receiver<Update>> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
        _ => {
            let _ = raw_tx.send(());
        }
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| anyhow::anyhow!("cannot watch routing config directory {}: {e}", dir.display()))?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        // The watcher lives as long as this task: dropping it would stop the events.
        let _watcher = watcher;
        while raw_rx.recv().await.is_some() {
            // Coalesce the burst of events one update makes.
            loop {
                match tokio::time::timeout(DEBOUNCE, raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let dir = dir.clone();
            let update = tokio::task::spawn_blocking(move || Config::load_dir_all(&dir))
                .await
                .unwrap_or_else(|e| Err(ConfigErrors::single("config watcher", format!("reload task failed: {e}"))));
            if tx.send(update).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
