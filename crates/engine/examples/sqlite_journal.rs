//! What SQLite's journal mode and cutover's grouped commits do to the
//! store's write rate, side by side in one run on one disk.
//!
//! ```sh
//! cargo run --release -p cutover-engine --example sqlite_journal [COMMITS] [DIR]
//! ```
//!
//! Each configuration gets a fresh database in DIR (default: the system's
//! temp dir; put it on the disk the store will live on) with 1,000 active
//! rollouts, then COMMITS commits (default 2,000) of a 3 KB state and one
//! 500-byte event each, the shape of an analysis result: once one at a
//! time (each caller waits for its commit before the next starts, which is
//! what one driver does), and once from 64 callers at once (many drivers
//! on one `serve`; the store groups what queues while a transaction is
//! written). Reports commits per second and the ratio to the first row.

use std::sync::Arc;
use std::time::Instant;

use cutover_core::Timestamp;
use cutover_engine::store::{Change, EventRecord, Journal, SqliteStore, Store};

const ROLLOUTS: usize = 1_000;
const CALLERS: usize = 64;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let commits: usize = args
        .next()
        .map(|a| a.parse().expect("COMMITS: a number"))
        .unwrap_or(2_000);
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let state = "s".repeat(3_000);
    let body = "e".repeat(500);
    println!(
        "{commits} commits of a 3 KB state and a 500 B event, {ROLLOUTS} rollouts, in {}",
        dir.display()
    );
    println!("| journal | callers | commits/s | mean wait per commit | ratio |");
    println!("|---|---|---|---|---|");
    let mut first = None;
    for (name, journal) in [
        (
            "rollback (DELETE), synchronous=FULL (cutover)",
            Journal::Rollback,
        ),
        ("WAL, synchronous=FULL", Journal::Wal),
        ("WAL, synchronous=NORMAL (not durable)", Journal::WalNormal),
    ] {
        for callers in [1, CALLERS] {
            let tmp = tempfile::tempdir_in(&dir).expect("a temp dir");
            let store = Arc::new(
                SqliteStore::open_with_journal(&tmp.path().join("bench.db"), journal)
                    .expect("open the store"),
            );
            for i in 0..ROLLOUTS {
                store
                    .create(
                        &format!("r{i}"),
                        &format!("svc-{i}"),
                        &state,
                        true,
                        Timestamp::from_millis(1),
                    )
                    .await
                    .expect("create");
            }
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..callers {
                let (store, next, state, body) =
                    (store.clone(), next.clone(), state.clone(), body.clone());
                tasks.push(tokio::spawn(async move {
                    let mut waited = std::time::Duration::ZERO;
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n >= commits {
                            return waited;
                        }
                        // Rollout n % ROLLOUTS, at its (n / ROLLOUTS + 1)th version:
                        // callers never touch the same rollout at once.
                        let (id, version) =
                            (format!("r{}", n % ROLLOUTS), (n / ROLLOUTS) as u64 + 1);
                        let events = [EventRecord {
                            seq: version,
                            at: Timestamp::from_millis(2),
                            body: body.clone(),
                        }];
                        let change = Change {
                            state: &state,
                            active: true,
                            events: &events,
                            writer: "bench",
                            now: Timestamp::from_millis(2),
                        };
                        let t = Instant::now();
                        store.commit(&id, version, change).await.expect("commit");
                        waited += t.elapsed();
                    }
                }));
            }
            let mut waited = std::time::Duration::ZERO;
            for t in tasks {
                waited += t.await.expect("a caller");
            }
            let took = started.elapsed().as_secs_f64();
            let rate = commits as f64 / took;
            let base = *first.get_or_insert(rate);
            println!(
                "| {name} | {callers} | {rate:.0} | {:.2} ms | {:.2} |",
                waited.as_secs_f64() * 1000.0 / commits as f64,
                rate / base
            );
        }
    }
}
