//! A [`Store`] that injects faults into a real one, for tests of what
//! cutover does when its store misbehaves (a full disk, a store that is
//! unreachable, a write whose reply is lost). Each fault is a switch a test
//! flips while the code under test runs; with every switch off it is the
//! store it wraps.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{Command, Timestamp};

use super::{Change, EventRecord, Lease, PostedCommand, RolloutRecord, Store, StoreError};

/// Wraps `S`; see the module docs.
pub struct FaultyStore<S> {
    inner: S,
    /// Every write (create, commit, leases, claims, commands) fails.
    pub fail_writes: AtomicBool,
    /// Trigger claims fail (the rest works).
    pub fail_claims: AtomicBool,
    /// The next commit lands, then reports a failure (its reply lost).
    pub lose_next_reply: AtomicBool,
    /// Bulk lease renewals fail (one lease at a time still works): a
    /// controller's renewal is broken or too slow for its many leases.
    pub fail_renewals: AtomicBool,
    /// Bulk lease renewals take this long (ms) before they reach the
    /// store: a renewal in flight while its holder releases the lease.
    pub renewal_delay_ms: AtomicU64,
    /// Bulk renewals begun and not yet answered.
    pub renewals_in_flight: AtomicUsize,
}

impl<S: Store> FaultyStore<S> {
    pub fn new(inner: S) -> FaultyStore<S> {
        FaultyStore {
            inner,
            fail_writes: AtomicBool::new(false),
            fail_claims: AtomicBool::new(false),
            lose_next_reply: AtomicBool::new(false),
            fail_renewals: AtomicBool::new(false),
            renewal_delay_ms: AtomicU64::new(0),
            renewals_in_flight: AtomicUsize::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn write(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(SeqCst) {
            return Err(StoreError::Backend("disk I/O error (injected)".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl<S: Store> Store for FaultyStore<S> {
    async fn create_rollout(
        &self,
        id: &str,
        service: &str,
        change: Change<'_>,
    ) -> Result<RolloutRecord, StoreError> {
        self.write()?;
        self.inner.create_rollout(id, service, change).await
    }

    async fn load(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        self.inner.load(id).await
    }

    async fn commit(
        &self,
        id: &str,
        expected_version: u64,
        change: Change<'_>,
    ) -> Result<RolloutRecord, StoreError> {
        self.write()?;
        let result = self.inner.commit(id, expected_version, change).await;
        if result.is_ok() && self.lose_next_reply.swap(false, SeqCst) {
            return Err(StoreError::Backend(
                "connection reset (injected, after the write landed)".into(),
            ));
        }
        result
    }

    async fn events(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.inner.events(id, after, limit).await
    }

    async fn list_active(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        self.inner.list_active().await
    }

    async fn list_for_service(
        &self,
        service: &str,
        limit: usize,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        self.inner.list_for_service(service, limit).await
    }

    async fn claim_trigger(
        &self,
        key: &str,
        owner: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.write()?;
        if self.fail_claims.load(SeqCst) {
            return Err(StoreError::Backend("store unreachable (injected)".into()));
        }
        self.inner.claim_trigger(key, owner, now).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.acquire_lease(name, holder, now, ttl).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.write()?;
        self.inner.release_lease(name, holder).await
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.inner.lease(name).await
    }

    async fn post_command(
        &self,
        rollout_id: &str,
        command: Command,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        self.write()?;
        self.inner.post_command(rollout_id, command, now).await
    }

    async fn commands_after(
        &self,
        rollout_id: &str,
        after: u64,
    ) -> Result<Vec<PostedCommand>, StoreError> {
        self.inner.commands_after(rollout_id, after).await
    }

    async fn commands_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PostedCommand>, StoreError> {
        self.inner.commands_since(after, limit).await
    }

    async fn latest_command_seq(&self) -> Result<u64, StoreError> {
        self.inner.latest_command_seq().await
    }

    async fn list_active_ids(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.list_active_ids().await
    }

    async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.renew_lease(name, holder, now, ttl).await
    }

    async fn renew_leases(
        &self,
        names: &[String],
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        self.write()?;
        if self.fail_renewals.load(SeqCst) {
            return Err(StoreError::Backend("bulk renewal failed (injected)".into()));
        }
        self.renewals_in_flight.fetch_add(1, SeqCst);
        let delay = self.renewal_delay_ms.load(SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let renewed = self.inner.renew_leases(names, holder, now, ttl).await;
        self.renewals_in_flight.fetch_sub(1, SeqCst);
        renewed
    }
}
