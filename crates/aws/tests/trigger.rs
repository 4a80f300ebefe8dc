//! The ECS event trigger against moto's SQS: duplicated, reordered and
//! concurrent delivery start exactly one rollout per (service, revision).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use common::fixtures::{ecs_trigger, event, event_queue, queue_len, send, task_def, ACCOUNT};
use cutover_aws::trigger::{PollReport, StartOutcome, StartRequest, Watcher};
use cutover_core::plan::EcsEventsTrigger;
use cutover_core::Timestamp;
use cutover_engine::store::{SqliteStore, Store, StoreError};
use serde_json::json;

async fn setup() -> (aws_config::SdkConfig, aws_sdk_sqs::Client, String) {
    event_queue().await
}

fn trigger(queue_url: &str) -> EcsEventsTrigger {
    ecs_trigger(queue_url)
}

fn handled_in(r: &PollReport) -> usize {
    r.started + r.duplicates + r.stale + r.ignored + r.malformed.len() + r.refused.len()
}

/// What `cutover watch` does with a start request, short of driving the
/// rollout: create its record unless a rollout of that id exists.
async fn create_record(store: &dyn Store, s: &StartRequest) -> StartOutcome {
    create_rollout(store, s, false).await
}

/// Like [`create_record`]; an `active` rollout is refused while the
/// service has another one, and must wait.
async fn create_rollout(store: &dyn Store, s: &StartRequest, active: bool) -> StartOutcome {
    let created = store
        .create(
            &s.rollout_id(&s.service),
            &s.service,
            "{}",
            active,
            Timestamp::from_millis(1),
        )
        .await;
    match created {
        Ok(_) => StartOutcome::Created,
        Err(StoreError::DuplicateId(_)) => StartOutcome::Exists,
        Err(e) => StartOutcome::Later(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_watchers_start_each_revision_exactly_once() {
    let (sdk, sqs, url) = setup().await;
    let green1 = task_def("green", 1);
    let green2 = task_def("green", 2);
    let blue1 = task_def("blue", 1);
    let mut bodies = vec![
        // One task, its versions out of order and repeated.
        event("green-app", &green1, "t1", 1, "PENDING"),
        event("green-app", &green1, "t1", 3, "RUNNING"),
        event("green-app", &green1, "t1", 2, "RUNNING"),
        event("green-app", &green1, "t1", 3, "RUNNING"),
        // The same revision from two more tasks.
        event("green-app", &green1, "t2", 2, "RUNNING"),
        event("green-app", &green1, "t3", 2, "RUNNING"),
        // A second revision, delivered twice.
        event("green-app", &green2, "t4", 2, "RUNNING"),
        event("green-app", &green2, "t4", 2, "RUNNING"),
        // Another watched service.
        event("blue-app", &blue1, "t5", 2, "RUNNING"),
        // A service nobody watches.
        event("other-app", &task_def("other", 1), "t6", 2, "RUNNING"),
        // Malformed: not JSON, and a field missing.
        "this is not an event".to_owned(),
        {
            let mut v: serde_json::Value =
                serde_json::from_str(&event("green-app", &green1, "t7", 2, "RUNNING")).unwrap();
            v["detail"].as_object_mut().unwrap().remove("group");
            v.to_string()
        },
    ];
    // Every event twice more, to make the watchers race on each key.
    let again = bodies.clone();
    bodies.extend(again.iter().cloned());
    bodies.extend(again);
    for body in &bodies {
        send(&sqs, &url, body).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cutover.db");
    let starts: Arc<Mutex<Vec<(String, StartRequest)>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..4 {
        // Each watcher has its own connection to the same file.
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
        let owner = format!("watcher-{n}");
        let mut watcher = Watcher::new(&sdk, trigger(&url), store.clone(), owner.clone())
            .with_wait(Duration::from_secs(1));
        let starts = starts.clone();
        tasks.spawn(async move {
            let mut malformed = Vec::new();
            let mut handled = 0;
            let mut empty_polls = 0;
            while empty_polls < 2 {
                // Every rollout created is recorded with its creator.
                let report = watcher
                    .poll_once(|s| {
                        let (store, starts, owner) = (store.clone(), starts.clone(), owner.clone());
                        async move {
                            let outcome = create_record(&*store, &s).await;
                            if outcome == StartOutcome::Created {
                                starts.lock().unwrap().push((owner, s));
                            }
                            outcome
                        }
                    })
                    .await
                    .unwrap();
                assert!(report.deferred.is_empty(), "{report:?}");
                assert!(report.delete_failures.is_empty(), "{report:?}");
                handled += handled_in(&report);
                assert_eq!(handled_in(&report), report.received, "{report:?}");
                malformed.extend(report.malformed);
                empty_polls = if report.received == 0 {
                    empty_polls + 1
                } else {
                    0
                };
            }
            (malformed, handled)
        });
    }
    let mut malformed = Vec::new();
    let mut handled = 0;
    while let Some(result) = tasks.join_next().await {
        let (m, h) = result.unwrap();
        malformed.extend(m);
        handled += h;
    }
    // Every message was handled. SQS delivers at least once (and moto, under
    // concurrent receives, now and then hands one message to two watchers),
    // so a message may be handled twice: what must hold is one start per
    // revision, below.
    assert!(handled >= bodies.len(), "{handled} of {}", bodies.len());

    let starts = std::mem::take(&mut *starts.lock().unwrap());
    let mut per_key: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (_, s) in starts.iter() {
        *per_key
            .entry((s.service.clone(), s.task_definition_arn.clone()))
            .or_default() += 1;
    }
    let expected: BTreeMap<(String, String), usize> = [
        (("blue-app".to_owned(), blue1.clone()), 1),
        (("green-app".to_owned(), green1.clone()), 1),
        (("green-app".to_owned(), green2.clone()), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(per_key, expected, "start requests: {starts:?}");
    for (_, s) in starts.iter() {
        assert_eq!(
            s.claim_key,
            format!("ecs:{}:{}", s.service, s.task_definition_arn)
        );
        assert_eq!(
            s.cluster_arn,
            format!("arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/prod")
        );
    }

    // Three copies of each of the two malformed bodies, each reported
    // (once per delivery).
    let extra = handled - bodies.len();
    assert!((6..=6 + extra).contains(&malformed.len()), "{malformed:?}");
    assert!((3..=3 + extra).contains(
        &malformed
            .iter()
            .filter(|m| m.error == "detail.group missing")
            .count()
    ));
    assert!(malformed
        .iter()
        .filter(|m| m.error != "detail.group missing")
        .all(|m| m.error.starts_with("not JSON")));

    assert_eq!(queue_len(&sqs, &url).await, 0, "queue drained");

    // Claims and rollouts are durable: a new watcher seeing the same event
    // again (a late redelivery) starts nothing.
    send(&sqs, &url, &event("green-app", &green1, "t9", 7, "RUNNING")).await;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
    let mut late =
        Watcher::new(&sdk, trigger(&url), store.clone(), "late").with_wait(Duration::from_secs(1));
    let mut requests = Vec::new();
    let report = late
        .poll_once(|s| {
            requests.push(s.claim_won);
            let store = store.clone();
            async move { create_record(&*store, &s).await }
        })
        .await
        .unwrap();
    assert_eq!(
        (report.received, report.duplicates, report.started),
        (1, 1, 0)
    );
    assert_eq!(requests, [false], "asked once, with the claim lost");
    assert_eq!(queue_len(&sqs, &url).await, 0);
}

#[tokio::test]
async fn an_older_event_of_a_known_task_is_ignored() {
    let (sdk, sqs, url) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    let mut watcher =
        Watcher::new(&sdk, trigger(&url), store, "w").with_wait(Duration::from_secs(1));
    let def = task_def("green", 5);

    // The task is already stopping (version 4) when its RUNNING event
    // (version 3) arrives late: no rollout for a task that is going away.
    let mut stopping: serde_json::Value =
        serde_json::from_str(&event("green-app", &def, "t1", 4, "RUNNING")).unwrap();
    stopping["detail"]["desiredStatus"] = json!("STOPPED");
    send(&sqs, &url, &stopping.to_string()).await;
    let mut starts = Vec::new();
    let mut record = |s: StartRequest| {
        starts.push(s);
        std::future::ready(StartOutcome::Created)
    };
    let report = watcher.poll_once(&mut record).await.unwrap();
    assert_eq!((report.received, report.ignored), (1, 1));

    send(&sqs, &url, &event("green-app", &def, "t1", 3, "RUNNING")).await;
    let report = watcher.poll_once(&mut record).await.unwrap();
    assert_eq!((report.received, report.stale), (1, 1));

    // A newer RUNNING state of the same task does start it.
    send(&sqs, &url, &event("green-app", &def, "t1", 5, "RUNNING")).await;
    let report = watcher.poll_once(&mut record).await.unwrap();
    assert_eq!((report.received, report.started), (1, 1));
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].task_definition_arn, def);
    assert_eq!(queue_len(&sqs, &url).await, 0);
}

#[tokio::test]
async fn a_missing_queue_is_an_error_not_a_panic() {
    let sdk = cutover_aws::config::load(&common::aws()).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    let url = format!("{}/{ACCOUNT}/no-such-queue", common::moto_url());
    let mut watcher =
        Watcher::new(&sdk, trigger(&url), store, "w").with_wait(Duration::from_secs(0));
    let err = watcher
        .poll_once(|_| std::future::ready(StartOutcome::Created))
        .await
        .unwrap_err();
    assert!(err.message.contains("no-such-queue"), "{err}");
}

#[tokio::test]
async fn an_event_whose_claim_fails_stays_in_the_queue_and_is_retried() {
    let sdk = cutover_aws::config::load(&common::aws()).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let url = sqs
        .create_queue()
        .queue_name(common::unique("events"))
        .attributes(QueueAttributeName::VisibilityTimeout, "1")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(cutover_engine::store::faults::FaultyStore::new(
        SqliteStore::open(&dir.path().join("db")).unwrap(),
    ));
    store
        .fail_claims
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut watcher =
        Watcher::new(&sdk, trigger(&url), store.clone(), "w").with_wait(Duration::from_secs(1));
    let def = task_def("green", 9);
    send(&sqs, &url, &event("green-app", &def, "t1", 2, "RUNNING")).await;

    let mut starts = Vec::new();
    let report = watcher
        .poll_once(|s| {
            starts.push(s);
            std::future::ready(StartOutcome::Created)
        })
        .await
        .unwrap();
    assert_eq!((report.received, report.started), (1, 0));
    assert_eq!(report.deferred.len(), 1, "{report:?}");
    assert!(
        report.deferred[0].contains("store unreachable"),
        "{report:?}"
    );
    assert_eq!(queue_len(&sqs, &url).await, 1, "not deleted");

    // The store is back; the message becomes visible again (after the
    // queue's 1 s visibility timeout: the long polls below wait for it)
    // and, since the failed attempt did not count as seen, it is claimed.
    store
        .fail_claims
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let mut report = PollReport::default();
    for _ in 0..5 {
        report = watcher
            .poll_once(|s| {
                starts.push(s);
                std::future::ready(StartOutcome::Created)
            })
            .await
            .unwrap();
        if report.received > 0 {
            break;
        }
    }
    assert_eq!((report.received, report.started), (1, 1), "{report:?}");
    assert_eq!(starts.len(), 1);
    assert_eq!(queue_len(&sqs, &url).await, 0);
}

#[tokio::test]
async fn run_hands_out_start_requests_until_shut_down() {
    let (sdk, sqs, url) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    let mut watcher =
        Watcher::new(&sdk, trigger(&url), store.clone(), "w").with_wait(Duration::from_secs(1));
    let def = task_def("green", 11);
    send(&sqs, &url, &event("green-app", &def, "t1", 2, "RUNNING")).await;
    send(&sqs, &url, &event("green-app", &def, "t2", 2, "RUNNING")).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        watcher
            .run(
                move |s| {
                    let (store, tx) = (store.clone(), tx.clone());
                    async move {
                        let outcome = create_record(&*store, &s).await;
                        if outcome == StartOutcome::Created {
                            tx.send(s).unwrap();
                        }
                        outcome
                    }
                },
                async move {
                    let _ = stopped.await;
                },
            )
            .await;
    });
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.task_definition_arn, def);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("run stops on shutdown")
        .unwrap();
    // The second task's event was a duplicate: no second rollout.
    assert!(rx.recv().await.is_none());
    assert_eq!(queue_len(&sqs, &url).await, 0);
}

/// A queue whose messages come back 1 s after being received and not deleted.
async fn quick_queue(sqs: &aws_sdk_sqs::Client) -> String {
    sqs.create_queue()
        .queue_name(common::unique("events"))
        .attributes(QueueAttributeName::VisibilityTimeout, "1")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap()
}

#[tokio::test]
async fn a_start_whose_claimer_died_is_finished_by_the_next_delivery() {
    let sdk = cutover_aws::config::load(&common::aws()).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let url = quick_queue(&sqs).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let def = task_def("green", 21);
    send(&sqs, &url, &event("green-app", &def, "t1", 2, "RUNNING")).await;

    // The first watcher claims the revision and dies before the rollout
    // exists: its handling is dropped mid-start.
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
    let mut first =
        Watcher::new(&sdk, trigger(&url), store, "first").with_wait(Duration::from_secs(1));
    let (entered, mut in_start) = tokio::sync::mpsc::unbounded_channel();
    let dying = async {
        first
            .poll_once(|s| {
                entered.send(s.claim_won).unwrap();
                std::future::pending::<StartOutcome>()
            })
            .await
    };
    tokio::select! {
        _ = dying => panic!("the start never finishes"),
        claim_won = in_start.recv() => assert_eq!(claim_won, Some(true)),
    }
    assert_eq!(queue_len(&sqs, &url).await, 1, "the message is still there");

    // Another watcher gets the message when it comes back, finds the claim
    // taken and no rollout, and creates it.
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
    let mut second = Watcher::new(&sdk, trigger(&url), store.clone(), "second")
        .with_wait(Duration::from_secs(1));
    let mut asked = Vec::new();
    for _ in 0..10 {
        let report = second
            .poll_once(|s| {
                asked.push(s.claim_won);
                let store = store.clone();
                async move { create_record(&*store, &s).await }
            })
            .await
            .unwrap();
        if report.received > 0 {
            assert_eq!(report.started, 1, "{report:?}");
            break;
        }
    }
    assert_eq!(asked, [false], "asked once, the claim being the first's");
    let rollouts = store.list_for_service("green-app", 10).await.unwrap();
    assert_eq!(rollouts.len(), 1);
    assert_eq!(rollouts[0].id, "green-app-green-21");
    assert_eq!(queue_len(&sqs, &url).await, 0);
}

#[tokio::test]
async fn a_start_that_must_wait_comes_back_and_starts_once_the_service_is_free() {
    let (sdk, sqs, url) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    // Another rollout of the service is active.
    let busy = store
        .create(
            "green-app-green-30",
            "green-app",
            "{}",
            true,
            Timestamp::from_millis(1),
        )
        .await
        .unwrap();
    let mut watcher = Watcher::new(&sdk, trigger(&url), store.clone(), "w")
        .with_wait(Duration::from_secs(1))
        .with_retry_after(Duration::ZERO);
    let def = task_def("green", 31);
    send(&sqs, &url, &event("green-app", &def, "t1", 2, "RUNNING")).await;
    let mut start = |s: StartRequest| {
        let store = store.clone();
        async move { create_rollout(&*store, &s, true).await }
    };

    let report = watcher.poll_once(&mut start).await.unwrap();
    assert_eq!((report.received, report.started), (1, 0), "{report:?}");
    assert_eq!(report.deferred.len(), 1, "{report:?}");
    assert!(
        report.deferred[0].contains("green-app-green-30"),
        "{report:?}"
    );
    assert_eq!(queue_len(&sqs, &url).await, 1, "kept for later");

    // Still busy: it comes back (at once, with no retry delay) and waits again.
    let report = watcher.poll_once(&mut start).await.unwrap();
    assert_eq!(
        (report.received, report.deferred.len()),
        (1, 1),
        "{report:?}"
    );

    // The active rollout ends; the next delivery starts the revision.
    store
        .update(
            &busy.id,
            busy.version,
            "{}",
            false,
            Timestamp::from_millis(2),
        )
        .await
        .unwrap();
    let report = watcher.poll_once(&mut start).await.unwrap();
    assert_eq!((report.received, report.started), (1, 1), "{report:?}");
    assert_eq!(queue_len(&sqs, &url).await, 0);
    let active = store.list_active().await.unwrap();
    assert_eq!(
        active.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["green-app-green-31"]
    );
}
