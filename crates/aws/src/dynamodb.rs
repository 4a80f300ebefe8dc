//! The [`Store`] on DynamoDB: one table, single-table design, on-demand
//! billing.
//!
//! Key schema: partition key `pk` (S), sort key `sk` (S). Items:
//!
//! | item                | `pk`               | `sk`                          | attributes |
//! |---------------------|--------------------|-------------------------------|------------|
//! | rollout             | `ROLLOUT#<id>`     | `ROLLOUT`                     | `id`, `service`, `version` (N), `active` (BOOL), `state`, `created_at` (N), `updated_at` (N) |
//! | active marker       | `ACTIVE`           | `SERVICE#<service>`           | `rollout_id`, `created_at` (N) |
//! | service index entry | `SERVICE#<service>`| `<created_at:020>#<id>`       | `rollout_id` |
//! | trigger claim       | `TRIGGER#<key>`    | `TRIGGER`                     | `owner`, `claimed_at` (N) |
//! | lease               | `LEASE#<name>`     | `LEASE`                       | `holder`, `expires_at` (N) |
//! | command counter     | `COUNTER`          | `COMMANDS`                    | `seq` (N) |
//! | command             | `ROLLOUT#<id>`     | `CMD#<seq:020>`               | `rollout_id`, `seq` (N), `command`, `posted_at` (N) |
//! | command, store-wide | `COMMANDS`         | `CMD#<seq:020>`               | the same |
//! | event               | `ROLLOUT#<id>`     | `EVT#<seq:020>`               | `seq` (N), `at` (N), `body` |
//!
//! A rollout's events are written in the same transaction as the version
//! they lead to, each with `attribute_not_exists(pk)`; a transaction holds
//! at most 100 items, so a write with more events (only a schema-1
//! snapshot's history being moved into the log) puts the oldest ones
//! first, on their own: they are the same items whoever writes them.
//!
//! Every write that could race is conditional in DynamoDB itself:
//! - one active rollout per service: the active marker, written with
//!   `attribute_not_exists(pk)` in the same `TransactWriteItems` as the
//!   rollout (create, or an update that re-activates), and deleted in the
//!   same transaction as the update that ends the rollout;
//! - ids: the rollout item is put with `attribute_not_exists(pk)`;
//! - updates: `version = :expected`; an update that keeps the `active` flag
//!   is a single `UpdateItem`, one that flips it a transaction with the
//!   marker;
//! - trigger claims: `PutItem` with `attribute_not_exists(pk)`;
//! - leases: `PutItem` with `attribute_not_exists(pk) OR holder = :h OR
//!   expires_at <= :now`;
//! - commands: one transaction moves the store-wide counter from `n` to
//!   `n + 1` (conditional on `n`), checks that the rollout exists and puts
//!   command `n + 1`, so sequence numbers are visible in order and never
//!   skipped by a reader.
//!
//! Listings only use the keys, never a scan or an (eventually consistent)
//! index: `list_active` queries the `ACTIVE` partition and
//! `list_for_service` the service's index partition, newest first; both
//! then fetch the rollouts with strongly consistent `BatchGetItem`.
//! Index entries never change after creation (service and creation time
//! are fixed), so updates touch only the rollout and, when `active` flips,
//! its marker.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{BuildError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, ConditionCheck, Delete,
    KeySchemaElement, KeyType, KeysAndAttributes, Put, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus, TransactWriteItem,
    Update,
};
use aws_sdk_dynamodb::Client;
use cutover_core::{Command, Timestamp};
use cutover_engine::store::{
    Change, EventRecord, Lease, PostedCommand, RolloutRecord, Store, StoreError,
};

type Item = HashMap<String, AttributeValue>;

/// How often a write retries after losing a transaction conflict (or, for
/// commands, the race for the next sequence number) before giving up.
const ATTEMPTS: u32 = 10;
/// How long `create_table` waits for the table to become ACTIVE.
const CREATE_TIMEOUT: Duration = Duration::from_secs(300);
/// `BatchGetItem` takes at most this many keys.
const BATCH_GET_MAX: usize = 100;

const ACTIVE_PK: &str = "ACTIVE";
const ROLLOUT_SK: &str = "ROLLOUT";
const COUNTER_PK: &str = "COUNTER";
const COUNTER_SK: &str = "COMMANDS";
const CCF: &str = "ConditionalCheckFailed";

fn rollout_pk(id: &str) -> String {
    format!("ROLLOUT#{id}")
}

fn marker_sk(service: &str) -> String {
    format!("SERVICE#{service}")
}

fn service_pk(service: &str) -> String {
    format!("SERVICE#{service}")
}

fn service_sk(created_at: Timestamp, id: &str) -> String {
    format!("{:020}#{id}", created_at.as_millis())
}

fn command_sk(seq: u64) -> String {
    format!("CMD#{seq:020}")
}

fn event_sk(seq: u64) -> String {
    format!("EVT#{seq:020}")
}

const COMMANDS_PK: &str = "COMMANDS";
/// `TransactWriteItems` takes at most this many items.
const TRANSACT_MAX: usize = 100;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: String, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

/// A [`Store`] in one DynamoDB table (see the module docs for its layout).
///
/// Cheap to clone; clones share one SDK client.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: Arc<str>,
    /// Rollouts' fields that never change (service, creation time), as
    /// last read or written, so a commit can return its record without a
    /// read first. Bounded; a miss only costs that read.
    fixed: Arc<std::sync::Mutex<HashMap<String, (String, Timestamp)>>>,
}

