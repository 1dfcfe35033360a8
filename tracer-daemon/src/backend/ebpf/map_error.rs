//! Programming the kernel for a session slot failed.
use super::load_error::LoadError;

/// Programming the kernel for a slot failed: a map update, or attaching the programs.
#[derive(Debug, thiserror::Error)]
pub enum MapUpdateError {
    #[error("updating kernel map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("attaching the programs: {0}")]
    Attach(#[source] Box<LoadError>),
}

impl MapUpdateError {
    pub(super) fn attach(err: LoadError) -> Self {
        Self::Attach(Box::new(err))
    }
}
