//! A [`Store`] that reports the duration and outcome of every call it
//! makes to the store it wraps, through [`Instruments`] (as adapter
//! `store:KIND`, operation the method's name), so that a controller's
//! metrics show how often and how fast it writes (`cutover serve`'s
//! `cutover_adapter_call_seconds{adapter="store:sqlite"}`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{Command, Timestamp};
use tokio::time::Instant;

use super::{Change, EventRecord, Lease, PostedCommand, RolloutRecord, Store, StoreError};
use crate::driver::Instruments;

/// Wraps a store; see the module docs.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    adapter: String,
    instruments: Arc<dyn Instruments>,
}

impl MeteredStore {
    /// `kind` names the store in the metrics, e.g. `sqlite`.
    pub fn new(
        inner: Arc<dyn Store>,
        kind: &str,
        instruments: Arc<dyn Instruments>,
    ) -> MeteredStore {
        MeteredStore {
            inner,
            adapter: format!("store:{kind}"),
            instruments,
        }
    }

    async fn timed<T>(
        &self,
        operation: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.instruments
            .adapter_call(&self.adapter, operation, started.elapsed(), result.is_err());
        result
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn create_rollout(
        &self,
        id: &str,
        service: &str,
        change: Change<'_>,
    ) -> Result<RolloutRecord, StoreError> {
        self.timed("create", self.inner.create_rollout(id, service, change))
            .await
    }

    async fn load(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        self.timed("load", self.inner.load(id)).await
    }

    async fn commit(
        &self,
        id: &str,
        expected_version: u64,
        change: Change<'_>,
    ) -> Result<RolloutRecord, StoreError> {
        self.timed("commit", self.inner.commit(id, expected_version, change))
            .await
    }

    async fn events(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.timed("events", self.inner.events(id, after, limit))
            .await
    }

    async fn list_active(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        self.timed("list_active", self.inner.list_active()).await
    }

    async fn list_for_service(
        &self,
        service: &str,
        limit: usize,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        self.timed(
            "list_for_service",
            self.inner.list_for_service(service, limit),
        )
        .await
    }

    async fn claim_trigger(
        &self,
        key: &str,
        owner: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.timed("claim_trigger", self.inner.claim_trigger(key, owner, now))
            .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.timed(
            "acquire_lease",
            self.inner.acquire_lease(name, holder, now, ttl),
        )
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.timed("release_lease", self.inner.release_lease(name, holder))
            .await
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.timed("lease", self.inner.lease(name)).await
    }

    async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.timed(
            "renew_lease",
            self.inner.renew_lease(name, holder, now, ttl),
        )
        .await
    }

    async fn renew_leases(
        &self,
        names: &[String],
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        self.timed(
            "renew_leases",
            self.inner.renew_leases(names, holder, now, ttl),
        )
        .await
    }

    async fn post_command(
        &self,
        rollout_id: &str,
        command: Command,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        self.timed(
            "post_command",
            self.inner.post_command(rollout_id, command, now),
        )
        .await
    }

    async fn commands_after(
        &self,
        rollout_id: &str,
        after: u64,
    ) -> Result<Vec<PostedCommand>, StoreError> {
        self.timed(
            "commands_after",
            self.inner.commands_after(rollout_id, after),
        )
        .await
    }

    async fn commands_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PostedCommand>, StoreError> {
        self.timed("commands_since", self.inner.commands_since(after, limit))
            .await
    }

    async fn latest_command_seq(&self) -> Result<u64, StoreError> {
        self.timed("latest_command_seq", self.inner.latest_command_seq())
            .await
    }

    async fn list_active_ids(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.timed("list_active_ids", self.inner.list_active_ids())
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::SqliteStore;

    #[derive(Default)]
    struct Calls(Mutex<Vec<(String, String, bool)>>);

    impl Instruments for Calls {
        fn adapter_call(&self, adapter: &str, operation: &str, _took: Duration, failed: bool) {
            self.0
                .lock()
                .unwrap()
                .push((adapter.into(), operation.into(), failed));
        }
    }

    #[tokio::test]
    async fn every_call_is_reported_with_its_outcome_and_reaches_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let calls = Arc::new(Calls::default());
        let store = MeteredStore::new(inner.clone(), "sqlite", calls.clone());
        let now = Timestamp::from_millis(1_000);
        store.create("r1", "web", "{}", true, now).await.unwrap();
        store.update("r1", 1, "{}", true, now).await.unwrap();
        assert!(
            store.update("r1", 1, "{}", true, now).await.is_err(),
            "a stale version"
        );
        assert_eq!(inner.load("r1").await.unwrap().unwrap().version, 2);
        let seen = calls.0.lock().unwrap().clone();
        let named = |op: &str, failed: bool| ("store:sqlite".to_string(), op.to_string(), failed);
        assert_eq!(
            seen,
            [
                named("create", false),
                named("commit", false),
                named("commit", true)
            ]
        );
    }
}
