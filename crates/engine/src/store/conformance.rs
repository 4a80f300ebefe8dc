//! The store conformance suite: what every [`Store`] must do, written once
//! and run against each backend (SQLite here, DynamoDB in the AWS crate).
//!
//! Each case is a public async function, so a backend's tests can list them
//! one `#[tokio::test]` each and failures are named. Cases that need one
//! handle take `&S`; cases that race several handles take a handle factory
//! `&H` where `H: Fn() -> S`, every call of which must return a new handle to
//! the *same* backend (for SQLite, another `SqliteStore::open` of the same
//! file, as a second process would). Racing cases run on OS threads driving
//! futures on the caller's tokio runtime, so they need a runtime (a
//! current-thread one is fine) and truly overlap.
//!
//! [`run_all`] runs every case, each on a fresh backend.
//!
//! The suite assumes nothing about the backend beyond the trait: ids, keys
//! and timestamps are plain values chosen by the cases, and each case
//! expects the backend to start empty.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cutover_core::{Command, Timestamp};

use super::{Change, EventRecord, PostedCommand, RolloutRecord, Store, StoreError};

/// Threads racing in [`claim_race`] and [`concurrent_update`].
pub const RACERS: usize = 8;
/// Distinct trigger keys every racer tries to claim in [`claim_race`].
pub const CLAIM_KEYS: usize = 1_000;
/// Rounds of [`concurrent_update`]; each starts from the previous winner's version.
pub const CAS_ROUNDS: usize = 50;
/// Leases raced for by two holders in [`lease_race`].
pub const LEASE_ROUNDS: usize = 200;

/// Runs every case, each on a fresh backend from `new_backend`. A backend is
/// a handle factory: each call returns a new handle to that same backend.
///
/// ```ignore
/// run_all(|| {
///     let dir = Arc::new(tempfile::tempdir().unwrap());
///     move || SqliteStore::open(&dir.path().join("cutover.db")).unwrap()
/// })
/// .await;
/// ```
pub async fn run_all<S, F, H>(new_backend: F)
where
    S: Store + 'static,
    F: Fn() -> H,
    H: Fn() -> S,
{
    create_then_load(&new_backend()()).await;
    one_active_rollout_per_service(&new_backend()()).await;
    update_is_compare_and_swap(&new_backend()()).await;
    listing_order_and_limit(&new_backend()()).await;
    claim_once(&new_backend()()).await;
    claim_race(&new_backend()).await;
    lease_race(&new_backend()).await;
    lease_lifecycle(&new_backend()).await;
    lease_renewal(&new_backend()()).await;
    concurrent_update(&new_backend()).await;
    commands(&new_backend()()).await;
    event_log(&new_backend()()).await;
    writer_and_lease_holder(&new_backend()()).await;
    commands_store_wide(&new_backend()()).await;
}

fn ts(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

/// Unwraps a store result, naming the call that failed.
fn ok<T>(what: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e} ({e:?})"),
    }
}

/// Asserts that a store call failed with exactly `want`.
fn fails<T: Debug>(what: &str, result: Result<T, StoreError>, want: StoreError) {
    match result {
        Err(e) => assert_eq!(e, want, "{what}: wrong error"),
        Ok(v) => panic!("{what}: expected {want:?}, got Ok({v:?})"),
    }
}

fn record(
    id: &str,
    service: &str,
    version: u64,
    active: bool,
    state: &str,
    created: u64,
    updated: u64,
) -> RolloutRecord {
    RolloutRecord {
        id: id.into(),
        service: service.into(),
        version,
        active,
        state: state.into(),
        created_at: ts(created),
        updated_at: ts(updated),
        written_by: String::new(),
    }
}