/// How many rollouts' fixed fields [`DynamoStore`] remembers.
const FIXED_CACHE: usize = 100_000;

impl DynamoStore {
    /// A store on `table`. Does not touch the network; see
    /// [`DynamoStore::create_table`] and [`DynamoStore::table_exists`].
    pub fn new(sdk: &aws_config::SdkConfig, table: &str) -> DynamoStore {
        DynamoStore {
            client: Client::new(sdk),
            table: Arc::from(table),
            fixed: Arc::default(),
        }
    }

    /// The table this store uses.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// What [`DynamoStore::create_table`] creates, as the JSON input of
    /// `CreateTable` (usable with `aws dynamodb create-table --cli-input-json`).
    pub fn table_definition(table: &str) -> String {
        let def = serde_json::json!({
            "TableName": table,
            "AttributeDefinitions": [
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"}
            ],
            "KeySchema": [
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"}
            ],
            "BillingMode": "PAY_PER_REQUEST"
        });
        serde_json::to_string_pretty(&def).unwrap_or_else(|_| def.to_string())
    }

    /// Whether the table exists (in any status).
    pub async fn table_exists(&self) -> Result<bool, StoreError> {
        match self
            .client
            .describe_table()
            .table_name(self.table.as_ref())
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.sdk_error("describe table", e)),
        }
    }

    /// Creates the table (on-demand billing, key `pk`/`sk`) and waits until
    /// it is ACTIVE, for at most 5 minutes. An existing table with the
    /// right key schema is accepted as is; one with another schema is an
    /// error.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
        };
        let created = self
            .client
            .create_table()
            .table_name(self.table.as_ref())
            .attribute_definitions(self.built(attr("pk"))?)
            .attribute_definitions(self.built(attr("sk"))?)
            .key_schema(self.built(key("pk", KeyType::Hash))?)
            .key_schema(self.built(key("sk", KeyType::Range))?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) => {}
            Err(e) => return Err(self.sdk_error("create table", e)),
        }

        let deadline = Instant::now() + CREATE_TIMEOUT;
        let mut pause = Duration::from_millis(200);
        loop {
            let described = self
                .client
                .describe_table()
                .table_name(self.table.as_ref())
                .send()
                .await
                .map_err(|e| self.sdk_error("describe table", e))?;
            let table = described.table();
            let status = table.and_then(|t| t.table_status());
            if status == Some(&TableStatus::Active) {
                let schema: Vec<(&str, &KeyType)> = table
                    .map(|t| t.key_schema())
                    .unwrap_or_default()
                    .iter()
                    .map(|k| (k.attribute_name(), k.key_type()))
                    .collect();
                if schema != [("pk", &KeyType::Hash), ("sk", &KeyType::Range)] {
                    return Err(self.error(&format!(
                        "the table exists with key schema {schema:?}; cutover needs partition key `pk` (S) and sort key `sk` (S)"
                    )));
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.error(&format!(
                    "the table is still {status:?} after {CREATE_TIMEOUT:?}; try again later"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    // ---- errors -------------------------------------------------------

    fn error(&self, msg: &str) -> StoreError {
        StoreError::Backend(format!("dynamodb table `{}`: {msg}", self.table))
    }

    fn sdk_error<E>(&self, op: &str, e: E) -> StoreError
    where
        E: std::error::Error + ProvideErrorMetadata,
    {
        let hint = match e.code() {
            Some("ResourceNotFoundException") => {
                " (does the table exist? create it with `cutover init-store`)"
            }
            _ => "",
        };
        self.error(&format!("{op}: {}{hint}", DisplayErrorContext(&e)))
    }

    fn built<T>(&self, r: Result<T, BuildError>) -> Result<T, StoreError> {
        r.map_err(|e| self.error(&format!("cannot build a request: {e}")))
    }

    fn cancelled(&self, op: &str, reasons: &[CancellationReason]) -> StoreError {
        let codes: Vec<String> = reasons
            .iter()
            .map(|r| match (r.code(), r.message()) {
                (Some(c), Some(m)) => format!("{c} ({m})"),
                (Some(c), None) => c.to_owned(),
                (None, _) => "None".to_owned(),
            })
            .collect();
        self.error(&format!(
            "{op}: transaction cancelled: [{}]",
            codes.join(", ")
        ))
    }

    fn reader<'a>(&'a self, item: &'a Item) -> Reader<'a> {
        Reader {
            table: &self.table,
            item,
        }
    }

    // ---- request helpers ----------------------------------------------

    fn put(
        &self,
        item: Item,
        condition: Option<&str>,
        values: Item,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut put = Put::builder()
            .table_name(self.table.as_ref())
            .set_item(Some(item))
            .set_condition_expression(condition.map(str::to_owned));
        if !values.is_empty() {
            put = put.set_expression_attribute_values(Some(values));
        }
        Ok(TransactWriteItem::builder()
            .put(self.built(put.build())?)
            .build())
    }

    /// The transaction items appending `events` to rollout `id`, leaving
    /// room for `others` items; older events that do not fit are put now,
    /// on their own (harmless: the same items whoever writes them).
    async fn event_puts(
        &self,
        id: &str,
        events: &[EventRecord],
        others: usize,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let room = TRANSACT_MAX - others;
        let split = events.len().saturating_sub(room);
        for e in &events[..split] {
            self.client
                .put_item()
                .table_name(self.table.as_ref())
                .set_item(Some(event_item(id, e)))
                .send()
                .await
                .map_err(|err| self.sdk_error("append events", err))?;
        }
        events[split..]
            .iter()
            .map(|e| {
                self.put(
                    event_item(id, e),
                    Some("attribute_not_exists(pk)"),
                    Item::new(),
                )
            })
            .collect()
    }

    /// Runs a transaction: `Ok(Ok(()))` if it committed, `Ok(Err(reasons))`
    /// if DynamoDB cancelled it (one reason per item, in order).
    async fn transact(
        &self,
        op: &str,
        items: Vec<TransactWriteItem>,
    ) -> Result<Result<(), Vec<CancellationReason>>, StoreError> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c)) => {
                    Ok(Err(c.cancellation_reasons().to_vec()))
                }
                _ => Err(self.sdk_error(op, e)),
            },
        }
    }

    async fn get(&self, op: &str, key: Item) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(self.table.as_ref())
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.sdk_error(op, e))?;
        Ok(out.item)
    }

    /// The lease `name`, read strongly consistent.
    async fn read_lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let item = self
            .get("read lease", key(format!("LEASE#{name}"), "LEASE"))
            .await?;
        item.map(|i| {
            let r = self.reader(&i);
            Ok(Lease {
                holder: r.s("holder")?.to_owned(),
                expires_at: Timestamp(r.n("expires_at")?),
            })
        })
        .transpose()
    }

    /// After a lease write's condition failed: true if `holder` holds the
    /// lease all the same (it already lasted longer than the write asked).
    async fn holds(&self, op: &str, name: &str, holder: &str) -> Result<bool, StoreError> {
        Ok(self
            .read_lease(name)
            .await
            .map_err(|e| StoreError::Backend(format!("{op}: {e}")))?
            .is_some_and(|l| l.holder == holder))
    }

    /// The id of the service's active rollout, from its marker.
    async fn active_id(&self, service: &str) -> Result<Option<String>, StoreError> {
        let marker = self
            .get(
                "read the active marker",
                key(ACTIVE_PK.to_owned(), marker_sk(service)),
            )
            .await?;
        marker
            .map(|m| self.reader(&m).s("rollout_id").map(str::to_owned))
            .transpose()
    }

    /// All items of a partition (`sk` between `from` and `to` if given),
    /// strongly consistent, in `sk` order (descending if `!forward`), at
    /// most `limit`.
    async fn query(
        &self,
        op: &str,
        pk: String,
        between: Option<(String, String)>,
        forward: bool,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        while items.len() < limit {
            let page = (limit - items.len()).min(1_000) as i32;
            let mut q = self
                .client
                .query()
                .table_name(self.table.as_ref())
                .consistent_read(true)
                .scan_index_forward(forward)
                .limit(page)
                .expression_attribute_values(":pk", s(pk.clone()))
                .set_exclusive_start_key(start.take());
            q = match &between {
                Some((from, to)) => q
                    .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                    .expression_attribute_values(":from", s(from.clone()))
                    .expression_attribute_values(":to", s(to.clone())),
                None => q.key_condition_expression("pk = :pk"),
            };
            let out = q.send().await.map_err(|e| self.sdk_error(op, e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        items.truncate(limit);
        Ok(items)
    }

    /// The rollouts with these ids that exist, strongly consistent.
    async fn rollouts(&self, ids: &[String]) -> Result<HashMap<String, RolloutRecord>, StoreError> {
        let unique: Vec<&String> = {
            let mut seen = HashSet::new();
            ids.iter().filter(|id| seen.insert(*id)).collect()
        };
        let mut found = HashMap::new();
        for chunk in unique.chunks(BATCH_GET_MAX) {
            let keys: Vec<Item> = chunk
                .iter()
                .map(|id| key(rollout_pk(id), ROLLOUT_SK))
                .collect();
            let mut request = Some(
                self.built(
                    KeysAndAttributes::builder()
                        .set_keys(Some(keys))
                        .consistent_read(true)
                        .build(),
                )?,
            );
            let mut attempt = 0;
            while let Some(req) = request.take() {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(self.table.as_ref(), req)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error("read rollouts", e))?;
                for item in out
                    .responses
                    .and_then(|mut r| r.remove(self.table.as_ref()))
                    .unwrap_or_default()
                {
                    let record = self.reader(&item).rollout()?;
                    found.insert(record.id.clone(), record);
                }
                request = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(self.table.as_ref()))
                    .filter(|k| !k.keys().is_empty());
                if request.is_some() {
                    attempt += 1;
                    if attempt >= ATTEMPTS {
                        return Err(self.error(&format!(
                            "read rollouts: BatchGetItem left keys unprocessed after {ATTEMPTS} attempts"
                        )));
                    }
                    backoff(attempt).await;
                }
            }
        }
        Ok(found)
    }

    /// Re-activates or ends rollout `old` (whose version is `expected`):
    /// the rollout and its service's marker in one transaction.
    async fn update_with_marker(
        &self,
        old: RolloutRecord,
        expected: u64,
        change: &Change<'_>,
    ) -> Result<RolloutRecord, StoreError> {
        let (state, active, now) = (change.state, change.active, change.now);
        let op = if active {
            "re-activate rollout"
        } else {
            "end rollout"
        };
        let next = expected
            .checked_add(1)
            .ok_or_else(|| self.error(&format!("{op} `{}`: version overflow", old.id)))?;
        let record = RolloutRecord {
            version: next,
            active,
            state: state.to_owned(),
            updated_at: now,
            written_by: change.writer.to_owned(),
            ..old
        };
        let events = self.event_puts(&record.id, change.events, 2).await?;
        for attempt in 0..ATTEMPTS {
            let update = Update::builder()
                .table_name(self.table.as_ref())
                .set_key(Some(key(rollout_pk(&record.id), ROLLOUT_SK)))
                .update_expression(
                    "SET #version = :next, #state = :state, #active = :active, #updated = :now, #writer = :writer",
                )
                .expression_attribute_names("#writer", "written_by")
                .expression_attribute_values(":writer", s(change.writer))
                .condition_expression("#version = :expected")
                .expression_attribute_names("#version", "version")
                .expression_attribute_names("#state", "state")
                .expression_attribute_names("#active", "active")
                .expression_attribute_names("#updated", "updated_at")
                .expression_attribute_values(":next", n(next))
                .expression_attribute_values(":state", s(state))
                .expression_attribute_values(":active", AttributeValue::Bool(active))
                .expression_attribute_values(":now", n(now.as_millis()))
                .expression_attribute_values(":expected", n(expected))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            let update = TransactWriteItem::builder()
                .update(self.built(update.build())?)
                .build();
            // A marker naming this rollout is ours whatever we do; any other
            // must be left alone.
            let mine = "attribute_not_exists(pk) OR rollout_id = :id";
            let marker_key = key(ACTIVE_PK.to_owned(), marker_sk(&record.service));
            let marker = if active {
                let mut item = marker_key;
                item.insert("rollout_id".into(), s(record.id.clone()));
                item.insert("created_at".into(), n(record.created_at.as_millis()));
                self.put(
                    item,
                    Some(mine),
                    HashMap::from([(":id".to_owned(), s(record.id.clone()))]),
                )?
            } else {
                let delete = Delete::builder()
                    .table_name(self.table.as_ref())
                    .set_key(Some(marker_key))
                    .condition_expression(mine)
                    .expression_attribute_values(":id", s(record.id.clone()));
                TransactWriteItem::builder()
                    .delete(self.built(delete.build())?)
                    .build()
            };
            let mut items = vec![update, marker];
            items.extend(events.iter().cloned());
            let reasons = match self.transact(op, items).await? {
                Ok(()) => return Ok(record),
                Err(reasons) => reasons,
            };
            if failed(&reasons, 0) {
                let found = match reasons[0].item() {
                    Some(item) => Some(self.reader(item).n("version")?),
                    None => self.load(&record.id).await?.map(|r| r.version),
                };
                return Err(StoreError::Conflict {
                    id: record.id,
                    expected,
                    found,
                });
            }
            if failed(&reasons, 1) {
                if !active {
                    return Err(self.error(&format!(
                        "{op} `{}`: the active marker of service `{}` names another rollout; the table is inconsistent",
                        record.id, record.service
                    )));
                }
                match self.active_id(&record.service).await? {
                    Some(id) => {
                        return Err(StoreError::ActiveExists {
                            service: record.service,
                            id,
                        })
                    }
                    // It ended meanwhile: try again.
                    None => continue,
                }
            }
            if conflicted(&reasons) {
                backoff(attempt).await;
                continue;
            }
            return Err(self.cancelled(op, &reasons));
        }
        Err(self.error(&format!(
            "{op} `{}`: gave up after {ATTEMPTS} conflicting attempts",
            record.id
        )))
    }
}

