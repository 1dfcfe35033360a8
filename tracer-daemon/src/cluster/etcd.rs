//! The cluster's keys in etcd, as JSON values, through `etcd-client`; every call bounded in
//! time so that an unreachable etcd is an error the API can answer with, never a hang.
//!
//! Keys (under `--etcd-prefix`, default `/tracerd/`):
//! `nodes/<name>` a live node (under its lease), `members/<name>` every node that ever
//! registered (so a lost one is still listed), `sessions/<id>` a cluster session,
//! `parts/<id>/<node>` a node's part of it.
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions,
    GetResponse, Identity, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
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

/// TLS to etcd: the CA to trust (else the system's roots) and a client certificate.
#[derive(Clone, Debug, Default)]
pub struct EtcdTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl EtcdTls {
    fn options(&self) -> Result<TlsOptions, ClusterError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|err| ClusterError::Tls(format!("{}: {err}", path.display())))
        };
        let mut options = TlsOptions::new();
        options = match &self.ca_file {
            Some(path) => options.ca_certificate(Certificate::from_pem(read(path)?)),
            None => options.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            options = options.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(options)
    }
}

/// A value read with the revision it was last changed at (for a compare-and-swap).
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: i64,
}

impl Etcd {
    /// A client of `endpoints`; it connects lazily, so a daemon starts while etcd is away.
    /// Fails only on what cannot work at all: a malformed endpoint or TLS file.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        tls: &EtcdTls,
    ) -> Result<Self, ClusterError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(300))
            .with_timeout(Duration::from_millis(700))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            // A member cut off from the others refuses rather than answering from its past.
            .with_require_leader(true);
        if endpoints
            .iter()
            .any(|endpoint| endpoint.starts_with("https://"))
        {
            options = options.with_tls(tls.options()?);
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|err| {
                ClusterError::Unavailable(format!("etcd endpoints {endpoints:?}: {err}"))
            })?;
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

    /// One read: the key at `path`, or every key under it with `prefix`.
    async fn range(&self, path: &str, prefix: bool) -> Result<GetResponse, ClusterError> {
        let key = self.key(path);
        bounded(|| {
            let mut client = self.client();
            let key = key.clone();
            let options = prefix.then(|| GetOptions::new().with_prefix());
            async move { client.get(key, options).await }
        })
        .await
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<Versioned<T>>, ClusterError> {
        let response = self.range(path, false).await?;
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
        let response = self.range(path, true).await?;
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
        let response = self.range(path, true).await?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let path = self.path(kv.key()).unwrap_or_default().to_owned();
                Ok((path, decode(kv.key(), kv.value())?))
            })
            .collect()
    }

    /// Several reads in one round trip, from one revision: for each `(path, prefix)`, the
    /// values at `path` (or under it, with `prefix`), as raw JSON.
    pub async fn read_together(
        &self,
        reads: &[(&str, bool)],
    ) -> Result<Vec<Vec<serde_json::Value>>, ClusterError> {
        let ops: Vec<TxnOp> = reads
            .iter()
            .map(|(path, prefix)| {
                let options = prefix.then(|| GetOptions::new().with_prefix());
                TxnOp::get(self.key(path), options)
            })
            .collect();
        let response = bounded(|| {
            let mut client = self.client();
            let txn = Txn::new().and_then(ops.clone());
            async move { client.txn(txn).await }
        })
        .await?;
        response
            .op_responses()
            .into_iter()
            .map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get
                    .kvs()
                    .iter()
                    .map(|kv| decode(kv.key(), kv.value()))
                    .collect(),
                _ => Ok(Vec::new()),
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
        Ok(self.raw(path).await?.is_some_and(|stored| stored == value))
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
        Ok(self.raw(path).await?.is_some_and(|stored| stored == value))
    }

    /// The lease `path` is held under (0: none), if it exists.
    pub async fn lease_of(&self, path: &str) -> Result<Option<i64>, ClusterError> {
        let response = self.range(path, false).await?;
        Ok(response.kvs().first().map(etcd_client::KeyValue::lease))
    }

    /// The value at `path` as stored.
    async fn raw(&self, path: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        let response = self.range(path, false).await?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Puts `value` at `key` in one transaction, if `condition` holds; whether it did.
    async fn put_if(
        &self,
        condition: Compare,
        key: String,
        value: Vec<u8>,
    ) -> Result<bool, ClusterError> {
        self.put_when(vec![condition], key, value).await
    }

    /// Puts `value` at `path` only if every `condition` holds (see [`Etcd::unchanged`] and
    /// [`Etcd::absent`]); true if it did, or if a retried call finds its own value there.
    pub async fn put_if_all<T: Serialize>(
        &self,
        path: &str,
        value: &T,
        conditions: Vec<Compare>,
    ) -> Result<bool, ClusterError> {
        let (key, value) = (self.key(path), encode(value));
        if self
            .put_when(conditions, key.clone(), value.clone())
            .await?
        {
            return Ok(true);
        }
        Ok(self.raw(path).await?.is_some_and(|stored| stored == value))
    }

    /// The condition that `path` is still at `revision`.
    pub fn unchanged(&self, path: &str, revision: i64) -> Compare {
        Compare::mod_revision(self.key(path), CompareOp::Equal, revision)
    }

    /// The condition that `path` does not exist.
    pub fn absent(&self, path: &str) -> Compare {
        Compare::create_revision(self.key(path), CompareOp::Equal, 0)
    }

    /// A compare-and-swap of a counter: exactly whether this call's write took (a counter's
    /// value says nothing of who wrote it, so a retried call is not taken for its own).
    pub async fn swap_counter(
        &self,
        path: &str,
        from: Option<Versioned<u64>>,
        to: u64,
    ) -> Result<bool, ClusterError> {
        let key = self.key(path);
        let condition = match &from {
            Some(current) => Compare::mod_revision(key.clone(), CompareOp::Equal, current.revision),
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        };
        self.put_when(vec![condition], key, encode(&to)).await
    }

    async fn put_when(
        &self,
        conditions: Vec<Compare>,
        key: String,
        value: Vec<u8>,
    ) -> Result<bool, ClusterError> {
        let response = bounded(|| {
            let mut client = self.client();
            let txn = Txn::new().when(conditions.clone()).and_then([TxnOp::put(
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

    /// Every value under `path` with the revision it was last changed at, and the store's
    /// revision they were read at (to watch from the next one).
    pub async fn list_at<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(Vec<Versioned<T>>, i64), ClusterError> {
        let response = self.range(path, true).await?;
        let revision = response
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        let values = response
            .kvs()
            .iter()
            // One record that cannot be read (written by a newer tracerd, say) is left out
            // with a warning; the others are still acted on.
            .filter_map(|kv| match decode(kv.key(), kv.value()) {
                Ok(value) => Some(Versioned {
                    value,
                    revision: kv.mod_revision(),
                }),
                Err(err) => {
                    tracing::warn!(%err, "left out of the cluster's state");
                    None
                }
            })
            .collect();
        Ok((values, revision))
    }

    /// A watch of every key under `path`, from `revision` on.
    pub async fn watch_from(&self, path: &str, revision: i64) -> Result<WatchStream, ClusterError> {
        let key = self.key(path);
        let options = || {
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision),
            )
        };
        bounded(|| {
            let mut client = self.client();
            let key = key.clone();
            let options = options();
            async move { client.watch(key, options).await }
        })
        .await
    }
}

/// A value as stored, decoded (the watch's events carry them raw).
pub fn decode_value<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, ClusterError> {
    decode(key, value)
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
