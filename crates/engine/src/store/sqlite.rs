//! The SQLite store: one file, shared safely by several processes (the CLI's
//! `cutover abort` posts a command while `cutover run` drives the rollout).
//!
//! Every write that could race is a single conditional statement, or a
//! `BEGIN IMMEDIATE` transaction when a failure must be explained by a read
//! of the same snapshot:
//! - one active rollout per service: a partial unique index on
//!   `rollouts(service) WHERE active = 1`;
//! - trigger claims: `INSERT ... ON CONFLICT DO NOTHING`, won iff a row was
//!   inserted;
//! - leases: one `INSERT ... ON CONFLICT DO UPDATE ... WHERE` upsert;
//! - updates: `UPDATE ... WHERE id = ? AND version = ?`.
//!
//! The database uses SQLite's rollback journal (`journal_mode=DELETE`)
//! with a busy timeout, so writers from other processes wait for each
//! other instead of failing, and with `synchronous=FULL`: every commit is
//! fsynced before it returns, so a snapshot the engine acts on survives a
//! power loss, which "intent is persisted before it is acted on" needs.
//! Nothing is memory-mapped (`mmap_size=0`, and no WAL index): WAL mode
//! maps its `-shm` file, and a mapped file cut or made unreadable under
//! the process kills it with SIGBUS at its next store call, with no
//! message and no fail-safe; a checked length before each call cannot
//! close that race, since another process may cut the file during the
//! call. With plain reads, a file cut under the process is an I/O error
//! the driver handles like any other store failure. The blocking SQLite
//! calls run on tokio's blocking pool, one at a time per `SqliteStore`.
//!
//! Before every call the store checks that the path still names the file
//! it opened (device and inode): a database deleted or replaced under a
//! running driver would otherwise take its writes silently, where no
//! other process can see them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{Command, Timestamp};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior};

use super::{Change, EventRecord, Lease, PostedCommand, RolloutRecord, Store, StoreError};

/// The schema version this build creates and understands (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS rollouts (
    id          TEXT PRIMARY KEY NOT NULL,
    service     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    active      INTEGER NOT NULL CHECK (active IN (0, 1)),
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_one_active_per_service
    ON rollouts (service) WHERE active = 1;
CREATE INDEX IF NOT EXISTS rollouts_by_service ON rollouts (service, created_at);
CREATE TABLE IF NOT EXISTS triggers (
    key         TEXT PRIMARY KEY NOT NULL,
    owner       TEXT NOT NULL,
    claimed_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name        TEXT PRIMARY KEY NOT NULL,
    holder      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id  TEXT NOT NULL,
    command     TEXT NOT NULL,
    posted_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_by_rollout ON commands (rollout_id, seq);
";

/// Version 2: the append-only event log, and who wrote each version.
const SCHEMA_V2: &str = "
ALTER TABLE rollouts ADD COLUMN written_by TEXT NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS events (
    rollout_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (rollout_id, seq)
) WITHOUT ROWID;
";

const ROLLOUT_COLUMNS: &str =
    "id, service, version, active, state, created_at, updated_at, written_by";

/// SQLite's journal, for [`SqliteStore::open_with_journal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Journal {
    /// `journal_mode=DELETE`, `synchronous=FULL`: what cutover runs.
    Rollback,
    /// `journal_mode=WAL`, `synchronous=FULL`: durable too, but maps its
    /// `-shm` file (a SIGBUS if it is cut under the process).
    Wal,
    /// `journal_mode=WAL`, `synchronous=NORMAL`: a commit may be lost on
    /// power failure after it returned, which breaks "persisted before
    /// acted on".
    WalNormal,
}

/// A [`Store`] in one SQLite file.
///
/// Cheap to clone; clones share one connection. Open the same file again
/// (here or in another process) for an independent connection.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Commits waiting for the group writer (see [`SqliteStore::commit`]).
    queue: Arc<Mutex<CommitQueue>>,
    path: Arc<PathBuf>,
    /// The opened file's identity, checked before every call.
    identity: Option<FileId>,
    read_only: bool,
}

/// Device and inode of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

