//! The store conformance suite against `SqliteStore` on real files, plus
//! SQLite-specific checks (pragmas, schema version, corrupt rows).

use std::path::PathBuf;
use std::sync::Arc;

use cutover_core::{Command, Timestamp};
use cutover_engine::store::{conformance, SqliteStore, Store, StoreError};
use tempfile::TempDir;

/// A fresh database file in its own temp dir, in a not-yet-existing
/// subdirectory (so `open` must create it). Every call of the returned
/// closure opens another connection to it, as another process would.
fn backend() -> impl Fn() -> SqliteStore {
    let dir = Arc::new(tempfile::tempdir().expect("create a temp dir"));
    let path = dir.path().join("state").join("cutover").join("cutover.db");
    move || {
        let _keep_dir_alive: &TempDir = &dir;
        match SqliteStore::open(&path) {
            Ok(store) => store,
            Err(e) => panic!("open {}: {e}", path.display()),
        }
    }
}

#[tokio::test]
async fn event_log() {
    conformance::event_log(&backend()()).await;
}

#[tokio::test]
async fn writer_and_lease_holder() {
    conformance::writer_and_lease_holder(&backend()()).await;
}

#[tokio::test]
async fn commands_store_wide() {
    conformance::commands_store_wide(&backend()()).await;
}

#[tokio::test]
async fn create_then_load() {
    conformance::create_then_load(&backend()()).await;
}

#[tokio::test]
async fn one_active_rollout_per_service() {
    conformance::one_active_rollout_per_service(&backend()()).await;
}

#[tokio::test]
async fn update_is_compare_and_swap() {
    conformance::update_is_compare_and_swap(&backend()()).await;
}

#[tokio::test]
async fn listing_order_and_limit() {
    conformance::listing_order_and_limit(&backend()()).await;
}

#[tokio::test]
async fn claim_once() {
    conformance::claim_once(&backend()()).await;
}

#[tokio::test]
async fn claim_race() {
    conformance::claim_race(&backend()).await;
}

#[tokio::test]
async fn lease_race() {
    conformance::lease_race(&backend()).await;
}

#[tokio::test]
async fn lease_lifecycle() {
    conformance::lease_lifecycle(&backend()).await;
}

#[tokio::test]
async fn lease_renewal() {
    conformance::lease_renewal(&backend()()).await;
}

#[tokio::test]
async fn concurrent_update() {
    conformance::concurrent_update(&backend()).await;
}

#[tokio::test]
async fn commands() {
    conformance::commands(&backend()()).await;
}

/// The single entry point, on a multi-thread runtime this time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all() {
    conformance::run_all(backend).await;
}

fn temp_db() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let path = dir.path().join("nested").join("cutover.db");
    (dir, path)
}

fn raw(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).expect("open raw connection")
}

#[tokio::test]
async fn open_sets_the_rollback_journal_and_schema_version_and_keeps_data() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).expect("open");
    assert_eq!(store.path(), path);
    store
        .create("r", "svc", "s", true, Timestamp(5))
        .await
        .expect("create");
    drop(store);

    let conn = raw(&path);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    drop(conn);

    // Reopening (a restarted process) finds the data and leaves the schema alone.
    let store = SqliteStore::open(&path).expect("reopen");
    let loaded = store
        .load("r")
        .await
        .expect("load")
        .expect("record survives reopen");
    assert_eq!(
        (loaded.service.as_str(), loaded.version, loaded.created_at),
        ("svc", 1, Timestamp(5))
    );
}