impl DynamoStore {
    fn fixed_of(&self, id: &str) -> Option<(String, Timestamp)> {
        self.fixed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn remember(&self, r: &RolloutRecord) {
        let mut fixed = self.fixed.lock().unwrap_or_else(|e| e.into_inner());
        if fixed.len() >= FIXED_CACHE {
            fixed.clear();
        }
        fixed.insert(r.id.clone(), (r.service.clone(), r.created_at));
    }

    /// [`Store::commit`] with events: the update and the events in one
    /// transaction (the marker too, when the `active` flag flips).
    async fn commit_with_events(
        &self,
        id: &str,
        expected: u64,
        next: u64,
        change: &Change<'_>,
    ) -> Result<RolloutRecord, StoreError> {
        let op = "update rollout";
        // Service and creation time never change: known from an earlier
        // read or write, or read now, to return the record written.
        let (service, created_at) = match self.fixed_of(id) {
            Some(f) => f,
            None => match self.load(id).await? {
                Some(r) => (r.service, r.created_at),
                None => {
                    return Err(StoreError::Conflict {
                        id: id.to_owned(),
                        expected,
                        found: None,
                    })
                }
            },
        };
        let events = self.event_puts(id, change.events, 1).await?;
        for attempt in 0..ATTEMPTS {
            let update = Update::builder()
                .table_name(self.table.as_ref())
                .set_key(Some(key(rollout_pk(id), ROLLOUT_SK)))
                .update_expression(
                    "SET #version = :next, #state = :state, #updated = :now, #writer = :writer",
                )
                .condition_expression("#version = :expected AND #active = :active")
                .expression_attribute_names("#version", "version")
                .expression_attribute_names("#state", "state")
                .expression_attribute_names("#active", "active")
                .expression_attribute_names("#updated", "updated_at")
                .expression_attribute_names("#writer", "written_by")
                .expression_attribute_values(":next", n(next))
                .expression_attribute_values(":state", s(change.state))
                .expression_attribute_values(":active", AttributeValue::Bool(change.active))
                .expression_attribute_values(":now", n(change.now.as_millis()))
                .expression_attribute_values(":writer", s(change.writer))
                .expression_attribute_values(":expected", n(expected))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            let mut items = vec![TransactWriteItem::builder()
                .update(self.built(update.build())?)
                .build()];
            items.extend(events.iter().cloned());
            let reasons = match self.transact(op, items).await? {
                Ok(()) => {
                    return Ok(RolloutRecord {
                        id: id.to_owned(),
                        service,
                        version: next,
                        active: change.active,
                        state: change.state.to_owned(),
                        created_at,
                        updated_at: change.now,
                        written_by: change.writer.to_owned(),
                    })
                }
                Err(reasons) => reasons,
            };
            if failed(&reasons, 0) {
                let old = match reasons[0].item() {
                    Some(item) => Some(self.reader(item).rollout()?),
                    None => self.load(id).await?,
                };
                return match old {
                    // The flag flips: the marker changes with the rollout.
                    Some(old) if old.version == expected => {
                        self.update_with_marker(old, expected, change).await
                    }
                    old => Err(StoreError::Conflict {
                        id: id.to_owned(),
                        expected,
                        found: old.map(|r| r.version),
                    }),
                };
            }
            if reasons.iter().skip(1).any(|r| r.code() == Some(CCF)) {
                return Err(self.error(&format!(
                    "{op} `{id}`: an event with the same number is already stored; the log and the snapshot disagree"
                )));
            }
            if conflicted(&reasons) {
                backoff(attempt).await;
                continue;
            }
            return Err(self.cancelled(op, &reasons));
        }
        Err(self.error(&format!(
            "{op} `{id}`: gave up after {ATTEMPTS} conflicting attempts"
        )))
    }
}

/// Whether item `i` of a cancelled transaction failed its condition.
fn failed(reasons: &[CancellationReason], i: usize) -> bool {
    reasons.get(i).and_then(|r| r.code()) == Some(CCF)
}

/// Whether a cancelled transaction lost to a concurrent one (worth retrying).
fn conflicted(reasons: &[CancellationReason]) -> bool {
    reasons
        .iter()
        .any(|r| r.code() == Some("TransactionConflict"))
}

/// Sleeps 20 ms * 2^attempt (at most ~1 s), with jitter.
async fn backoff(attempt: u32) {
    let base = 20u64 << attempt.min(6);
    let jitter = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % base.max(1);
    tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
}

/// Reads attributes of one item; anything missing or malformed is a
/// `Backend` error naming the item's key.
struct Reader<'a> {
    table: &'a str,
    item: &'a Item,
}

