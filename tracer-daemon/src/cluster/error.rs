//! Why a cluster operation could not be done.
use crate::session::SessionError;

/// Why a cluster operation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd is unreachable ({0}); cluster sessions cannot be read or changed until it answers (their parts keep recording)")]
    Unavailable(String),
    #[error("etcd's TLS settings: {0}")]
    Tls(String),
    #[error("a cluster record in etcd cannot be read: {0}")]
    Corrupt(String),
    #[error("`\"scope\": \"cluster\"` needs a cluster: start tracerd with --etcd")]
    Disabled,
    #[error("node `{0}` is not ready")]
    NodeNotReady(String),
    #[error("no node is ready to run the launch")]
    NoReadyNode,
    #[error("the cluster session changed meanwhile; try again")]
    Conflict,
    #[error(transparent)]
    Session(#[from] SessionError),
}
