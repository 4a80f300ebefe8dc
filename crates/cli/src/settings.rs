//! Resolving raw arguments into what commands need: a validated plan, an
//! open store, the service a command is about.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cutover_core::plan::{self, AwsConfig, Plan, StoreConfig};
use cutover_engine::store::{RolloutRecord, SqliteStore, Store};

use crate::cli::TargetArgs;
use crate::Exit;

/// Reads and validates a plan file; every failure is a usage error naming the file.
pub fn load_plan(path: &Path) -> Result<Plan, Exit> {
    let bytes = std::fs::read(path)
        .map_err(|e| Exit::Usage(format!("cannot read plan file {}: {e}", path.display())))?;
    let plan = plan::parse_bytes(&bytes, &path.display().to_string())
        .map_err(|e| Exit::Usage(e.to_string()))?;
    // What only the file system can tell, kept out of the (pure) parser.
    if let StoreConfig::Sqlite { path: Some(store) } = &plan.store {
        if store.is_dir() {
            return Err(Exit::Usage(format!(
                "{}: store `sqlite`: `path` {} is a directory; give a file in it, e.g. {}",
                path.display(),
                store.display(),
                store.join("cutover.db").display()
            )));
        }
    }
    Ok(plan)
}

/// Which store to open.
#[derive(Clone, Debug)]
pub enum StoreChoice {
    Sqlite(PathBuf),
    Dynamodb { table: String, aws: AwsConfig },
}

impl std::fmt::Display for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Sqlite(p) => write!(f, "{}", p.display()),
            StoreChoice::Dynamodb { table, .. } => write!(f, "dynamodb table {table}"),
        }
    }
}

/// `--store` (a SQLite file), else the plan's `[store]`, else the SQLite
/// file in the XDG state directory.
pub fn store_choice(flag: Option<&Path>, plan: Option<&Plan>) -> Result<StoreChoice, Exit> {
    if let Some(p) = flag {
        return Ok(StoreChoice::Sqlite(p.to_path_buf()));
    }
    match plan {
        Some(Plan {
            store: StoreConfig::Sqlite { path: Some(p) },
            ..
        }) => return Ok(StoreChoice::Sqlite(p.clone())),
        Some(Plan {
            store: StoreConfig::Dynamodb { table },
            aws,
            ..
        }) => {
            return Ok(StoreChoice::Dynamodb {
                table: table.clone(),
                aws: aws.clone(),
            })
        }
        _ => {}
    }
    SqliteStore::default_path().map(StoreChoice::Sqlite).ok_or_else(|| {
        Exit::Usage("no store path: set --store, `[store] path` in the plan, or $XDG_STATE_HOME / $HOME".into())
    })
}

pub fn open_sqlite(path: &Path) -> Result<Arc<SqliteStore>, Exit> {
    SqliteStore::open(path)
        .map(Arc::new)
        .map_err(|e| Exit::Internal(e.to_string()))
}

pub async fn open_store(choice: &StoreChoice) -> Result<Arc<dyn Store>, Exit> {
    match choice {
        StoreChoice::Sqlite(path) => Ok(open_sqlite(path)?),
        StoreChoice::Dynamodb { table, aws } => {
            let sdk = cutover_aws::config::load(aws).await;
            Ok(Arc::new(cutover_aws::dynamodb::DynamoStore::new(
                &sdk, table,
            )))
        }
    }
}

/// Whether a command only reads the store or writes to it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Opens SQLite read-only: works on a read-only file or mount.
    Read,
    Write,
}

/// The service and store a command is about: `target` is a plan file if
/// such a file exists, otherwise a service name.
pub async fn resolve_target(
    args: &TargetArgs,
    access: Access,
) -> Result<(String, Arc<dyn Store>), Exit> {
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
    let choice = store_choice(args.store.as_deref(), plan.as_ref())?;
    if let StoreChoice::Sqlite(path) = &choice {
        if !path.exists() {
            return Err(Exit::Usage(format!(
                "no store at {}: nothing has run there yet (use --store to point at another)",
                path.display()
            )));
        }
        if access == Access::Read {
            let store =
                SqliteStore::open_read_only(path).map_err(|e| Exit::Internal(e.to_string()))?;
            return Ok((service, Arc::new(store)));
        }
    }
    Ok((service, open_store(&choice).await?))
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
