//! The store conformance suite against `DynamoStore` on moto (a fresh table
//! per case), plus DynamoDB-specific checks: table creation, corrupt items.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use aws_sdk_dynamodb::types::AttributeValue;
use cutover_aws::dynamodb::DynamoStore;
use cutover_core::{Command, Timestamp};
use cutover_engine::store::{conformance, Store, StoreError};

/// The SDK configuration for moto, reached through [`serial_moto`].
async fn sdk() -> aws_config::SdkConfig {
    let mut aws = common::aws();
    aws.endpoint_url = Some(serial_moto());
    cutover_aws::config::load(&aws).await
}

/// moto serves each request on its own thread, and its DynamoDB backend
/// takes no lock: a conditional write reads the item, evaluates the
/// condition and writes, so two concurrent writes to one item can both
/// pass (seen against plain moto: two winners of one trigger key in
/// `claim_race`, two winners of one round in `concurrent_update`), and a
/// cancelled `TransactWriteItems` restores a copy of the whole table taken
/// before it ran, undoing concurrent writes. DynamoDB makes every write
/// atomic. So these tests reach moto through this proxy, which forwards one
/// HTTP request at a time: each moto call is atomic, as in DynamoDB, while
/// the store's multi-request operations still interleave freely.
///
/// The proxy runs on its own thread and runtime (every test has its own
/// runtime), once per test binary. Returns its URL.
fn serial_moto() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let upstream = common::moto_url();
        let upstream = upstream
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("moto at {upstream}: only http:// can be proxied"))
            .trim_end_matches('/')
            .to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        std::thread::Builder::new()
            .name("serial-moto".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let upstream = Arc::new(Upstream {
                        addr: upstream,
                        conn: tokio::sync::Mutex::new(None),
                    });
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        let upstream = Arc::clone(&upstream);
                        tokio::spawn(async move {
                            let _ = proxy_connection(client, &upstream).await;
                        });
                    }
                })
            })
            .expect("spawn the proxy thread");
        url
    })
    .clone()
}

/// Finds the end of an HTTP head (after the blank line) in `buf`.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The value of header `name` (lower case) in an HTTP head.
fn header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        (n.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_ascii_lowercase())
    })
}

/// Reads one HTTP message (head and `Content-Length` body) from `stream`,
/// starting with what is already in `buf`; leaves any bytes after it in
/// `buf`. `None` on a clean EOF before the message starts.
async fn read_message(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    use tokio::io::AsyncReadExt;
    let mut chunk = vec![0u8; 64 * 1024];
    let end = loop {
        if let Some(end) = head_end(buf) {
            break end;
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    if header(&head, "transfer-encoding").is_some() {
        return Err(std::io::Error::other("chunked messages are not supported"));
    }
    let length: usize = match header(&head, "content-length") {
        Some(v) => v
            .parse()
            .map_err(|_| std::io::Error::other("bad Content-Length"))?,
        None => 0,
    };
    while buf.len() < end + length {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..read]);
    }
    let body = buf[end..end + length].to_vec();
    buf.drain(..end + length);
    Ok(Some((head, body)))
}

/// One keep-alive connection to moto, used by one request at a time.
struct Upstream {
    addr: String,
    conn: tokio::sync::Mutex<Option<tokio::net::TcpStream>>,
}

impl Upstream {
    /// Sends one request and reads its whole response, holding the lock
    /// (so moto never sees two requests at once).
    async fn exchange(&self, request: &[u8]) -> std::io::Result<Vec<u8>> {
        use tokio::io::AsyncWriteExt;
        let mut conn = self.conn.lock().await;
        for attempt in 0..2 {
            let fresh = conn.is_none();
            if fresh {
                *conn = Some(tokio::net::TcpStream::connect(&self.addr).await?);
            }
            let stream = conn.as_mut().expect("connected");
            stream.write_all(request).await?;
            let mut buf = Vec::new();
            match read_message(stream, &mut buf).await {
                Ok(Some((head, body))) => {
                    if header(&head, "connection").as_deref() == Some("close") {
                        *conn = None;
                    }
                    let mut response = head.into_bytes();
                    response.extend_from_slice(&body);
                    return Ok(response);
                }
                // An idle keep-alive connection moto had closed: once more
                // on a new one.
                Ok(None) if !fresh && attempt == 0 => *conn = None,
                Ok(None) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Err(e) => {
                    *conn = None;
                    return Err(e);
                }
            }
        }
        Err(std::io::ErrorKind::UnexpectedEof.into())
    }
}

/// Forwards the requests of one client connection, one at a time overall.
async fn proxy_connection(
    mut client: tokio::net::TcpStream,
    upstream: &Upstream,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::new();
    while let Some((head, body)) = read_message(&mut client, &mut buf).await? {
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        let response = upstream.exchange(&request).await?;
        client.write_all(&response).await?;
    }
    Ok(())
}