#[tokio::test]
async fn nothing_is_memory_mapped_so_no_file_cut_under_the_process_can_kill_it() {
    // A database an earlier cutover left in WAL mode, with its WAL index.
    let (_dir, path) = temp_db();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let old = raw(&path);
    let mode: String = old
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(old);

    let store = SqliteStore::open(&path).expect("open");
    store
        .create("r", "svc", "s", true, Timestamp(1))
        .await
        .unwrap();
    // Open and in use, the store has no mapped WAL index (`-shm`) nor WAL,
    // and maps no part of the database.
    for suffix in ["-shm", "-wal"] {
        let file = format!("{}{suffix}", path.display());
        assert!(!std::path::Path::new(&file).exists(), "{file} exists");
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let name = path.display().to_string();
    assert!(
        !maps.lines().any(|l| l.contains(&name)),
        "{name} is mapped:\n{maps}"
    );

    // Cut to nothing under the store: an error on the next call, not a signal.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let err = store
        .update("r", 1, "t", true, Timestamp(2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
}

#[test]
fn open_refuses_a_newer_schema_naming_the_path() {
    let (_dir, path) = temp_db();
    drop(SqliteStore::open(&path).expect("open"));
    raw(&path).pragma_update(None, "user_version", 99).unwrap();
    let err = SqliteStore::open(&path).expect_err("newer schema must be refused");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("99"),
        "{msg}"
    );
}

#[test]
fn open_failure_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let path = file.join("cutover.db");
    let err = SqliteStore::open(&path).expect_err("parent is a file");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );

    // A file that is not a database.
    std::fs::write(dir.path().join("junk.db"), vec![b'j'; 4096]).unwrap();
    let err = SqliteStore::open(&dir.path().join("junk.db")).expect_err("not a database");
    assert!(err.to_string().contains("junk.db"), "{err}");
}

#[tokio::test]
async fn corrupt_command_row_is_an_error_naming_the_row() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).expect("open");
    store
        .create("r", "svc", "s", true, Timestamp(1))
        .await
        .unwrap();
    let good = store
        .post_command("r", Command::Pause, Timestamp(2))
        .await
        .unwrap();
    raw(&path)
        .execute(
            "INSERT INTO commands (rollout_id, command, posted_at) VALUES ('r', 'explode', 3)",
            [],
        )
        .unwrap();
    let bad_seq = good + 1;

    let err = store
        .commands_after("r", 0)
        .await
        .expect_err("unknown command must be an error");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(
        msg.contains(&format!("seq {bad_seq}")) && msg.contains("explode"),
        "{msg}"
    );
    // Reading past the bad row works again.
    assert!(store.commands_after("r", bad_seq).await.unwrap().is_empty());
}

#[tokio::test]
async fn corrupt_rollout_row_is_an_error_naming_the_row() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).expect("open");
    store
        .create("broken", "svc", "s", true, Timestamp(1))
        .await
        .unwrap();
    raw(&path)
        .execute("UPDATE rollouts SET version = -4 WHERE id = 'broken'", [])
        .unwrap();

    for result in [
        store.load("broken").await.map(|_| ()),
        store.list_active().await.map(|_| ()),
    ] {
        let err = result.expect_err("negative version must be an error");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        assert!(msg.contains("`broken`") && msg.contains("-4"), "{msg}");
    }
}

#[tokio::test]
async fn timestamps_beyond_sqlite_integers_are_errors_not_panics() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).expect("open");
    let err = store
        .create("r", "svc", "s", true, Timestamp(u64::MAX))
        .await
        .expect_err("too large");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert_eq!(store.load("r").await.unwrap(), None);

    // A lease with an enormous ttl is simply held "forever".
    let forever = std::time::Duration::from_millis(u64::MAX);
    assert!(store
        .acquire_lease("l", "a", Timestamp(1), forever)
        .await
        .unwrap());
    assert!(!store
        .acquire_lease("l", "b", Timestamp(1 << 62), forever)
        .await
        .unwrap());
}

#[tokio::test]
async fn commits_are_fsynced_before_they_return() {
    // `synchronous` is per connection: read it from the store's own.
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).expect("open");
    assert_eq!(store.pragma_synchronous().await.unwrap(), 2, "2 = FULL");
}

#[tokio::test]
async fn a_version_1_database_is_migrated_keeping_its_rollouts() {
    let (_dir, path) = temp_db();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    {
        let conn = raw(&path);
        conn.execute_batch(include_str!("fixtures/sqlite-v1.sql"))
            .unwrap();
    }
    let store = SqliteStore::open(&path).expect("open migrates");
    let r = store.load("old").await.unwrap().expect("kept");
    assert_eq!(
        (r.service.as_str(), r.version, r.written_by.as_str()),
        ("svc", 3, "")
    );
    assert_eq!(store.commands_after("old", 0).await.unwrap().len(), 1);
    assert!(store.events("old", 0, 10).await.unwrap().is_empty());
    let version: i64 = raw(&path)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
}