fn ids(records: &[RolloutRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

/// Case 1: `create` returns the record at version 1 and `load` gives back every
/// field unchanged; unknown ids load as `None`.
pub async fn create_then_load<S: Store>(store: &S) {
    let state = r#"{"phase":"canary","step":2,"note":"quotes \" and ünïcödé
and a newline"}"#;
    let created = ok(
        "create r-1",
        store
            .create("r-1", "checkout", state, true, ts(1_700_000_000_123))
            .await,
    );
    let want = record(
        "r-1",
        "checkout",
        1,
        true,
        state,
        1_700_000_000_123,
        1_700_000_000_123,
    );
    assert_eq!(
        created, want,
        "create must return the stored record at version 1"
    );
    assert_eq!(ok("load r-1", store.load("r-1").await), Some(want));

    let inactive = ok(
        "create r-2",
        store.create("r-2", "billing", "", false, ts(0)).await,
    );
    assert_eq!(inactive, record("r-2", "billing", 1, false, "", 0, 0));
    assert_eq!(ok("load r-2", store.load("r-2").await), Some(inactive));

    assert_eq!(ok("load unknown", store.load("r-3").await), None);
    assert_eq!(ok("load unknown", store.load("").await), None);
}

/// Case 2: At most one active rollout per service, enforced by `create` (and by
/// `update` re-activating a rollout); ids are unique.
pub async fn one_active_rollout_per_service<S: Store>(store: &S) {
    ok(
        "create first",
        store.create("first", "svc", "s", true, ts(1_000)).await,
    );
    fails(
        "second active create for the service",
        store.create("second", "svc", "s", true, ts(2_000)).await,
        StoreError::ActiveExists {
            service: "svc".into(),
            id: "first".into(),
        },
    );
    assert_eq!(
        ok("load second", store.load("second").await),
        None,
        "a refused create must not be stored"
    );
    ok(
        "create for another service",
        store.create("other", "svc-2", "s", true, ts(2_500)).await,
    );

    // Once `first` ends, the service is free again.
    ok(
        "end first",
        store.update("first", 1, "done", false, ts(3_000)).await,
    );
    let second = ok(
        "create second after first ended",
        store.create("second", "svc", "s2", true, ts(4_000)).await,
    );
    assert_eq!(second, record("second", "svc", 1, true, "s2", 4_000, 4_000));

    // Ids are unique whatever the service or active flag.
    fails(
        "create with the id of an ended rollout",
        store.create("first", "svc-3", "x", true, ts(5_000)).await,
        StoreError::DuplicateId("first".into()),
    );
    fails(
        "create inactive with a taken id",
        store.create("other", "svc-4", "x", false, ts(5_000)).await,
        StoreError::DuplicateId("other".into()),
    );
    // Re-creating the service's active rollout is a duplicate, not a wait
    // for that rollout to end (a trigger redelivered while its own rollout
    // runs must be recognised as done).
    fails(
        "create again the active rollout of its service",
        store.create("second", "svc", "x", true, ts(5_000)).await,
        StoreError::DuplicateId("second".into()),
    );
    assert_eq!(
        ok("load first", store.load("first").await),
        Some(record("first", "svc", 2, false, "done", 1_000, 3_000)),
        "a refused create must not touch the existing record"
    );
    assert_eq!(
        ok("load svc-3", store.list_for_service("svc-3", 10).await),
        vec![]
    );

    // Re-activating an ended rollout (e.g. a retry) while another is active is refused too.
    fails(
        "re-activate first while second is active",
        store.update("first", 2, "retry", true, ts(6_000)).await,
        StoreError::ActiveExists {
            service: "svc".into(),
            id: "second".into(),
        },
    );
    assert_eq!(
        ok("load first", store.load("first").await),
        Some(record("first", "svc", 2, false, "done", 1_000, 3_000)),
        "a refused update must not change the record"
    );
    assert_eq!(
        ids(&ok("list_active", store.list_active().await)),
        ["other", "second"]
    );
}

/// Case 3: `update` is a compare-and-swap on the version.
pub async fn update_is_compare_and_swap<S: Store>(store: &S) {
    ok(
        "create",
        store.create("cas", "svc", "s1", true, ts(1_000)).await,
    );
    let v2 = ok(
        "update from 1",
        store.update("cas", 1, "s2", true, ts(2_000)).await,
    );
    assert_eq!(v2, record("cas", "svc", 2, true, "s2", 1_000, 2_000));
    assert_eq!(ok("load", store.load("cas").await), Some(v2.clone()));

    for stale in [1, 3, 0] {
        fails(
            &format!("update from version {stale} when the store has 2"),
            store.update("cas", stale, "lost", false, ts(3_000)).await,
            StoreError::Conflict {
                id: "cas".into(),
                expected: stale,
                found: Some(2),
            },
        );
        assert_eq!(
            ok("load", store.load("cas").await),
            Some(v2.clone()),
            "a conflicting update must change nothing"
        );
    }
    fails(
        "update of an unknown rollout",
        store.update("missing", 1, "x", true, ts(3_000)).await,
        StoreError::Conflict {
            id: "missing".into(),
            expected: 1,
            found: None,
        },
    );
    assert_eq!(
        ok("load missing", store.load("missing").await),
        None,
        "update must not create"
    );

    let v3 = ok(
        "update from 2",
        store.update("cas", 2, "s3", false, ts(4_000)).await,
    );
    assert_eq!(v3, record("cas", "svc", 3, false, "s3", 1_000, 4_000));
    assert_eq!(ok("load", store.load("cas").await), Some(v3));
}

/// Case 4: `list_active` gives active rollouts oldest first; `list_for_service`
/// gives a service's rollouts newest first, at most `limit`.
pub async fn listing_order_and_limit<S: Store>(store: &S) {
    assert_eq!(
        ok("list_active on empty store", store.list_active().await),
        vec![]
    );
    // Created out of chronological order, so insertion order is not enough.
    let c = ok(
        "create c",
        store.create("c", "svc-c", "c", true, ts(3_000)).await,
    );
    let a = ok(
        "create a",
        store.create("a", "svc-a", "a", true, ts(1_000)).await,
    );
    let a_old = ok(
        "create a-old",
        store.create("a-old", "svc-a", "x", false, ts(500)).await,
    );
    let a_oldest = ok(
        "create a-oldest",
        store.create("a-oldest", "svc-a", "x", false, ts(200)).await,
    );
    let b = ok(
        "create b",
        store.create("b", "svc-b", "b", true, ts(2_000)).await,
    );
    let a_mid = ok(
        "create a-mid",
        store.create("a-mid", "svc-a", "x", false, ts(800)).await,
    );
    ok(
        "create d",
        store.create("d", "svc-d", "d", true, ts(1_500)).await,
    );
    ok(
        "end d",
        store.update("d", 1, "done", false, ts(4_000)).await,
    );

    assert_eq!(
        ok("list_active", store.list_active().await),
        vec![a.clone(), b, c]
    );

    let all = ok("list svc-a", store.list_for_service("svc-a", 10).await);
    assert_eq!(all, vec![a.clone(), a_mid.clone(), a_old, a_oldest]);
    assert_eq!(
        ok(
            "list svc-a limit 2",
            store.list_for_service("svc-a", 2).await
        ),
        vec![a, a_mid]
    );
    assert_eq!(
        ok(
            "list svc-a limit 0",
            store.list_for_service("svc-a", 0).await
        ),
        vec![]
    );
    assert_eq!(
        ids(&ok(
            "list svc-d",
            store.list_for_service("svc-d", usize::MAX).await
        )),
        ["d"]
    );
    assert_eq!(
        ok(
            "list unknown service",
            store.list_for_service("svc-z", 10).await
        ),
        vec![]
    );
}

/// Case 5a: A trigger key is claimed once, ever, whoever asks again.
pub async fn claim_once<S: Store>(store: &S) {
    assert!(
        ok(
            "first claim",
            store.claim_trigger("svc@rev-1", "a", ts(1)).await
        ),
        "first claim must win"
    );
    assert!(
        !ok(
            "same owner again",
            store.claim_trigger("svc@rev-1", "a", ts(2)).await
        ),
        "a claim is won once"
    );
    assert!(
        !ok(
            "other owner",
            store.claim_trigger("svc@rev-1", "b", ts(3)).await
        ),
        "a claim is won once"
    );
    assert!(
        ok(
            "another key",
            store.claim_trigger("svc@rev-2", "b", ts(4)).await
        ),
        "keys are independent"
    );
}

/// Case 5b: [`RACERS`] threads, each with its own handle, race to claim each of
/// [`CLAIM_KEYS`] keys, all starting each key together: exactly one wins
/// each key.
pub async fn claim_race<S, H>(new_handle: &H)
where
    S: Store + 'static,
    H: Fn() -> S,
{
    let started = Instant::now();
    let results = race(new_handle, RACERS, CLAIM_KEYS, |store, racer, key| {
        Box::pin(async move {
            let key = format!("trigger-{key}");
            store
                .claim_trigger(&key, &format!("racer-{racer}"), ts(1_000))
                .await
        })
    })
    .await;
    eprintln!(
        "claim_race: {RACERS} threads x {CLAIM_KEYS} keys took {:?}",
        started.elapsed()
    );

    let mut winners_total = 0;
    for key in 0..CLAIM_KEYS {
        let mut winners = Vec::new();
        for (racer, rounds) in results.iter().enumerate() {
            match &rounds[key] {
                Ok(true) => winners.push(racer),
                Ok(false) => {}
                Err(e) => panic!("racer {racer} claiming trigger-{key}: unexpected error: {e}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "trigger-{key}: expected exactly one winner, got racers {winners:?}"
        );
        winners_total += winners.len();
    }
    assert_eq!(winners_total, CLAIM_KEYS);

    let store = new_handle();
    for key in [0, CLAIM_KEYS - 1] {
        assert!(
            !ok(
                "claim after the race",
                store
                    .claim_trigger(&format!("trigger-{key}"), "late", ts(2_000))
                    .await
            ),
            "trigger-{key} was claimed in the race; a late claim must lose"
        );
    }
}

/// Case 6a: Two holders, each with its own handle, race for each of
/// [`LEASE_ROUNDS`] free leases: exactly one gets each.
pub async fn lease_race<S, H>(new_handle: &H)
where
    S: Store + 'static,
    H: Fn() -> S,
{
    let results = race(new_handle, 2, LEASE_ROUNDS, |store, racer, round| {
        Box::pin(async move {
            let name = format!("lease-{round}");
            store
                .acquire_lease(
                    &name,
                    &format!("holder-{racer}"),
                    ts(10_000),
                    Duration::from_secs(30),
                )
                .await
        })
    })
    .await;
    for round in 0..LEASE_ROUNDS {
        let got: Vec<bool> = results
            .iter()
            .enumerate()
            .map(|(racer, rounds)| match &rounds[round] {
                Ok(held) => *held,
                Err(e) => panic!("holder-{racer} acquiring lease-{round}: unexpected error: {e}"),
            })
            .collect();
        assert_eq!(
            got.iter().filter(|held| **held).count(),
            1,
            "lease-{round}: exactly one of two racing holders must get it, got {got:?}"
        );
    }
}

/// Case 6b: A lease is held until it expires, renewable by its holder, released
/// only by its holder.
pub async fn lease_lifecycle<S, H>(new_handle: &H)
where
    S: Store + 'static,
    H: Fn() -> S,
{
    let (a, b) = (new_handle(), new_handle());
    let ttl = Duration::from_secs(10);
    let t0 = 100_000;
    async fn acquire<S: Store>(store: &S, holder: &str, at: u64) -> bool {
        let ttl = Duration::from_secs(10);
        ok(
            &format!("{holder} acquires at {at}"),
            store.acquire_lease("driver/svc", holder, ts(at), ttl).await,
        )
    }

    assert!(acquire(&a, "a", t0).await, "a free lease must be granted");
    assert!(
        !acquire(&b, "b", t0).await,
        "a held lease must be refused to others"
    );
    assert!(
        acquire(&a, "a", t0 + 5_000).await,
        "the holder must be able to renew"
    );
    // Past the first expiry (t0 + 10 s) but before the renewed one (t0 + 15 s).
    assert!(
        !acquire(&b, "b", t0 + 12_000).await,
        "renewal must extend the lease"
    );
    assert!(
        !acquire(&b, "b", t0 + 14_999).await,
        "the lease is held until it expires"
    );
    assert!(
        acquire(&b, "b", t0 + 15_001).await,
        "an expired lease must be granted to another holder"
    );
    assert!(
        !acquire(&a, "a", t0 + 15_002).await,
        "the old holder lost it"
    );

    ok(
        "a releases b's lease",
        a.release_lease("driver/svc", "a").await,
    );
    assert!(
        !acquire(&a, "a", t0 + 15_003).await,
        "release by a non-holder must do nothing"
    );
    ok(
        "b releases its lease",
        b.release_lease("driver/svc", "b").await,
    );
    // b's lease would have lasted until t0 + 25 s.
    assert!(
        acquire(&a, "a", t0 + 15_004).await,
        "a released lease must be free"
    );

    ok(
        "release of an unknown lease",
        b.release_lease("never-taken", "b").await,
    );
    let other = ok(
        "b takes another lease",
        b.acquire_lease("driver/other", "b", ts(t0 + 15_005), ttl)
            .await,
    );
    assert!(other, "leases are independent");
}

/// Case 6c: A renewal never creates a lease, never takes another's, and no
/// write of a holder shortens its own lease (a renewal stamped earlier may
/// land after a later one; a released lease stays released even when a
/// renewal that was in flight lands after the release).
pub async fn lease_renewal<S: Store>(store: &S) {
    let ttl = Duration::from_secs(10);
    let t0 = 200_000;
    let name = |n: &str| format!("renewal/{n}");
    let expires = |l: Result<Option<super::Lease>, StoreError>, what: &str| {
        ok(what, l).map(|l| (l.holder, l.expires_at.as_millis()))
    };
    assert!(ok(
        "x takes a",
        store.acquire_lease(&name("a"), "x", ts(t0), ttl).await
    ));
    assert!(ok(
        "y takes b",
        store.acquire_lease(&name("b"), "y", ts(t0), ttl).await
    ));
    let names = [name("a"), name("b"), name("never")];
    let held = ok(
        "x renews a, b and one never taken",
        store.renew_leases(&names, "x", ts(t0 + 1_000), ttl).await,
    );
    assert_eq!(held, [true, false, false], "only x's own lease is renewed");
    assert_eq!(
        expires(store.lease(&name("never")).await, "read never"),
        None,
        "a renewal must not create a lease"
    );
    assert_eq!(
        expires(store.lease(&name("b")).await, "read b"),
        Some(("y".to_string(), t0 + 10_000)),
        "nor touch another's"
    );
    // Stamped earlier, landing later: the lease keeps its later end.
    let late = ok(
        "an earlier renewal lands",
        store.renew_lease(&name("a"), "x", ts(t0 + 500), ttl).await,
    );
    assert!(late, "still held");
    assert!(ok(
        "x acquires again, stamped earlier still",
        store
            .acquire_lease(&name("a"), "x", ts(t0 + 200), ttl)
            .await
    ));
    assert_eq!(
        expires(store.lease(&name("a")).await, "read a"),
        Some(("x".to_string(), t0 + 11_000)),
        "no write of its holder shortens a lease"
    );
    ok("x releases a", store.release_lease(&name("a"), "x").await);
    let after = ok(
        "a renewal in flight lands after the release",
        store
            .renew_leases(&[name("a")], "x", ts(t0 + 2_000), ttl)
            .await,
    );
    assert_eq!(after, [false]);
    assert_eq!(
        expires(store.lease(&name("a")).await, "read a again"),
        None,
        "a released lease stays released"
    );
}

/// Case 7: [`RACERS`] threads, each with its own handle, update one rollout from
/// the same version at once, [`CAS_ROUNDS`] times: exactly one wins each
/// round, and the others see `Conflict` with the winner's version.
pub async fn concurrent_update<S, H>(new_handle: &H)
where
    S: Store + 'static,
    H: Fn() -> S,
{
    ok(
        "create",
        new_handle()
            .create("contended", "svc", "start", true, ts(1_000))
            .await,
    );
    let results = race(new_handle, RACERS, CAS_ROUNDS, |store, racer, round| {
        Box::pin(async move {
            let state = format!("racer-{racer}-round-{round}");
            let from = round as u64 + 1;
            store
                .update("contended", from, &state, true, ts(2_000 + round as u64))
                .await
        })
    })
    .await;

    let mut last = None;
    for round in 0..CAS_ROUNDS {
        let (from, to) = (round as u64 + 1, round as u64 + 2);
        let mut winners = Vec::new();
        for (racer, rounds) in results.iter().enumerate() {
            match &rounds[round] {
                Ok(rec) => {
                    assert_eq!(rec.version, to, "round {round}: winner's version");
                    assert_eq!(rec.state, format!("racer-{racer}-round-{round}"));
                    winners.push(rec.clone());
                }
                Err(e) => assert_eq!(
                    *e,
                    StoreError::Conflict {
                        id: "contended".into(),
                        expected: from,
                        found: Some(to)
                    },
                    "round {round}: racer {racer} lost and must see the winner's version"
                ),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one update from version {from} may win, got {winners:?}"
        );
        last = winners.pop();
    }
    let stored = ok("load after the race", new_handle().load("contended").await);
    assert_eq!(stored, last, "the store must hold the last winner's update");
}

/// Case 8: Commands queue per rollout, in order, with increasing sequence numbers.
pub async fn commands<S: Store>(store: &S) {
    fails(
        "post to an unknown rollout",
        store.post_command("missing", Command::Abort, ts(1)).await,
        StoreError::NotFound("missing".into()),
    );
    ok(
        "create a",
        store.create("a", "svc-a", "s", true, ts(1_000)).await,
    );
    ok(
        "create b",
        store.create("b", "svc-b", "s", true, ts(1_000)).await,
    );
    assert_eq!(
        ok("no commands yet", store.commands_after("a", 0).await),
        vec![]
    );

    let posts = [
        ("a", Command::Pause),
        ("b", Command::Abort),
        ("a", Command::Resume),
        ("a", Command::Abort),
    ];
    let mut posted = Vec::new();
    for (i, (rollout, command)) in posts.into_iter().enumerate() {
        let at = ts(2_000 + i as u64);
        let seq = ok(
            &format!("post {command:?} to {rollout}"),
            store.post_command(rollout, command, at).await,
        );
        posted.push(PostedCommand {
            seq,
            rollout_id: rollout.into(),
            command,
            posted_at: at,
        });
    }
    assert!(
        posted[0].seq >= 1,
        "seq must be at least 1, so `commands_after(_, 0)` returns everything"
    );
    for pair in posted.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "seq must increase: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }

    let of_a: Vec<PostedCommand> = posted
        .iter()
        .filter(|c| c.rollout_id == "a")
        .cloned()
        .collect();
    assert_eq!(
        ok("commands of a", store.commands_after("a", 0).await),
        of_a
    );
    assert_eq!(
        ok(
            "commands of a after the first",
            store.commands_after("a", of_a[0].seq).await
        ),
        of_a[1..]
    );
    assert_eq!(
        ok(
            "commands of a after b's",
            store.commands_after("a", posted[1].seq).await
        ),
        of_a[1..]
    );
    assert_eq!(
        ok(
            "commands of a after the last",
            store.commands_after("a", of_a[2].seq).await
        ),
        vec![]
    );
    assert_eq!(
        ok("commands of b", store.commands_after("b", 0).await),
        vec![posted[1].clone()]
    );

    // A posted command does not depend on the rollout staying active.
    ok(
        "end a",
        store.update("a", 1, "done", false, ts(3_000)).await,
    );
    let retry = ok(
        "post retry to ended a",
        store.post_command("a", Command::Retry, ts(3_001)).await,
    );
    assert!(retry > posted[3].seq, "seq must keep increasing");
    let after = ok(
        "commands of a after the last",
        store.commands_after("a", of_a[2].seq).await,
    );
    assert_eq!(
        after,
        vec![PostedCommand {
            seq: retry,
            rollout_id: "a".into(),
            command: Command::Retry,
            posted_at: ts(3_001)
        }]
    );
}

/// A future borrowing the racer's store.
pub type RaceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Runs `op(store, racer, round)` for `rounds` rounds on `racers` OS threads,
/// each with its own handle from `new_handle`; a barrier starts every round
/// on all threads at once. The futures run on the caller's tokio runtime.
/// Returns `results[racer][round]`. `op` must not panic (a panicking racer
/// would leave the others waiting at the barrier): return errors instead.
async fn race<S, H, T, Op>(new_handle: &H, racers: usize, rounds: usize, op: Op) -> Vec<Vec<T>>
where
    S: Store + 'static,
    H: Fn() -> S,
    T: Send + 'static,
    Op: for<'a> Fn(&'a S, usize, usize) -> RaceFuture<'a, T> + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let barrier = Arc::new(Barrier::new(racers));
    let op = Arc::new(op);
    let threads: Vec<_> = (0..racers)
        .map(|racer| {
            let store = new_handle();
            let (runtime, barrier, op) = (runtime.clone(), Arc::clone(&barrier), Arc::clone(&op));
            std::thread::Builder::new()
                .name(format!("racer-{racer}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let mut results = Vec::with_capacity(rounds);
                        for round in 0..rounds {
                            barrier.wait();
                            results.push(op(&store, racer, round).await);
                        }
                        results
                    })
                })
                .expect("spawn a racer thread")
        })
        .collect();
    // Join off the runtime's thread: a current-thread runtime must keep
    // driving I/O for the racers meanwhile.
    let joined = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| "a racer thread panicked"))
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    match joined {
        Ok(Ok(results)) => results,
        Ok(Err(e)) => panic!("{e}"),
        Err(e) => panic!("joining the racers failed: {e}"),
    }
}