fn file_id(path: &Path) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, and its parent
    /// directories. Sets the rollback journal, no memory mapping, a 5 s
    /// busy timeout and `synchronous=FULL`, and creates or checks the
    /// schema. A database left in WAL mode by an earlier cutover is
    /// switched back, which needs no other process to have it open.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with_journal(path, Journal::Rollback)
    }

    /// [`SqliteStore::open`] with the journal mode given. Only
    /// [`Journal::Rollback`] is what cutover runs; [`Journal::Wal`] is
    /// here to measure what it would change (`cargo run --release -p
    /// cutover-engine --example sqlite_journal`).
    pub fn open_with_journal(path: &Path, journal: Journal) -> Result<SqliteStore, StoreError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Backend(format!("sqlite database {}: {what}: {e}", path.display()))
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(&format!("cannot create directory {}", parent.display()), &e))?;
        }
        let mut conn = Connection::open(path).map_err(|e| fail("cannot open", &e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| fail("cannot set busy_timeout", &e))?;
        conn.pragma_update(None, "mmap_size", 0)
            .map_err(|e| fail("cannot set mmap_size=0", &e))?;
        let (want, synchronous) = match journal {
            Journal::Rollback => ("delete", "FULL"),
            Journal::Wal => ("wal", "FULL"),
            Journal::WalNormal => ("wal", "NORMAL"),
        };
        let mode: String = conn
            .query_row(&format!("PRAGMA journal_mode = {want}"), [], |row| {
                row.get(0)
            })
            .map_err(|e| fail("cannot switch to the rollback journal", &e))?;
        if !mode.eq_ignore_ascii_case(want) {
            return Err(fail(
                "cannot switch to the rollback journal",
                &format!(
                    "journal mode is still `{mode}` (another process may have the file open in that mode)"
                ),
            ));
        }
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(|e| fail("cannot set synchronous", &e))?;
        migrate(&mut conn).map_err(|e| match e {
            MigrateError::Sql(e) => fail("cannot create the schema", &e),
            MigrateError::TooNew(v) => fail(
                "unsupported schema",
                &format!(
                    "schema version {v} was written by a newer cutover (this one knows up to {SCHEMA_VERSION}); upgrade cutover"
                ),
            ),
        })?;
        let identity = file_id(path).map_err(|e| fail("cannot stat", &e))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            queue: Arc::default(),
            path: Arc::new(path.to_path_buf()),
            identity: Some(identity),
            read_only: false,
        })
    }

    /// Opens an existing database for reading only: for `status` and
    /// `history` where the file (or its directory) is read-only, e.g. a
    /// read-only mount. Writes fail with an error saying so. Falls back to
    /// SQLite's `immutable` mode when the file cannot be locked (a
    /// read-only mount), which is only right while nobody writes the file.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        use rusqlite::OpenFlags;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Backend(format!("sqlite database {}: {what}: {e}", path.display()))
        };
        let identity = file_id(path).map_err(|e| fail("cannot open", &e))?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let uri = |extra: &str| {
            format!(
                "file:{}?mode=ro{extra}",
                path.display()
                    .to_string()
                    .replace('%', "%25")
                    .replace('?', "%3f")
                    .replace('#', "%23")
            )
        };
        let try_open = |extra: &str| -> rusqlite::Result<Connection> {
            let conn = Connection::open_with_flags(uri(extra), flags)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            if version > SCHEMA_VERSION {
                return Err(rusqlite::Error::InvalidParameterName(format!(
                    "schema version {version} was written by a newer cutover (this one knows up to {SCHEMA_VERSION}); upgrade cutover"
                )));
            }
            if version < 1 {
                return Err(rusqlite::Error::InvalidParameterName(
                    "not a cutover store (no schema)".into(),
                ));
            }
            Ok(conn)
        };
        let conn = try_open("")
            .or_else(|_| try_open("&immutable=1"))
            .map_err(|e| fail("cannot open read-only", &e))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            queue: Arc::default(),
            path: Arc::new(path.to_path_buf()),
            identity: Some(identity),
            read_only: true,
        })
    }

    /// The connection's `PRAGMA synchronous` (2 is FULL).
    pub async fn pragma_synchronous(&self) -> Result<i64, StoreError> {
        self.with_conn("read pragma", |conn| {
            Ok(conn.query_row("PRAGMA synchronous", [], |row| row.get(0))?)
        })
        .await
    }

    /// Whether this handle was opened with [`SqliteStore::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Where the CLI keeps its database: `$XDG_STATE_HOME/cutover/cutover.db`,
    /// else `$HOME/.local/state/cutover/cutover.db`. `None` if neither
    /// variable is set to an absolute path.
    pub fn default_path() -> Option<PathBuf> {
        default_path_from(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
    }

    /// The file this store was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on tokio's blocking pool.
    async fn with_conn<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let path = Arc::clone(&self.path);
        let identity = self.identity;
        let fail = move |e: &dyn std::fmt::Display| {
            StoreError::Backend(format!("sqlite database {}: {op}: {e}", path.display()))
        };
        let fail2 = fail.clone();
        let path = Arc::clone(&self.path);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| fail(&"connection unusable after a panic in an earlier call"))?;
            check_identity(&path, identity).map_err(|e| fail(&e))?;
            f(&mut conn).map_err(|e| match e {
                Failure::Store(e) => e,
                Failure::Sql(e) => fail(&e),
                Failure::Data(msg) => fail(&msg),
            })
        })
        .await
        .map_err(|e| fail2(&e))?
    }
}

