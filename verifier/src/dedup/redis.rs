//! The redis dedup store (being written; every operation reports the store as unavailable).

use super::{Insert, StoreError, StoreSettings, StoredOutcome};

/// The redis store.
#[derive(Debug)]
pub struct RedisStore {
    _settings: StoreSettings,
}

impl RedisStore {
    /// A store at `addr`; keys or tables are namespaced by `prefix`.
    pub async fn connect(
        _addr: &str,
        _prefix: &str,
        settings: &StoreSettings,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            _settings: settings.clone(),
        })
    }

    /// See [`super::Store::insert`].
    pub async fn insert(&self, _id: &str, _o: &StoredOutcome) -> Result<Insert, StoreError> {
        Err(StoreError::Unavailable("not built".into()))
    }

    /// See [`super::Store::get`].
    pub async fn get(&self, _id: &str) -> Result<Option<StoredOutcome>, StoreError> {
        Err(StoreError::Unavailable("not built".into()))
    }

    /// See [`super::Store::ping`].
    pub async fn ping(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("not built".into()))
    }

    /// See [`super::Store::purge_expired`].
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}