fn events(from: u64, to: u64, at: u64) -> Vec<EventRecord> {
    (from..=to)
        .map(|seq| EventRecord {
            seq,
            at: ts(at + seq),
            body: format!(r#"{{"seq":{seq},"message":"event {seq} \" ü"}}"#),
        })
        .collect()
}

fn change<'a>(state: &'a str, events: &'a [EventRecord], writer: &'a str, now: u64) -> Change<'a> {
    Change {
        state,
        active: true,
        events,
        writer,
        now: ts(now),
    }
}

/// Case 9: Events are appended with the state in one write: a write that
/// is refused (a stale version, a taken id) appends nothing; they read back
/// in order, paginated.
pub async fn event_log<S: Store>(store: &S) {
    let first = events(1, 2, 1_000);
    ok(
        "create with events",
        store
            .create_rollout("r", "svc", change("s1", &first, "w", 1_000))
            .await,
    );
    assert_eq!(ok("events", store.events("r", 0, 100).await), first);
    // A refused create appends nothing to the existing rollout's log.
    let intruder = events(3, 3, 9_000);
    assert!(store
        .create_rollout("r", "svc", change("x", &intruder, "w", 9_000))
        .await
        .is_err());
    assert_eq!(
        ok(
            "events after a refused create",
            store.events("r", 0, 100).await
        ),
        first
    );

    let more = events(3, 60, 2_000);
    ok(
        "commit with events",
        store.commit("r", 1, change("s2", &more, "w", 2_000)).await,
    );
    // A stale version: refused, and its events are not kept.
    let stale = events(61, 62, 3_000);
    match store.commit("r", 1, change("s3", &stale, "w", 3_000)).await {
        Err(StoreError::Conflict { found: Some(2), .. }) => {}
        other => panic!("a stale commit must be a conflict, got {other:?}"),
    }
    let all = ok("all events", store.events("r", 0, 1_000).await);
    assert_eq!(all.len(), 60);
    assert_eq!(all, [first.clone(), more.clone()].concat());
    assert_eq!(
        ok("load", store.load("r").await).map(|r| r.state),
        Some("s2".into())
    );

    // Pages.
    let page = ok("page", store.events("r", 10, 5).await);
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [11, 12, 13, 14, 15]
    );
    assert_eq!(ok("past the end", store.events("r", 60, 10).await), vec![]);
    assert_eq!(
        ok("unknown rollout", store.events("nope", 0, 10).await),
        vec![]
    );
    // A commit without events keeps the log as it is.
    ok(
        "commit without events",
        store.commit("r", 2, change("s4", &[], "w", 4_000)).await,
    );
    assert_eq!(ok("events", store.events("r", 0, 1_000).await).len(), 60);
}

