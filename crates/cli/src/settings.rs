//! Resolving raw arguments into what commands need: a validated plan, an
//! open store, the service a command is about.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cutover_core::plan::{self, Plan, StoreConfig};
use cutover_engine::store::{RolloutRecord, SqliteStore, Store};

use crate::cli::TargetArgs;
use crate::Exit;

/// Reads and validates a plan file; every failure is a usage error naming the file.
pub fn load_plan(path: &Path) -> Result<Plan, Exit> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Exit::Usage(format!("cannot read plan file {}: {e}", path.display())))?;
    plan::parse(&text, &path.display().to_string()).map_err(|e| Exit::Usage(e.to_string()))
}

/// `--store`, else the plan's `[store] path`, else the XDG state directory.
pub fn store_path(flag: Option<&Path>, plan: Option<&Plan>) -> Result<PathBuf, Exit> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(Plan {
        store: StoreConfig::Sqlite { path: Some(p) },
        ..
    }) = plan
    {
        return Ok(p.clone());
    }
    SqliteStore::default_path().ok_or_else(|| {
        Exit::Usage(
            "no store path: set --store, `[store] path` in the plan, or $XDG_STATE_HOME / $HOME"
                .into(),
        )
    })
}

pub fn open_store(path: &Path) -> Result<Arc<SqliteStore>, Exit> {
    SqliteStore::open(path)
        .map(Arc::new)
        .map_err(|e| Exit::Internal(e.to_string()))
}

/// The service and store a command is about: `target` is a plan file if
/// such a file exists, otherwise a service name.
pub fn resolve_target(args: &TargetArgs) -> Result<(String, Arc<SqliteStore>), Exit> {
    let as_path = Path::new(&args.target);
    let (service, plan) = if as_path.is_file() {
        let plan = load_plan(as_path)?;
        (plan.service.clone(), Some(plan))
    } else if args.target.ends_with(".toml") {
        return Err(Exit::Usage(format!(
            "plan file {} does not exist",
            args.target
        )));
    } else {
        (args.target.clone(), None)
    };
    let path = store_path(args.store.as_deref(), plan.as_ref())?;
    if !path.exists() {
        return Err(Exit::Usage(format!(
            "no store at {}: nothing has run there yet (use --store to point at another)",
            path.display()
        )));
    }
    Ok((service, open_store(&path)?))
}

/// The service's most recent rollout, if any.
pub async fn latest(store: &dyn Store, service: &str) -> Result<Option<RolloutRecord>, Exit> {
    let mut list = store
        .list_for_service(service, 1)
        .await
        .map_err(|e| Exit::Internal(e.to_string()))?;
    Ok(list.pop())
}

/// Names this process in leases.
pub fn holder() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}