#[tokio::test]
async fn a_database_deleted_or_replaced_under_the_store_is_refused_not_written() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).expect("open");
    store
        .create("r", "svc", "s", true, Timestamp(1))
        .await
        .unwrap();

    // Deleted: writes would go to a file nobody else sees.
    std::fs::remove_file(&path).unwrap();
    let err = store
        .update("r", 1, "t", true, Timestamp(2))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("gone since it was opened") && msg.contains(&path.display().to_string()),
        "{msg}"
    );

    // Replaced by another database at the same path.
    let other = SqliteStore::open(&path).expect("a new file");
    other
        .create("r2", "svc", "s", true, Timestamp(3))
        .await
        .unwrap();
    let err = store.load("r").await.unwrap_err();
    assert!(err.to_string().contains("replaced by another one"), "{err}");
    // The new file's own handle works.
    assert!(other.load("r2").await.unwrap().is_some());
}

#[tokio::test]
async fn a_read_only_handle_reads_while_a_writer_writes_and_refuses_to_write() {
    let (_dir, path) = temp_db();
    let writer = SqliteStore::open(&path).expect("open");
    writer
        .create("r", "svc", "s", true, Timestamp(1))
        .await
        .unwrap();
    let reader = SqliteStore::open_read_only(&path).expect("open read-only");
    assert!(reader.is_read_only());
    writer
        .update("r", 1, "t", true, Timestamp(2))
        .await
        .unwrap();
    assert_eq!(reader.load("r").await.unwrap().unwrap().state, "t");
    let err = reader
        .post_command("r", Command::Abort, Timestamp(3))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("readonly"), "{err}");

    let missing = path.with_file_name("missing.db");
    let err = SqliteStore::open_read_only(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.db"), "{err}");
    assert!(!missing.exists(), "a read-only open creates nothing");
}

/// Commits through one handle are written in groups (one transaction for
/// whatever queued while the previous one was written). A refused commit
/// in a group, stale or re-activating a second rollout of a service,
/// leaves the others in it written, and each caller gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_commits_each_get_their_own_answer() {
    let open = backend();
    let store = Arc::new(open());
    const N: usize = 200;
    for i in 0..N {
        let id = format!("r{i}");
        store
            .create(
                &id,
                &format!("svc-{i}"),
                "start",
                true,
                Timestamp::from_millis(1),
            )
            .await
            .unwrap();
    }
    store
        .create("other", "svc-0", "done", false, Timestamp::from_millis(1))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("r{i}");
            // Every tenth commit is stale: it expects a version never written.
            let expected = if i % 10 == 3 { 7 } else { 1 };
            store
                .update(
                    &id,
                    expected,
                    &format!("next-{i}"),
                    true,
                    Timestamp::from_millis(2),
                )
                .await
        }));
    }
    // And one that would make a second rollout of svc-0 active.
    let clash = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .update("other", 1, "again", true, Timestamp::from_millis(2))
                .await
        })
    };
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap();
        if i % 10 == 3 {
            assert_eq!(
                got.unwrap_err(),
                StoreError::Conflict {
                    id: format!("r{i}"),
                    expected: 7,
                    found: Some(1)
                }
            );
        } else {
            let r = got.unwrap();
            assert_eq!(
                (r.version, r.state.as_str()),
                (2, format!("next-{i}").as_str())
            );
        }
    }
    assert_eq!(
        clash.await.unwrap().unwrap_err(),
        StoreError::ActiveExists {
            service: "svc-0".into(),
            id: "r0".into()
        }
    );
    // What the answers said is what another connection reads.
    let other = open();
    for i in 0..N {
        let r = other.load(&format!("r{i}")).await.unwrap().unwrap();
        assert_eq!(r.version, if i % 10 == 3 { 1 } else { 2 }, "r{i}");
    }
    let r = other.load("other").await.unwrap().unwrap();
    assert_eq!((r.version, r.active), (1, false));
}
