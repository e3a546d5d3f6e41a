//! Hot reload: watch the config file's directory (a Kubernetes Secret mount swaps a `..data`
//! symlink, which only a directory watch sees), poll as a backstop, and swap the runtime whole.
//! A config that does not compile is refused, audited and logged; the old one stays in force.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::{
    audit::Event,
    runtime,
    state::{RefusedConfig, Shared},
};

/// How often the file is re-read even without a notification.
const POLL: Duration = Duration::from_secs(5);

/// Resolves `--config`: a file, or a directory holding `config.yaml` (a mounted Secret).
pub fn config_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("config.yaml")
    } else {
        path.to_owned()
    }
}

/// The directory relative config paths are resolved against: the config file's own.
pub fn config_base(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

pub fn spawn(shared: Arc<Shared>, path: PathBuf) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // An error may have hidden a change: reload to be sure.
        if res.as_ref().map_or(true, changes) {
            let _ = tx.try_send(());
        }
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut last_rejected = String::new();
        let mut shutdown = shared.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = rx.recv() => tokio::time::sleep(Duration::from_millis(150)).await,
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
            reload(&shared, &path, &mut last_rejected).await;
        }
    });
    Ok(())
}

/// Whether an event in the config's directory may have changed what is on disk. Opening,
/// reading or closing a file unwritten does not: reacting to those, a reload (which reads the
/// config and the files it names, all in that directory) set off the next one, 150 ms later,
/// for ever.
fn changes(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Refuses a reload that changes what only a restart applies: the audit sinks and signing key
/// belong to the writer started with the process, so accepting them would ignore them.
fn restart_only(
    current: &runtime::Runtime,
    new: runtime::Runtime,
) -> Result<runtime::Runtime, Vec<portcullis_config::ConfigError>> {
    let key_id = |rt: &runtime::Runtime| rt.audit_signer.as_ref().map(|s| s.key_id.clone());
    if new.config.audit.sinks() != current.config.audit.sinks() || key_id(&new) != key_id(current) {
        return Err(vec![portcullis_config::ConfigError::new(
            "audit",
            "the audit settings but dataOps (sinks, signing key, checkpoints, fsync, rotation, \
             spool) change only at a restart (the operator rolls the pods); the running \
             gateway keeps its own",
        )]);
    }
    Ok(new)
}

/// Re-reads the config; swaps it in if it changed and compiles. Returns whether it swapped.
pub async fn reload(shared: &Shared, path: &Path, last_rejected: &mut String) -> bool {
    let Ok(text) = tokio::fs::read_to_string(path).await else {
        // Mid-swap or briefly missing; the next event or poll will see the new file.
        return false;
    };
    let current = shared.runtime.load_full();
    let base = config_base(path);
    let hash = runtime::hash_on_disk(&text, &base);
    if hash == current.hash {
        // Back to the config in force: nothing on disk is refused any more.
        *shared.refused.lock().expect("not poisoned") = None;
        last_rejected.clear();
        return false;
    }
    if hash == *last_rejected {
        return false;
    }
    let slice = current.passive_slice;
    let compiled = tokio::task::spawn_blocking(move || runtime::compile(&text, &base, slice))
        .await
        .map(|r| r.and_then(|rt| restart_only(&current, rt)));
    match compiled {
        Ok(Ok(rt)) => {
            if rt.config.listeners != current.config.listeners {
                tracing::warn!("listener changes take effect at the next restart");
            }
            let event = Event::ConfigReloaded {
                config_hash: rt.hash.clone(),
                previous_hash: current.hash.clone(),
                algorithms: rt.algorithms.clone(),
                certificates: rt.certificate_info(),
                plaintext_endpoints: rt.plaintext_endpoints(),
            };
            shared.install(rt);
            shared
                .metrics
                .config_reloads
                .get_or_create(&vec![("result", "ok".to_owned())])
                .inc();
            tracing::info!(config_hash = %hash, "config reloaded");
            shared.audit.emit(event).await;
            last_rejected.clear();
            true
        }
        Ok(Err(errors)) => {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            tracing::error!(?errors, "new config refused; the old one stays in force");
            shared
                .metrics
                .config_reloads
                .get_or_create(&vec![("result", "rejected".to_owned())])
                .inc();
            *shared.refused.lock().expect("not poisoned") = Some(RefusedConfig {
                config_hash: hash.clone(),
                errors: errors.clone(),
            });
            shared
                .audit
                .emit(Event::ConfigRejected {
                    kept_hash: current.hash.clone(),
                    errors,
                })
                .await;
            *last_rejected = hash;
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "config compile task failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use notify::Watcher;

    use super::changes;

    /// The real watcher on a real directory: reading the config (as every reload does) is no
    /// change; writing it is.
    #[test]
    fn reading_the_config_is_not_a_change_writing_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "a: 1\n").unwrap();
        let (tx, rx) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(e) = res
                && changes(&e)
            {
                let _ = tx.send(e.kind);
            }
        })
        .unwrap();
        watcher
            .watch(dir.path(), notify::RecursiveMode::NonRecursive)
            .unwrap();
        for _ in 0..3 {
            assert_eq!(std::fs::read_to_string(&file).unwrap(), "a: 1\n");
        }
        let seen = rx.recv_timeout(Duration::from_millis(500));
        assert!(seen.is_err(), "a read was taken for a change: {seen:?}");
        std::fs::write(&file, "a: 2\n").unwrap();
        let kind = rx.recv_timeout(Duration::from_secs(5));
        assert!(kind.is_ok(), "a write was not seen");
    }
}