/// A commit waiting for the group writer, and where its answer goes.
struct QueuedCommit {
    id: String,
    expected_version: u64,
    state: String,
    active: bool,
    now: Timestamp,
    writer: String,
    events: Vec<EventRecord>,
    reply: tokio::sync::oneshot::Sender<Result<RolloutRecord, StoreError>>,
}

#[derive(Default)]
struct CommitQueue {
    waiting: Vec<QueuedCommit>,
    /// A writer is running: it takes what waits before it stops.
    writing: bool,
}

impl std::fmt::Debug for CommitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitQueue")
            .field("waiting", &self.waiting.len())
            .field("writing", &self.writing)
            .finish()
    }
}

/// Clears `writing` however the writer ends (a panic included), failing
/// what still waits, so a later commit starts a new writer.
struct WriterDone<'a>(&'a Mutex<CommitQueue>);

impl Drop for WriterDone<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
            q.writing = false;
            q.waiting.clear(); // their callers get "the writer stopped"
        }
    }
}

/// The group writer: writes what waits, one transaction per batch, until
/// nothing does.
fn write_commits(
    conn: &Mutex<Connection>,
    queue: &Mutex<CommitQueue>,
    path: &Path,
    identity: Option<FileId>,
) {
    let _done = WriterDone(queue);
    loop {
        let batch = {
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.waiting.is_empty() {
                q.writing = false;
                return;
            }
            std::mem::take(&mut q.waiting)
        };
        let fail = |e: &dyn std::fmt::Display| {
            StoreError::Backend(format!(
                "sqlite database {}: update rollout: {e}",
                path.display()
            ))
        };
        let to_store = |e: Failure| match e {
            Failure::Store(e) => e,
            Failure::Sql(e) => fail(&e),
            Failure::Data(msg) => fail(&msg),
        };
        let results: Result<Vec<Result<RolloutRecord, StoreError>>, StoreError> = (|| {
            let mut conn = conn
                .lock()
                .map_err(|_| fail(&"connection unusable after a panic in an earlier call"))?;
            check_identity(path, identity).map_err(|e| fail(&e))?;
            let mut tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| fail(&e))?;
            let mut results = Vec::with_capacity(batch.len());
            for c in &batch {
                let mut sp = tx.savepoint().map_err(|e| fail(&e))?;
                match commit_one(&sp, c) {
                    Ok(record) => {
                        sp.commit().map_err(|e| fail(&e))?;
                        results.push(Ok(record));
                    }
                    Err(e) => {
                        sp.rollback().map_err(|e| fail(&e))?;
                        drop(sp);
                        results.push(Err(to_store(e)));
                    }
                }
            }
            tx.commit().map_err(|e| fail(&e))?;
            Ok(results)
        })();
        match results {
            Ok(results) => {
                for (c, r) in batch.into_iter().zip(results) {
                    let _ = c.reply.send(r);
                }
            }
            // Nothing of the batch was written.
            Err(e) => {
                for c in batch {
                    let _ = c.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The path still names the file that was opened.
fn check_identity(path: &Path, identity: Option<FileId>) -> Result<(), String> {
    let Some(opened) = identity else {
        return Ok(());
    };
    match file_id(path) {
        Ok(now) if now == opened => Ok(()),
        Ok(_) => Err("the file was replaced by another one since it was opened; refusing to use a database no other process sees".into()),
        Err(e) => Err(format!("the file is gone since it was opened ({e}); refusing to use a database no other process sees")),
    }
}

/// One commit, inside the group writer's transaction.
fn commit_one(tx: &Connection, c: &QueuedCommit) -> Result<RolloutRecord, Failure> {
    let at = to_sql(c.now.as_millis(), "timestamp")?;
    let sql = format!(
        "UPDATE rollouts SET version = version + 1, state = ?3, active = ?4, updated_at = ?5,
                written_by = ?6
         WHERE id = ?1 AND version = ?2 RETURNING {ROLLOUT_COLUMNS}"
    );
    // A version beyond i64 cannot be stored, so it cannot match.
    let expected = i64::try_from(c.expected_version).unwrap_or(-1);
    let updated = query_rollouts(
        tx,
        &sql,
        params![c.id, expected, c.state, c.active, at, c.writer],
    );
    match updated {
        Ok(mut rows) => match rows.pop() {
            Some(record) => {
                append_events(tx, &record.id, &c.events)?;
                Ok(record)
            }
            None => {
                let found: Option<i64> = tx
                    .query_row(
                        "SELECT version FROM rollouts WHERE id = ?1",
                        [&c.id],
                        |row| row.get(0),
                    )
                    .optional()?;
                let found = match found {
                    Some(v) => Some(from_sql(v, "version", &format!("rollouts row `{}`", c.id))?),
                    None => None,
                };
                Err(StoreError::Conflict {
                    id: c.id.clone(),
                    expected: c.expected_version,
                    found,
                }
                .into())
            }
        },
        Err(Failure::Sql(e)) if constraint(&e) == Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE) => {
            // Re-activating while another rollout of the service is active.
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT a.service, a.id FROM rollouts r
                     JOIN rollouts a ON a.service = r.service AND a.active = 1
                     WHERE r.id = ?1",
                    [&c.id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            match existing {
                Some((service, id)) => Err(StoreError::ActiveExists { service, id }.into()),
                None => Err(e.into()),
            }
        }
        Err(e) => Err(e),
    }
}

/// `$XDG_STATE_HOME/cutover/cutover.db`, else `$HOME/.local/state/cutover/cutover.db`.
/// Relative values are ignored, as the XDG spec asks.
fn default_path_from(
    xdg_state_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    let state = absolute(xdg_state_home)
        .or_else(|| absolute(home).map(|h| h.join(".local").join("state")))?;
    Some(state.join("cutover").join("cutover.db"))
}

enum MigrateError {
    Sql(rusqlite::Error),
    TooNew(i64),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sql(e)
    }
}

/// Brings the schema up to `SCHEMA_VERSION`. Runs under `BEGIN IMMEDIATE`,
/// so two processes opening a new file at once do not both create it.
fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    // Up to date: nothing to write (so a read-only file opens, and its
    // writes fail later with the operation named).
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(MigrateError::TooNew(version));
    }
    if version < 1 {
        tx.execute_batch(SCHEMA_V1)?;
    }
    if version < 2 {
        tx.execute_batch(SCHEMA_V2)?;
    }
    // Later versions: `if version < 3 { ... }`.
    if version != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

/// What a blocking operation can fail with, before the path and operation
/// are added to the message.
enum Failure {
    Store(StoreError),
    Sql(rusqlite::Error),
    Data(String),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

fn constraint(e: &rusqlite::Error) -> Option<i32> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => {
            Some(f.extended_code)
        }
        _ => None,
    }
}

/// Timestamps and versions are `u64`; SQLite integers are `i64`.
fn to_sql(value: u64, what: &str) -> Result<i64, Failure> {
    i64::try_from(value).map_err(|_| {
        Failure::Data(format!(
            "{what} {value} is too large to store (max {})",
            i64::MAX
        ))
    })
}

/// For values only compared against, never stored: saturate instead of failing.
fn saturate(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_sql(value: i64, what: &str, row: &str) -> Result<u64, Failure> {
    u64::try_from(value).map_err(|_| {
        Failure::Data(format!(
            "{row}: {what} is negative ({value}); the database is corrupt"
        ))
    })
}

/// A row of `rollouts` as SQLite returned it, before checking.
struct RawRollout {
    id: String,
    service: String,
    version: i64,
    active: i64,
    state: String,
    created_at: i64,
    updated_at: i64,
    written_by: String,
}

impl RawRollout {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawRollout> {
        Ok(RawRollout {
            id: row.get(0)?,
            service: row.get(1)?,
            version: row.get(2)?,
            active: row.get(3)?,
            state: row.get(4)?,
            created_at: row.get(5)?,
            updated_at: row.get(6)?,
            written_by: row.get(7)?,
        })
    }

    fn check(self) -> Result<RolloutRecord, Failure> {
        let row = format!("rollouts row `{}`", self.id);
        let active = match self.active {
            0 => false,
            1 => true,
            other => {
                return Err(Failure::Data(format!(
                    "{row}: active is {other}, expected 0 or 1; the database is corrupt"
                )))
            }
        };
        Ok(RolloutRecord {
            version: from_sql(self.version, "version", &row)?,
            created_at: Timestamp(from_sql(self.created_at, "created_at", &row)?),
            updated_at: Timestamp(from_sql(self.updated_at, "updated_at", &row)?),
            id: self.id,
            service: self.service,
            active,
            state: self.state,
            written_by: self.written_by,
        })
    }
}

fn query_rollouts(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RolloutRecord>, Failure> {
    let mut stmt = conn.prepare_cached(sql)?;
    let raws = stmt
        .query_map(params, RawRollout::from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(RawRollout::check).collect()
}

fn command_name(command: Command) -> Result<String, Failure> {
    match serde_json::to_value(command) {
        Ok(serde_json::Value::String(name)) => Ok(name),
        Ok(other) => Err(Failure::Data(format!(
            "command {command:?} serialises as {other}, not a name"
        ))),
        Err(e) => Err(Failure::Data(format!(
            "cannot serialise command {command:?}: {e}"
        ))),
    }
}

fn parse_command(name: &str, seq: i64) -> Result<Command, Failure> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|e| {
        Failure::Data(format!(
            "commands row seq {seq}: unknown command `{name}` ({e})"
        ))
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_rollout(
        &self,
        id: &str,
        service: &str,
        change: Change<'_>,
    ) -> Result<RolloutRecord, StoreError> {
        let record = RolloutRecord::created(id, service, &change);
        let events = change.events.to_vec();
        let now = change.now;
        self.with_conn("create rollout", move |conn| {
            let at = to_sql(now.as_millis(), "timestamp")?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx.execute(
                "INSERT INTO rollouts (id, service, version, active, state, created_at, updated_at, written_by)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?5, ?6)",
                params![record.id, record.service, record.active, record.state, at, record.written_by],
            );
            match inserted {
                Ok(_) => {
                    append_events(&tx, &record.id, &events)?;
                    tx.commit()?;
                    Ok(record)
                }
                Err(e) => match constraint(&e) {
                    Some(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                        Err(StoreError::DuplicateId(record.id).into())
                    }
                    Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE) => {
                        // The id may be taken too (which index SQLite checks
                        // first is not specified): a taken id is reported first.
                        let taken: Option<i64> = tx
                            .query_row(
                                "SELECT 1 FROM rollouts WHERE id = ?1",
                                [&record.id],
                                |row| row.get(0),
                            )
                            .optional()?;
                        if taken.is_some() {
                            return Err(StoreError::DuplicateId(record.id).into());
                        }
                        // Same transaction, so the row that blocked us is still there.
                        let existing: Option<String> = tx
                            .query_row(
                                "SELECT id FROM rollouts WHERE service = ?1 AND active = 1",
                                [&record.service],
                                |row| row.get(0),
                            )
                            .optional()?;
                        match existing {
                            Some(id) => Err(StoreError::ActiveExists {
                                service: record.service,
                                id,
                            }
                            .into()),
                            None => Err(e.into()),
                        }
                    }
                    _ => Err(e.into()),
                },
            }
        })
        .await
    }

    async fn load(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let id = id.to_owned();
        self.with_conn("load rollout", move |conn| {
            let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1");
            Ok(query_rollouts(conn, &sql, [&id])?.pop())
        })
        .await
    }

    /// `Conflict` with `found: None` if there is no rollout `id` at all.
    /// Commits are grouped: while one transaction is being written, the
    /// commits that arrive queue up, and the next transaction writes all of
    /// them, each under its own savepoint (so one refused commit does not
    /// undo the others), with one fsync for the lot. Each caller's answer
    /// still comes only once its change is durable.
    async fn commit(
        &self,
        id: &str,
        expected_version: u64,
        change: Change<'_>,
    ) -> Result<RolloutRecord, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = QueuedCommit {
            id: id.to_owned(),
            expected_version,
            state: change.state.to_owned(),
            active: change.active,
            now: change.now,
            writer: change.writer.to_owned(),
            events: change.events.to_vec(),
            reply,
        };
        let start_writer = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.waiting.push(queued);
            !std::mem::replace(&mut q.writing, true)
        };
        if start_writer {
            let (conn, queue) = (self.conn.clone(), self.queue.clone());
            let (path, identity) = (self.path.clone(), self.identity);
            tokio::task::spawn_blocking(move || write_commits(&conn, &queue, &path, identity));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Backend(format!(
                "sqlite database {}: update rollout: the writer stopped before answering",
                self.path.display()
            )))
        })
    }

    async fn list_active(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        self.with_conn("list active rollouts", move |conn| {
            let sql = format!(
                "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE active = 1 ORDER BY created_at, rowid"
            );
            query_rollouts(conn, &sql, [])
        })
        .await
    }

    async fn list_active_ids(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.with_conn("list active rollouts", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, service FROM rollouts WHERE active = 1 ORDER BY created_at, rowid",
            )?;
            let rows = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn events(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let id = id.to_owned();
        let (after, limit) = (saturate(after), i64::try_from(limit).unwrap_or(i64::MAX));
        self.with_conn("read events", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, at, body FROM events WHERE rollout_id = ?1 AND seq > ?2
                 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![id, after, limit], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(seq, at, body)| {
                    let row = format!("events row `{id}` #{seq}");
                    Ok(EventRecord {
                        seq: from_sql(seq, "seq", &row)?,
                        at: Timestamp(from_sql(at, "at", &row)?),
                        body,
                    })
                })
                .collect()
        })
        .await
    }

    async fn list_for_service(
        &self,
        service: &str,
        limit: usize,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        let service = service.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn("list rollouts of a service", move |conn| {
            let sql = format!(
                "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE service = ?1
                 ORDER BY created_at DESC, rowid DESC LIMIT ?2"
            );
            query_rollouts(conn, &sql, params![service, limit])
        })
        .await
    }

    async fn claim_trigger(
        &self,
        key: &str,
        owner: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        self.with_conn("claim trigger", move |conn| {
            let at = to_sql(now.as_millis(), "timestamp")?;
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO triggers (key, owner, claimed_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO NOTHING",
                )?
                .execute(params![key, owner, at])?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        // Only compared against: an expiry past i64::MAX means "never".
        let (now, expires_at) = (
            saturate(now.as_millis()),
            saturate(now.after(ttl).as_millis()),
        );
        self.with_conn("acquire lease", move |conn| {
            let changed = conn
                .prepare_cached(
                    "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE
                        SET holder = excluded.holder,
                            expires_at = CASE WHEN leases.holder = excluded.holder
                                THEN MAX(leases.expires_at, excluded.expires_at)
                                ELSE excluded.expires_at END
                        WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4",
                )?
                .execute(params![name, holder, expires_at, now])?;
            Ok(changed == 1)
        })
        .await
    }

    async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let held = self
            .renew_leases(&[name.to_owned()], holder, now, ttl)
            .await?;
        Ok(held.first().copied().unwrap_or(false))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with_conn("release lease", move |conn| {
            conn.prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")?
                .execute(params![name, holder])?;
            Ok(())
        })
        .await
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let name = name.to_owned();
        self.with_conn("read lease", move |conn| {
            let row: Option<(String, i64)> = conn
                .prepare_cached("SELECT holder, expires_at FROM leases WHERE name = ?1")?
                .query_row([&name], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            Ok(row.map(|(holder, expires_at)| Lease {
                holder,
                // Saturated on the way in; never negative.
                expires_at: Timestamp(u64::try_from(expires_at).unwrap_or(0)),
            }))
        })
        .await
    }

    async fn renew_leases(
        &self,
        names: &[String],
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let (names, holder) = (names.to_vec(), holder.to_owned());
        let expires_at = saturate(now.after(ttl).as_millis());
        self.with_conn("renew leases", move |conn| {
            // One transaction for all: one fsync instead of one per lease.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut held = Vec::with_capacity(names.len());
            {
                // Only the holder's own leases, and never shorter.
                let mut stmt = tx.prepare_cached(
                    "UPDATE leases SET expires_at = MAX(expires_at, ?3)
                     WHERE name = ?1 AND holder = ?2",
                )?;
                for name in &names {
                    held.push(stmt.execute(params![name, holder, expires_at])? == 1);
                }
            }
            tx.commit()?;
            Ok(held)
        })
        .await
    }

    async fn post_command(
        &self,
        rollout_id: &str,
        command: Command,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let rollout_id = rollout_id.to_owned();
        self.with_conn("post command", move |conn| {
            let at = to_sql(now.as_millis(), "timestamp")?;
            let name = command_name(command)?;
            // One statement: the rollout cannot vanish between check and insert.
            let seq: Option<i64> = conn
                .prepare_cached(
                    "INSERT INTO commands (rollout_id, command, posted_at)
                     SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM rollouts WHERE id = ?1)
                     RETURNING seq",
                )?
                .query_row(params![rollout_id, name, at], |row| row.get(0))
                .optional()?;
            match seq {
                Some(seq) => Ok(from_sql(seq, "seq", "new commands row")?),
                None => Err(StoreError::NotFound(rollout_id).into()),
            }
        })
        .await
    }

    async fn commands_after(
        &self,
        rollout_id: &str,
        after: u64,
    ) -> Result<Vec<PostedCommand>, StoreError> {
        let rollout_id = rollout_id.to_owned();
        let after = saturate(after);
        self.with_conn("read commands", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, command, posted_at FROM commands
                 WHERE rollout_id = ?1 AND seq > ?2 ORDER BY seq",
            )?;
            let rows = stmt
                .query_map(params![rollout_id, after], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(seq, name, posted_at)| {
                    let row = format!("commands row seq {seq}");
                    Ok(PostedCommand {
                        seq: from_sql(seq, "seq", &row)?,
                        rollout_id: rollout_id.clone(),
                        command: parse_command(&name, seq)?,
                        posted_at: Timestamp(from_sql(posted_at, "posted_at", &row)?),
                    })
                })
                .collect()
        })
        .await
    }

    async fn latest_command_seq(&self) -> Result<u64, StoreError> {
        self.with_conn("read commands", move |conn| {
            let seq: i64 =
                conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM commands", [], |row| {
                    row.get(0)
                })?;
            from_sql(seq, "seq", "commands")
        })
        .await
    }

    async fn commands_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PostedCommand>, StoreError> {
        let (after, limit) = (saturate(after), i64::try_from(limit).unwrap_or(i64::MAX));
        self.with_conn("read commands", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, rollout_id, command, posted_at FROM commands
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![after, limit], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(seq, rollout_id, name, posted_at)| {
                    let row = format!("commands row seq {seq}");
                    Ok(PostedCommand {
                        seq: from_sql(seq, "seq", &row)?,
                        rollout_id,
                        command: parse_command(&name, seq)?,
                        posted_at: Timestamp(from_sql(posted_at, "posted_at", &row)?),
                    })
                })
                .collect()
        })
        .await
    }
}