/// A fresh table on moto. Every call of the returned closure builds another
/// store (and SDK client) on it, as another process would.
async fn backend() -> impl Fn() -> DynamoStore {
    let sdk = sdk().await;
    let table = common::unique("t");
    let store = DynamoStore::new(&sdk, &table);
    if let Err(e) = store.create_table().await {
        panic!("create table {table}: {e}");
    }
    move || DynamoStore::new(&sdk, &table)
}

#[tokio::test]
async fn create_then_load() {
    conformance::create_then_load(&(backend().await)()).await;
}

#[tokio::test]
async fn one_active_rollout_per_service() {
    conformance::one_active_rollout_per_service(&(backend().await)()).await;
}

#[tokio::test]
async fn update_is_compare_and_swap() {
    conformance::update_is_compare_and_swap(&(backend().await)()).await;
}

#[tokio::test]
async fn listing_order_and_limit() {
    conformance::listing_order_and_limit(&(backend().await)()).await;
}

#[tokio::test]
async fn claim_once() {
    conformance::claim_once(&(backend().await)()).await;
}

#[tokio::test]
async fn claim_race() {
    conformance::claim_race(&backend().await).await;
}

#[tokio::test]
async fn lease_race() {
    conformance::lease_race(&backend().await).await;
}

#[tokio::test]
async fn lease_lifecycle() {
    conformance::lease_lifecycle(&backend().await).await;
}

#[tokio::test]
async fn lease_renewal() {
    conformance::lease_renewal(&(backend().await)()).await;
}

#[tokio::test]
async fn concurrent_update() {
    conformance::concurrent_update(&backend().await).await;
}

#[tokio::test]
async fn commands() {
    conformance::commands(&(backend().await)()).await;
}

#[tokio::test]
async fn event_log() {
    conformance::event_log(&(backend().await)()).await;
}

#[tokio::test]
async fn writer_and_lease_holder() {
    conformance::writer_and_lease_holder(&(backend().await)()).await;
}

#[tokio::test]
async fn commands_store_wide() {
    conformance::commands_store_wide(&(backend().await)()).await;
}

// ---- DynamoDB-specific ------------------------------------------------

#[tokio::test]
async fn create_table_makes_the_table_and_is_idempotent() {
    let sdk = sdk().await;
    let table = common::unique("t");
    let store = DynamoStore::new(&sdk, &table);
    assert_eq!(store.table(), table);
    assert!(!store.table_exists().await.unwrap(), "not created yet");

    store.create_table().await.expect("create");
    assert!(store.table_exists().await.unwrap());
    store
        .create_table()
        .await
        .expect("creating an existing table is fine");

    let described = aws_sdk_dynamodb::Client::new(&sdk)
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let t = described.table().unwrap();
    let keys: Vec<(&str, &str)> = t
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name(), k.key_type().as_str()))
        .collect();
    assert_eq!(keys, [("pk", "HASH"), ("sk", "RANGE")]);
    assert_eq!(
        t.billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .map(|m| m.as_str()),
        Some("PAY_PER_REQUEST")
    );

    // The store works on it.
    store
        .create("r", "svc", "s", true, Timestamp(1))
        .await
        .unwrap();
    assert_eq!(store.load("r").await.unwrap().unwrap().version, 1);
}

#[tokio::test]
async fn create_table_refuses_a_table_with_another_key_schema() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let sdk = sdk().await;
    let table = common::unique("t");
    aws_sdk_dynamodb::Client::new(&sdk)
        .create_table()
        .table_name(&table)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    let err = DynamoStore::new(&sdk, &table)
        .create_table()
        .await
        .expect_err("wrong schema");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(msg.contains(&table) && msg.contains("`pk`"), "{msg}");
}

#[test]
fn table_definition_describes_the_table() {
    let def = DynamoStore::table_definition("cutover-state");
    let json: serde_json::Value = serde_json::from_str(&def).expect("JSON");
    assert_eq!(json["TableName"], "cutover-state");
    assert_eq!(json["BillingMode"], "PAY_PER_REQUEST");
    assert_eq!(
        json["KeySchema"],
        serde_json::json!([
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"}
        ])
    );
}