impl<'a> Reader<'a> {
    fn bad(&self, msg: &str) -> StoreError {
        let part = |k: &str| match self.item.get(k) {
            Some(AttributeValue::S(v)) => v.clone(),
            Some(other) => format!("{other:?}"),
            None => "?".to_owned(),
        };
        StoreError::Backend(format!(
            "dynamodb table `{}`: item pk=`{}` sk=`{}`: {msg}; the table is corrupt",
            self.table,
            part("pk"),
            part("sk")
        ))
    }

    fn s(&self, attr: &str) -> Result<&'a str, StoreError> {
        match self.item.get(attr) {
            Some(AttributeValue::S(v)) => Ok(v),
            Some(other) => Err(self.bad(&format!("attribute `{attr}` is {other:?}, not a string"))),
            None => Err(self.bad(&format!("attribute `{attr}` is missing"))),
        }
    }

    fn n(&self, attr: &str) -> Result<u64, StoreError> {
        match self.item.get(attr) {
            Some(AttributeValue::N(v)) => v.parse().map_err(|_| {
                self.bad(&format!(
                    "attribute `{attr}` is {v}, not a whole number from 0 to {}",
                    u64::MAX
                ))
            }),
            Some(other) => Err(self.bad(&format!("attribute `{attr}` is {other:?}, not a number"))),
            None => Err(self.bad(&format!("attribute `{attr}` is missing"))),
        }
    }

    fn b(&self, attr: &str) -> Result<bool, StoreError> {
        match self.item.get(attr) {
            Some(AttributeValue::Bool(v)) => Ok(*v),
            Some(other) => {
                Err(self.bad(&format!("attribute `{attr}` is {other:?}, not a boolean")))
            }
            None => Err(self.bad(&format!("attribute `{attr}` is missing"))),
        }
    }

    fn rollout(&self) -> Result<RolloutRecord, StoreError> {
        Ok(RolloutRecord {
            id: self.s("id")?.to_owned(),
            service: self.s("service")?.to_owned(),
            version: self.n("version")?,
            active: self.b("active")?,
            state: self.s("state")?.to_owned(),
            created_at: Timestamp(self.n("created_at")?),
            updated_at: Timestamp(self.n("updated_at")?),
            // Absent in items written before it existed.
            written_by: match self.item.get("written_by") {
                None => String::new(),
                Some(_) => self.s("written_by")?.to_owned(),
            },
        })
    }

    fn event(&self) -> Result<EventRecord, StoreError> {
        Ok(EventRecord {
            seq: self.n("seq")?,
            at: Timestamp(self.n("at")?),
            body: self.s("body")?.to_owned(),
        })
    }

    fn command(&self, rollout_id: &str) -> Result<PostedCommand, StoreError> {
        let name = self.s("command")?;
        let command = serde_json::from_value(serde_json::Value::String(name.to_owned()))
            .map_err(|e| self.bad(&format!("unknown command `{name}` ({e})")))?;
        Ok(PostedCommand {
            seq: self.n("seq")?,
            rollout_id: rollout_id.to_owned(),
            command,
            posted_at: Timestamp(self.n("posted_at")?),
        })
    }
}

