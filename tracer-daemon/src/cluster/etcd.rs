//! The cluster's keys in etcd, as JSON values, through `etcd-client`; every call bounded in
//! time so that an unreachable etcd is an error the API can answer with, never a hang.
//!
//! Keys (under `--etcd-prefix`, default `/tracerd/`):
//! `nodes/<name>` a live node (under its lease), `members/<name>` every node that ever
//! registered (so a lost one is still listed), `sessions/<id>` a cluster session,
//! `parts/<id>/<node>` a node's part of it.
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};
use serde::{de::DeserializeOwned, Serialize};

use super::error::ClusterError;

/// The longest one etcd call may take, retries included, before the API says etcd is
/// unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A call that did not reach a member is tried again after this.
const RETRY_AFTER: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
}

/// A value read with the revision it was last changed at (for a compare-and-swap).
pub struct Versioned<T> {
    pub value: T,
    pub revision: i64,
}

impl Etcd {
    /// A client of `endpoints`; it connects lazily, so a daemon starts while etcd is away.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, ClusterError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(300))
            .with_timeout(Duration::from_millis(700))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|err| ClusterError::Unavailable(err.to_string()))?;
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self { client, prefix })
    }

    pub fn key(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    /// The key's path below the prefix.
    pub fn path<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key).ok()?.strip_prefix(&self.prefix)
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<Versioned<T>>, ClusterError> {
        let key = self.key(path);
        let response = bounded(|| {
            let mut client = self.client();
            let key = key.clone();
            async move { client.get(key, None).await }
        })
        .await?;
        response
            .kvs()
            .first()
            .map(|kv| {
                Ok(Versioned {
                    value: decode(kv.key(), kv.value())?,
                    revision: kv.mod_revision(),
                })
            })
            .transpose()
    }

    /// Every value under `path` (a prefix), in key order.
    pub async fn list<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ClusterError> {
        let key = self.key(path);
        let options = || Some(GetOptions::new().with_prefix());
        let response = bounded(|| {
            let mut client = self.client();
            let key = key.clone();
            let options = options();
            async move { client.get(key, options).await }
        })
        .await?;
        response
            .kvs()
            .iter()
            .map(|kv| decode(kv.key(), kv.value()))
            .collect()
    }

    /// Every value under `path` with its key's path below the prefix.
    pub async fn list_keyed<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Vec<(String, T)>, ClusterError> {
        let key = self.key(path);
        let options = || Some(GetOptions::new().with_prefix());
        let response = bounded(|| {
            let mut client = self.client();
            let key = key.clone();
            let options = options();
            async move { client.get(key, options).await }
        })
        .await?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let path = self.path(kv.key()).unwrap_or_default().to_owned();
                Ok((path, decode(kv.key(), kv.value())?))
            })
            .collect()
    }

    /// Writes `value`, under `lease` if given.
    pub async fn put<T: Serialize>(
        &self,
        path: &str,
        value: &T,
        lease: Option<i64>,
    ) -> Result<(), ClusterError> {
        let (key, value) = (self.key(path), encode(value));
        let options = || lease.map(|lease| PutOptions::new().with_lease(lease));
        bounded(|| {
            let mut client = self.client();
            let key = key.clone();
            let value = value.clone();
            let options = options();
            async move { client.put(key, value, options).await }
        })
        .await?;
        Ok(())
    }

    /// Writes `value` only if the key does not exist; false if it holds something else (a
    /// retried call that had written it already finds its own value: true).
    pub async fn create<T: Serialize>(&self, path: &str, value: &T) -> Result<bool, ClusterError> {
        let key = self.key(path);
        let absent = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
        let value = encode(value);
        if self.put_if(absent, key.clone(), value.clone()).await? {
            return Ok(true);
        }
        Ok(self.raw(&key).await?.is_some_and(|stored| stored == value))
    }

    /// Writes `value` only if the key is still at `revision`; false if it changed (a retried
    /// call that had written it already finds its own value: true).
    pub async fn replace<T: Serialize>(
        &self,
        path: &str,
        value: &T,
        revision: i64,
    ) -> Result<bool, ClusterError> {
        let key = self.key(path);
        let unchanged = Compare::mod_revision(key.clone(), CompareOp::Equal, revision);
        let value = encode(value);
        if self.put_if(unchanged, key.clone(), value.clone()).await? {
            return Ok(true);
        }
        Ok(self.raw(&key).await?.is_some_and(|stored| stored == value))
    }

    /// The key's value as stored.
    async fn raw(&self, key: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        let response = bounded(|| {
            let mut client = self.client();
            let key = key.to_owned();
            async move { client.get(key, None).await }
        })
        .await?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Puts `value` at `key` in one transaction, if `condition` holds; whether it did.
    async fn put_if(
        &self,
        condition: Compare,
        key: String,
        value: Vec<u8>,
    ) -> Result<bool, ClusterError> {
        let response = bounded(|| {
            let mut client = self.client();
            let txn = Txn::new().when([condition.clone()]).and_then([TxnOp::put(
                key.clone(),
                value.clone(),
                None,
            )]);
            async move { client.txn(txn).await }
        })
        .await?;
        Ok(response.succeeded())
    }

    /// Deletes the key, or every key under it with `prefix`.
    pub async fn delete(&self, path: &str, prefix: bool) -> Result<(), ClusterError> {
        let key = self.key(path);
        let options = || prefix.then(|| DeleteOptions::new().with_prefix());
        bounded(|| {
            let mut client = self.client();
            let key = key.clone();
            let options = options();
            async move { client.delete(key, options).await }
        })
        .await?;
        Ok(())
    }

    /// A watch of every key under `path`.
    pub async fn watch(&self, path: &str) -> Result<WatchStream, ClusterError> {
        let key = self.key(path);
        let options = || Some(WatchOptions::new().with_prefix());
        bounded(|| {
            let mut client = self.client();
            let key = key.clone();
            let options = options();
            async move { client.watch(key, options).await }
        })
        .await
    }
}

/// One etcd call, bounded by [`CALL_TIMEOUT`] in all: its errors and its timeout both mean
/// etcd is unreachable (or has no quorum) for the API. A call that could not reach a member
/// or had no answer in time (the client balances over all of them, and a dead one is dropped
/// only after a failed connection; a new leader takes a second to be elected) is tried
/// again, so one member down is never an error. A retried write may have been applied the
/// first time: callers of [`Etcd::create`] and [`Etcd::replace`] check what is stored.
pub async fn bounded<T, F>(mut call: impl FnMut() -> F) -> Result<T, ClusterError>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    loop {
        let outcome = tokio::time::timeout_at(deadline, call()).await;
        let err = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => err,
            Err(_) => {
                return Err(ClusterError::Unavailable(format!(
                    "no answer within {} s",
                    CALL_TIMEOUT.as_secs()
                )))
            }
        };
        // Not reached, or no answer in time (a member just killed, a leader being elected).
        let unreached = match &err {
            etcd_client::Error::TransportError(_) => true,
            etcd_client::Error::GRpcStatus(status) => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
            ),
            _ => false,
        };
        if !unreached || tokio::time::Instant::now() + RETRY_AFTER >= deadline {
            return Err(ClusterError::Unavailable(err.to_string()));
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our own types, of strings, numbers and maps with string keys: always serializable.
    serde_json::to_vec(value).expect("cluster records serialize")
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, ClusterError> {
    serde_json::from_slice(value)
        .map_err(|err| ClusterError::Corrupt(format!("{}: {err}", String::from_utf8_lossy(key))))
}