#[tokio::test]
async fn a_missing_table_is_an_error_naming_it() {
    let sdk = sdk().await;
    let table = common::unique("missing");
    let store = DynamoStore::new(&sdk, &table);
    let err = store.load("r").await.expect_err("no table");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(msg.contains(&table) && msg.contains("init-store"), "{msg}");
    let err = store
        .claim_trigger("k", "o", Timestamp(1))
        .await
        .expect_err("no table");
    assert!(err.to_string().contains(&table), "{err}");
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

#[tokio::test]
async fn corrupt_items_are_errors_naming_the_key() {
    let sdk = sdk().await;
    let table = common::unique("t");
    let store = DynamoStore::new(&sdk, &table);
    store.create_table().await.unwrap();
    store
        .create("broken", "svc", "s", true, Timestamp(1))
        .await
        .unwrap();
    let good = store
        .post_command("broken", Command::Pause, Timestamp(2))
        .await
        .unwrap();

    let client = aws_sdk_dynamodb::Client::new(&sdk);
    // A version that is not a number, and an unknown command.
    client
        .update_item()
        .table_name(&table)
        .key("pk", s("ROLLOUT#broken"))
        .key("sk", s("ROLLOUT"))
        .update_expression("SET #v = :v")
        .expression_attribute_names("#v", "version")
        .expression_attribute_values(":v", s("four"))
        .send()
        .await
        .unwrap();
    let bad_seq = good + 1;
    client
        .put_item()
        .table_name(&table)
        .set_item(Some(HashMap::from([
            ("pk".to_owned(), s("ROLLOUT#broken")),
            ("sk".to_owned(), s(&format!("CMD#{bad_seq:020}"))),
            ("rollout_id".to_owned(), s("broken")),
            ("seq".to_owned(), AttributeValue::N(bad_seq.to_string())),
            ("command".to_owned(), s("explode")),
            ("posted_at".to_owned(), AttributeValue::N("3".into())),
        ])))
        .send()
        .await
        .unwrap();

    for result in [
        store.load("broken").await.map(|_| ()),
        store.list_active().await.map(|_| ()),
        store.list_for_service("svc", 10).await.map(|_| ()),
        store
            .update("broken", 1, "x", true, Timestamp(5))
            .await
            .map(|_| ()),
    ] {
        let err = result.expect_err("a string version must be an error");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        assert!(
            msg.contains("ROLLOUT#broken") && msg.contains("version"),
            "{msg}"
        );
    }

    let err = store
        .commands_after("broken", 0)
        .await
        .expect_err("unknown command must be an error");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(
        msg.contains(&format!("CMD#{bad_seq:020}")) && msg.contains("explode"),
        "{msg}"
    );
    // Reading past the bad item works again.
    assert!(store
        .commands_after("broken", bad_seq)
        .await
        .unwrap()
        .is_empty());
}

/// Posters racing for the store-wide sequence: every command gets its own
/// number and all of them are read back, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_posts_get_distinct_increasing_seqs() {
    let new_store = backend().await;
    let store = new_store();
    store
        .create("r", "svc", "s", true, Timestamp(1))
        .await
        .unwrap();
    let posters: Vec<_> = (0..4)
        .map(|i| {
            let store = new_store();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for j in 0..5 {
                    let at = Timestamp(100 * i + j);
                    seqs.push(store.post_command("r", Command::Pause, at).await);
                }
                seqs
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for p in posters {
        for seq in p.await.unwrap() {
            seqs.push(seq.expect("post"));
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    let read: Vec<u64> = store
        .commands_after("r", 0)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(read, seqs);
}

#[tokio::test]
async fn large_values_round_trip() {
    let store = (backend().await)();
    let created = store
        .create("big", "svc", "s", false, Timestamp(u64::MAX))
        .await
        .unwrap();
    assert_eq!(store.load("big").await.unwrap(), Some(created));
    assert_eq!(
        store.list_for_service("svc", 1).await.unwrap()[0].created_at,
        Timestamp(u64::MAX)
    );
    // A lease with an enormous ttl is held "forever".
    let forever = std::time::Duration::from_millis(u64::MAX);
    assert!(store
        .acquire_lease("l", "a", Timestamp(1), forever)
        .await
        .unwrap());
    assert!(!store
        .acquire_lease("l", "b", Timestamp(u64::MAX - 1), forever)
        .await
        .unwrap());
    assert_eq!(store.commands_after("big", u64::MAX).await.unwrap(), vec![]);
    assert_eq!(
        store
            .update("big", u64::MAX, "x", false, Timestamp(2))
            .await,
        Err(StoreError::Conflict {
            id: "big".into(),
            expected: u64::MAX,
            found: Some(1)
        })
    );
}

/// A long bake at a 10 s interval, written to DynamoDB as the engine writes
/// it (one commit per transition, with its events), stays far from the
/// 400 KB item limit: the snapshot keeps counters, the decisions go to
/// items of their own, so no item grows with the rollout's length. The
/// machine runs in simulated time against a router that does what it is
/// told and a check that passes.
///
/// An hour, not a day: moto copies the whole table for every transaction,
/// so each one costs time linear in the items stored (measured: 16 ms with
/// none, 50 ms with 1 000, 100 ms with 2 000), and a day's 8 640 commits
/// would take over half an hour. The day-long run is the SQLite driver test
/// `a_day_long_bake_keeps_the_snapshot_small_and_every_decision_in_the_log`,
/// whose snapshot is this item's `state`; here the snapshot is shown not to
/// grow from the first hold to the end.
#[tokio::test]
async fn a_long_bake_keeps_every_item_far_below_the_item_limit() {
    use cutover_core::{Action, Input, Observation, Rollout, Split, Timestamp, Verdict};
    use cutover_engine::driver::encode_events;
    use cutover_engine::store::Change;

    let store = (backend().await)();
    let text = "[service]\nname = \"web\"\n[router]\nkind = \"local\"\nadmin_url = \"http://127.0.0.1:1\"\n\
                [strategy]\npreset = \"canary\"\nsplit = 10\nhold = \"10m\"\nbake = \"1h\"\n[analysis]\ninterval = \"10s\"\n";
    let plan = cutover_core::plan::parse(text, "t.toml").unwrap();
    let mut now = Timestamp(1_700_000_000_000);
    let mut rollout = Rollout::new(plan, false, now);
    let commit = |rollout: &mut Rollout, version: u64, now: Timestamp| {
        let events = encode_events(&rollout.take_events());
        let state = rollout.to_snapshot();
        let active = !rollout.phase.is_terminal();
        let store = &store;
        async move {
            let change = Change {
                state: &state,
                active,
                events: &events,
                writer: "sim",
                now,
            };
            let r = if version == 0 {
                store.create_rollout("day", "web", change).await
            } else {
                store.commit("day", version, change).await
            };
            r.unwrap().version
        }
    };
    let mut version = commit(&mut rollout, 0, now).await;
    let mut router = Split::ZERO;
    let mut queue: Vec<Action> = rollout.handle(now, Input::Start);
    let mut largest_state = 0;
    let mut after_first_hold = None;
    while !rollout.phase.is_terminal() {
        if queue.is_empty() {
            now = rollout.next_wakeup().expect("a timer");
            queue = rollout.handle(now, Input::Tick);
            continue;
        }
        let input = match queue.remove(0) {
            Action::Preflight => Input::Preflight(Ok(())),
            Action::ApplySplit(s) => {
                router = s;
                Input::SplitApplied {
                    requested: s,
                    realized: s,
                }
            }
            Action::ReadSplit => Input::SplitRead(router),
            Action::RunAnalysis => Input::Analysis(vec![Observation::new(
                "errors",
                Verdict::Pass,
                "green error rate 0 % <= 1 % over 1200 requests (0 5xx) in the last 10s",
            )]),
            other => panic!("unexpected {other:?}"),
        };
        queue.extend(rollout.handle(now, input));
        largest_state = largest_state.max(rollout.to_snapshot().len());
        if rollout.step == 1 && after_first_hold.is_none() {
            after_first_hold = Some(rollout.to_snapshot().len());
        }
        version = commit(&mut rollout, version, now).await;
    }
    assert_eq!(rollout.phase, cutover_core::Phase::Succeeded);
    let events = store.events("day", 0, usize::MAX).await.unwrap();
    assert_eq!(events.len() as u64, rollout.events);
    assert!(events.len() > 80 * 6, "{} events", events.len());

    // Every item of the rollout, as DynamoDB stores it.
    let sdk = sdk().await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let mut largest_item = 0usize;
    let mut items = 0;
    let mut start = None;
    loop {
        let out = client
            .query()
            .table_name(store.table())
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(
                ":pk",
                aws_sdk_dynamodb::types::AttributeValue::S("ROLLOUT#day".into()),
            )
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .unwrap();
        for item in out.items() {
            items += 1;
            // DynamoDB's item size: attribute names plus values.
            let size: usize = item
                .iter()
                .map(|(k, v)| {
                    k.len()
                        + match v {
                            aws_sdk_dynamodb::types::AttributeValue::S(s) => s.len(),
                            aws_sdk_dynamodb::types::AttributeValue::N(n) => n.len(),
                            _ => 8,
                        }
                })
                .sum();
            largest_item = largest_item.max(size);
        }
        match out.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => break,
        }
    }
    assert_eq!(
        items,
        events.len() + 1,
        "the snapshot and one item per event"
    );
    assert!(
        largest_item < 16 * 1024,
        "largest item {largest_item} bytes (limit 400 KB)"
    );
    assert!(
        largest_state < 8 * 1024,
        "largest snapshot {largest_state} bytes"
    );
    // The snapshot does not grow with the length of the rollout.
    let first = after_first_hold.expect("reached step 2");
    assert!(
        largest_state <= first + 512,
        "grew from {first} to {largest_state} bytes"
    );
}