fn rollout_item(r: &RolloutRecord) -> Item {
    let mut item = key(rollout_pk(&r.id), ROLLOUT_SK);
    item.extend([
        ("id".to_owned(), s(r.id.clone())),
        ("service".to_owned(), s(r.service.clone())),
        ("version".to_owned(), n(r.version)),
        ("active".to_owned(), AttributeValue::Bool(r.active)),
        ("state".to_owned(), s(r.state.clone())),
        ("created_at".to_owned(), n(r.created_at.as_millis())),
        ("updated_at".to_owned(), n(r.updated_at.as_millis())),
        ("written_by".to_owned(), s(r.written_by.clone())),
    ]);
    item
}

fn event_item(id: &str, e: &EventRecord) -> Item {
    let mut item = key(rollout_pk(id), event_sk(e.seq));
    item.extend([
        ("seq".to_owned(), n(e.seq)),
        ("at".to_owned(), n(e.at.as_millis())),
        ("body".to_owned(), s(e.body.clone())),
    ]);
    item
}

fn command_name(command: Command) -> Result<String, String> {
    match serde_json::to_value(command) {
        Ok(serde_json::Value::String(name)) => Ok(name),
        Ok(other) => Err(format!(
            "command {command:?} serialises as {other}, not a name"
        )),
        Err(e) => Err(format!("cannot serialise command {command:?}: {e}")),
    }
}