/// Case 10: Every version records who wrote it; a lease's holder and
/// expiry can be read; leases renew in bulk.
pub async fn writer_and_lease_holder<S: Store>(store: &S) {
    let r = ok(
        "create",
        store
            .create_rollout("r", "svc", change("s", &[], "host-a:1", 1))
            .await,
    );
    assert_eq!(r.written_by, "host-a:1");
    let r = ok(
        "commit",
        store.commit("r", 1, change("t", &[], "host-b:2", 2)).await,
    );
    assert_eq!(r.written_by, "host-b:2");
    assert_eq!(
        ok("load", store.load("r").await).unwrap().written_by,
        "host-b:2"
    );

    assert_eq!(ok("no lease yet", store.lease("rollout:r").await), None);
    assert!(ok(
        "acquire",
        store
            .acquire_lease("rollout:r", "host-b:2", ts(10_000), Duration::from_secs(15))
            .await
    ));
    let lease = ok("lease", store.lease("rollout:r").await).expect("held");
    assert_eq!(lease.holder, "host-b:2");
    assert_eq!(lease.expires_at, ts(25_000));

    let names: Vec<String> = ["rollout:r", "rollout:s", "rollout:t"]
        .map(String::from)
        .to_vec();
    assert!(ok(
        "another holder takes t",
        store
            .acquire_lease("rollout:t", "host-c:3", ts(10_000), Duration::from_secs(60))
            .await
    ));
    let held = ok(
        "renew in bulk",
        store
            .renew_leases(&names, "host-b:2", ts(20_000), Duration::from_secs(15))
            .await,
    );
    assert_eq!(
        held,
        [true, false, false],
        "renews its own only: neither a free one nor another's"
    );
    assert_eq!(
        ok("lease", store.lease("rollout:s").await),
        None,
        "a free lease stays free"
    );
    assert_eq!(
        ok("lease", store.lease("rollout:r").await)
            .unwrap()
            .expires_at,
        ts(35_000)
    );
    assert_eq!(
        ok("lease", store.lease("rollout:t").await).unwrap().holder,
        "host-c:3"
    );
}