/// Appends `events` to a rollout's log inside the caller's transaction.
fn append_events(tx: &Connection, id: &str, events: &[EventRecord]) -> Result<(), Failure> {
    let mut stmt = tx
        .prepare_cached("INSERT INTO events (rollout_id, seq, at, body) VALUES (?1, ?2, ?3, ?4)")?;
    for e in events {
        let seq = to_sql(e.seq, "event seq")?;
        let at = to_sql(e.at.as_millis(), "timestamp")?;
        stmt.execute(params![id, seq, at, e.body])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_prefers_xdg_state_home() {
        let p = default_path_from(Some("/xdg/state".into()), Some("/home/u".into()));
        assert_eq!(p, Some(PathBuf::from("/xdg/state/cutover/cutover.db")));
    }

    #[test]
    fn default_path_falls_back_to_home() {
        let want = Some(PathBuf::from("/home/u/.local/state/cutover/cutover.db"));
        assert_eq!(default_path_from(None, Some("/home/u".into())), want);
        // A relative XDG_STATE_HOME is invalid and ignored.
        assert_eq!(
            default_path_from(Some("rel".into()), Some("/home/u".into())),
            want
        );
        assert_eq!(default_path_from(None, None), None);
        assert_eq!(default_path_from(Some("".into()), Some("".into())), None);
    }

    #[test]
    fn command_names_round_trip() {
        for c in [
            Command::Abort,
            Command::Promote,
            Command::Pause,
            Command::Resume,
            Command::Retry,
        ] {
            let name = command_name(c).ok().expect("serialises");
            assert_eq!(parse_command(&name, 1).ok(), Some(c));
        }
        assert_eq!(command_name(Command::Abort).ok().as_deref(), Some("abort"));
        assert!(parse_command("explode", 7).is_err());
    }
}