fn is_ccf<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error()
        .is_some_and(|e| e.code() == Some("ConditionalCheckFailedException"))
}

#[async_trait]
impl Store for DynamoStore {
    async fn create_rollout(
        &self,
        id: &str,
        service: &str,
        change: Change<'_>,
    ) -> Result<RolloutRecord, StoreError> {
        let record = RolloutRecord::created(id, service, &change);
        let (active, now) = (change.active, change.now);
        let op = "create rollout";
        let events = self.event_puts(id, change.events, 3).await?;
        for attempt in 0..ATTEMPTS {
            let new = "attribute_not_exists(pk)";
            let mut index = key(service_pk(service), service_sk(now, id));
            index.insert("rollout_id".into(), s(id));
            let mut items = vec![
                self.put(rollout_item(&record), Some(new), Item::new())?,
                self.put(index, None, Item::new())?,
            ];
            if active {
                let mut marker = key(ACTIVE_PK.to_owned(), marker_sk(service));
                marker.insert("rollout_id".into(), s(id));
                marker.insert("created_at".into(), n(now.as_millis()));
                items.push(self.put(marker, Some(new), Item::new())?);
            }
            items.extend(events.iter().cloned());
            let reasons = match self.transact(op, items).await? {
                Ok(()) => {
                    self.remember(&record);
                    return Ok(record);
                }
                Err(reasons) => reasons,
            };
            if failed(&reasons, 0) {
                return Err(StoreError::DuplicateId(record.id));
            }
            if active && failed(&reasons, 2) {
                match self.active_id(service).await? {
                    Some(id) => {
                        return Err(StoreError::ActiveExists {
                            service: record.service,
                            id,
                        })
                    }
                    // It ended meanwhile: try again.
                    None => continue,
                }
            }
            if conflicted(&reasons) {
                backoff(attempt).await;
                continue;
            }
            return Err(self.cancelled(op, &reasons));
        }
        Err(self.error(&format!(
            "{op} `{id}`: gave up after {ATTEMPTS} conflicting attempts"
        )))
    }

    async fn load(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let item = self
            .get("load rollout", key(rollout_pk(id), ROLLOUT_SK))
            .await?;
        let record = item.map(|i| self.reader(&i).rollout()).transpose()?;
        if let Some(r) = &record {
            self.remember(r);
        }
        Ok(record)
    }