/// Case 11: `commands_since` lists every rollout's commands in store-wide order.
pub async fn commands_store_wide<S: Store>(store: &S) {
    ok(
        "create a",
        store.create("a", "svc-a", "s", true, ts(1)).await,
    );
    ok(
        "create b",
        store.create("b", "svc-b", "s", true, ts(1)).await,
    );
    let mut seqs = Vec::new();
    for (i, (id, c)) in [
        ("a", Command::Pause),
        ("b", Command::Abort),
        ("a", Command::Resume),
    ]
    .into_iter()
    .enumerate()
    {
        seqs.push((
            ok("post", store.post_command(id, c, ts(10 + i as u64)).await),
            id,
            c,
        ));
    }
    let all = ok("since 0", store.commands_since(0, 100).await);
    assert_eq!(
        all.iter()
            .map(|c| (c.seq, c.rollout_id.as_str(), c.command))
            .collect::<Vec<_>>(),
        seqs
    );
    let rest = ok(
        "since the first",
        store.commands_since(seqs[0].0, 100).await,
    );
    assert_eq!(rest.len(), 2);
    assert_eq!(ok("limited", store.commands_since(0, 1).await).len(), 1);
    assert_eq!(
        ok("since the last", store.commands_since(seqs[2].0, 100).await),
        vec![]
    );
}
