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

use super::ClusterError;

/// The longest one etcd call may take before the API says etcd is unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

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
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(CALL_TIMEOUT)
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
        let response = bounded(self.client().get(self.key(path), None)).await?;
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
        let options = GetOptions::new().with_prefix();
        let response = bounded(self.client().get(self.key(path), Some(options))).await?;
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
        let options = GetOptions::new().with_prefix();
        let response = bounded(self.client().get(self.key(path), Some(options))).await?;
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
        let options = lease.map(|lease| PutOptions::new().with_lease(lease));
        bounded(self.client().put(self.key(path), encode(value), options)).await?;
        Ok(())
    }

    /// Writes `value` only if the key does not exist; false if it does.
    pub async fn create<T: Serialize>(&self, path: &str, value: &T) -> Result<bool, ClusterError> {
        let key = self.key(path);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, encode(value), None)]);
        Ok(bounded(self.client().txn(txn)).await?.succeeded())
    }

    /// Writes `value` only if the key is still at `revision`; false if it changed.
    pub async fn replace<T: Serialize>(
        &self,
        path: &str,
        value: &T,
        revision: i64,
    ) -> Result<bool, ClusterError> {
        let key = self.key(path);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key, encode(value), None)]);
        Ok(bounded(self.client().txn(txn)).await?.succeeded())
    }

    /// Deletes the key, or every key under it with `prefix`.
    pub async fn delete(&self, path: &str, prefix: bool) -> Result<(), ClusterError> {
        let options = prefix.then(|| DeleteOptions::new().with_prefix());
        bounded(self.client().delete(self.key(path), options)).await?;
        Ok(())
    }

    /// A watch of every key under `path`.
    pub async fn watch(&self, path: &str) -> Result<WatchStream, ClusterError> {
        let options = WatchOptions::new().with_prefix();
        bounded(self.client().watch(self.key(path), Some(options))).await
    }
}

/// One etcd call, bounded by [`CALL_TIMEOUT`]: its errors and its timeout both mean etcd
/// is unreachable (or has no quorum) for the API.
pub async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(ClusterError::Unavailable(err.to_string())),
        Err(_) => Err(ClusterError::Unavailable(format!(
            "no answer within {} s",
            CALL_TIMEOUT.as_secs()
        ))),
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