    async fn commit(
        &self,
        id: &str,
        expected_version: u64,
        change: Change<'_>,
    ) -> Result<RolloutRecord, StoreError> {
        let (state, active, now) = (change.state, change.active, change.now);
        // Usually the active flag stays as it is: one conditional UpdateItem
        // (in a transaction with the events, if there are any).
        let Some(next) = expected_version.checked_add(1) else {
            // No stored version can be u64::MAX and still be updated.
            let found = self.load(id).await?.map(|r| r.version);
            return Err(StoreError::Conflict {
                id: id.to_owned(),
                expected: expected_version,
                found,
            });
        };
        if !change.events.is_empty() {
            return self
                .commit_with_events(id, expected_version, next, &change)
                .await;
        }
        let updated = self
            .client
            .update_item()
            .table_name(self.table.as_ref())
            .set_key(Some(key(rollout_pk(id), ROLLOUT_SK)))
            .update_expression(
                "SET #version = :next, #state = :state, #updated = :now, #writer = :writer",
            )
            .condition_expression("#version = :expected AND #active = :active")
            .expression_attribute_names("#writer", "written_by")
            .expression_attribute_values(":writer", s(change.writer))
            .expression_attribute_names("#version", "version")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#active", "active")
            .expression_attribute_names("#updated", "updated_at")
            .expression_attribute_values(":next", n(next))
            .expression_attribute_values(":state", s(state))
            .expression_attribute_values(":active", AttributeValue::Bool(active))
            .expression_attribute_values(":now", n(now.as_millis()))
            .expression_attribute_values(":expected", n(expected_version))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match updated {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                return self.reader(&item).rollout();
            }
            Err(e) if is_ccf(&e) => {
                let item = match e.as_service_error() {
                    Some(
                        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c),
                    ) => c.item().cloned(),
                    _ => None,
                };
                match item {
                    Some(item) => Some(self.reader(&item).rollout()?),
                    None => self.load(id).await?,
                }
            }
            Err(e) => return Err(self.sdk_error("update rollout", e)),
        };
        match old {
            Some(old) if old.version == expected_version => {
                // The flag flips: the marker changes with the rollout.
                self.update_with_marker(old, expected_version, &change)
                    .await
            }
            old => Err(StoreError::Conflict {
                id: id.to_owned(),
                expected: expected_version,
                found: old.map(|r| r.version),
            }),
        }
    }

    async fn events(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let items = self
            .query(
                "read events",
                rollout_pk(id),
                Some((event_sk(first), event_sk(u64::MAX))),
                true,
                limit,
            )
            .await?;
        items.iter().map(|i| self.reader(i).event()).collect()
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.read_lease(name).await
    }

    async fn latest_command_seq(&self) -> Result<u64, StoreError> {
        let counter = self
            .get(
                "read the command counter",
                key(COUNTER_PK.to_owned(), COUNTER_SK),
            )
            .await?;
        match &counter {
            Some(c) => self.reader(c).n("seq"),
            None => Ok(0),
        }
    }

    async fn list_active_ids(&self) -> Result<Vec<(String, String)>, StoreError> {
        // The markers alone: service in the sort key, id as an attribute.
        let markers = self
            .query(
                "list active markers",
                ACTIVE_PK.to_owned(),
                None,
                true,
                usize::MAX,
            )
            .await?;
        let mut out = Vec::with_capacity(markers.len());
        for m in &markers {
            let r = self.reader(m);
            let service = r.s("sk")?.trim_start_matches("SERVICE#").to_owned();
            out.push((r.n("created_at")?, r.s("rollout_id")?.to_owned(), service));
        }
        out.sort();
        Ok(out
            .into_iter()
            .map(|(_, id, service)| (id, service))
            .collect())
    }

    async fn commands_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PostedCommand>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let items = self
            .query(
                "read commands",
                COMMANDS_PK.to_owned(),
                Some((command_sk(first), command_sk(u64::MAX))),
                true,
                limit,
            )
            .await?;
        items
            .iter()
            .map(|item| {
                let r = self.reader(item);
                r.command(r.s("rollout_id")?)
            })
            .collect()
    }

    async fn list_active(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let markers = self
            .query(
                "list active markers",
                ACTIVE_PK.to_owned(),
                None,
                true,
                usize::MAX,
            )
            .await?;
        let ids = markers
            .iter()
            .map(|m| self.reader(m).s("rollout_id").map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        let found = self.rollouts(&ids).await?;
        // A rollout that ended between the two reads is no longer listed.
        let mut active: Vec<RolloutRecord> = found.into_values().filter(|r| r.active).collect();
        active.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(active)
    }

    async fn list_for_service(
        &self,
        service: &str,
        limit: usize,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries = self
            .query(
                "list rollouts of a service",
                service_pk(service),
                None,
                false,
                limit,
            )
            .await?;
        let ids = entries
            .iter()
            .map(|e| self.reader(e).s("rollout_id").map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        let mut found = self.rollouts(&ids).await?;
        let mut records = Vec::with_capacity(ids.len());
        for id in &ids {
            match found.remove(id) {
                Some(r) => records.push(r),
                None => tracing::warn!(
                    table = %self.table,
                    service,
                    rollout = %id,
                    "service index names a rollout that does not exist; skipped"
                ),
            }
        }
        Ok(records)
    }

    async fn claim_trigger(
        &self,
        key_name: &str,
        owner: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut item = key(format!("TRIGGER#{key_name}"), "TRIGGER");
        item.insert("owner".into(), s(owner));
        item.insert("claimed_at".into(), n(now.as_millis()));
        match self
            .client
            .put_item()
            .table_name(self.table.as_ref())
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_ccf(&e) => Ok(false),
            Err(e) => Err(self.sdk_error("claim trigger", e)),
        }
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let expires = now.after(ttl).as_millis();
        let mut item = key(format!("LEASE#{name}"), "LEASE");
        item.insert("holder".into(), s(holder));
        item.insert("expires_at".into(), n(expires));
        match self
            .client
            .put_item()
            .table_name(self.table.as_ref())
            .set_item(Some(item))
            // The holder's own lease only if that does not shorten it.
            .condition_expression(
                "attribute_not_exists(pk) OR (#holder = :holder AND #expires <= :expires) \
                 OR #expires <= :now",
            )
            .expression_attribute_names("#holder", "holder")
            .expression_attribute_names("#expires", "expires_at")
            .expression_attribute_values(":holder", s(holder))
            .expression_attribute_values(":expires", n(expires))
            .expression_attribute_values(":now", n(now.as_millis()))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_ccf(&e) => self.holds("acquire lease", name, holder).await,
            Err(e) => Err(self.sdk_error("acquire lease", e)),
        }
    }

    async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match self
            .client
            .update_item()
            .table_name(self.table.as_ref())
            .set_key(Some(key(format!("LEASE#{name}"), "LEASE")))
            .update_expression("SET #expires = :expires")
            // Only the holder's own lease (never re-created once released),
            // and never shorter.
            .condition_expression("#holder = :holder AND #expires <= :expires")
            .expression_attribute_names("#holder", "holder")
            .expression_attribute_names("#expires", "expires_at")
            .expression_attribute_values(":holder", s(holder))
            .expression_attribute_values(":expires", n(now.after(ttl).as_millis()))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_ccf(&e) => self.holds("renew lease", name, holder).await,
            Err(e) => Err(self.sdk_error("renew lease", e)),
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        match self
            .client
            .delete_item()
            .table_name(self.table.as_ref())
            .set_key(Some(key(format!("LEASE#{name}"), "LEASE")))
            .condition_expression("#holder = :holder")
            .expression_attribute_names("#holder", "holder")
            .expression_attribute_values(":holder", s(holder))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_ccf(&e) => Ok(()),
            Err(e) => Err(self.sdk_error("release lease", e)),
        }
    }

    async fn post_command(
        &self,
        rollout_id: &str,
        command: Command,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let op = "post command";
        let name = command_name(command).map_err(|e| self.error(&format!("{op}: {e}")))?;
        for attempt in 0..ATTEMPTS {
            let counter = self
                .get(
                    "read the command counter",
                    key(COUNTER_PK.to_owned(), COUNTER_SK),
                )
                .await?;
            let last = match &counter {
                Some(c) => self.reader(c).n("seq")?,
                None => 0,
            };
            let seq = last
                .checked_add(1)
                .ok_or_else(|| self.error(&format!("{op}: command sequence exhausted")))?;

            let mut next = key(COUNTER_PK.to_owned(), COUNTER_SK);
            next.insert("seq".into(), n(seq));
            let counter_put = if counter.is_some() {
                self.put(
                    next,
                    Some("seq = :last"),
                    HashMap::from([(":last".to_owned(), n(last))]),
                )?
            } else {
                self.put(next, Some("attribute_not_exists(pk)"), Item::new())?
            };
            let exists = ConditionCheck::builder()
                .table_name(self.table.as_ref())
                .set_key(Some(key(rollout_pk(rollout_id), ROLLOUT_SK)))
                .condition_expression("attribute_exists(pk)");
            let exists = TransactWriteItem::builder()
                .condition_check(self.built(exists.build())?)
                .build();
            let mut item = key(rollout_pk(rollout_id), command_sk(seq));
            item.extend([
                ("rollout_id".to_owned(), s(rollout_id)),
                ("seq".to_owned(), n(seq)),
                ("command".to_owned(), s(name.clone())),
                ("posted_at".to_owned(), n(now.as_millis())),
            ]);
            let mut everyone = item.clone();
            everyone.insert("pk".into(), s(COMMANDS_PK));
            let put = self.put(item, Some("attribute_not_exists(pk)"), Item::new())?;
            let put_all = self.put(everyone, Some("attribute_not_exists(pk)"), Item::new())?;

            let reasons = match self
                .transact(op, vec![counter_put, exists, put, put_all])
                .await?
            {
                Ok(()) => return Ok(seq),
                Err(reasons) => reasons,
            };
            if failed(&reasons, 1) {
                return Err(StoreError::NotFound(rollout_id.to_owned()));
            }
            // Someone else took `seq` first: read the counter again.
            if failed(&reasons, 0)
                || failed(&reasons, 2)
                || failed(&reasons, 3)
                || conflicted(&reasons)
            {
                backoff(attempt).await;
                continue;
            }
            return Err(self.cancelled(op, &reasons));
        }
        Err(self.error(&format!(
            "{op} to `{rollout_id}`: gave up after {ATTEMPTS} attempts lost the race for the next sequence number"
        )))
    }

    async fn commands_after(
        &self,
        rollout_id: &str,
        after: u64,
    ) -> Result<Vec<PostedCommand>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let items = self
            .query(
                "read commands",
                rollout_pk(rollout_id),
                Some((command_sk(first), command_sk(u64::MAX))),
                true,
                usize::MAX,
            )
            .await?;
        items
            .iter()
            .map(|item| self.reader(item).command(rollout_id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_order_numerically() {
        assert!(command_sk(9) < command_sk(10));
        assert!(command_sk(u64::MAX - 1) < command_sk(u64::MAX));
        assert_eq!(command_sk(u64::MAX).len(), "CMD#".len() + 20);
        assert!(service_sk(Timestamp(999), "z") < service_sk(Timestamp(1_000), "a"));
    }

    #[test]
    fn table_definition_is_create_table_json() {
        let def: serde_json::Value =
            serde_json::from_str(&DynamoStore::table_definition("cutover")).unwrap();
        assert_eq!(def["TableName"], "cutover");
        assert_eq!(def["BillingMode"], "PAY_PER_REQUEST");
        assert_eq!(def["KeySchema"][0]["AttributeName"], "pk");
        assert_eq!(def["KeySchema"][1]["KeyType"], "RANGE");
    }

    #[test]
    fn malformed_items_are_errors_naming_the_key() {
        let mut item = key(rollout_pk("r"), ROLLOUT_SK);
        item.insert("id".into(), s("r"));
        item.insert("version".into(), s("one"));
        let reader = Reader {
            table: "t",
            item: &item,
        };
        let err = reader.rollout().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        assert!(msg.contains("ROLLOUT#r") && msg.contains("`t`"), "{msg}");
    }
}
