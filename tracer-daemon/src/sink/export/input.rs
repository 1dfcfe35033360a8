//! What export takes in: a delivered record with what it needs to become a span.
use std::sync::Arc;

use crate::record::{ContainerMeta, Event, WallClock};

/// One delivered record on its way to becoming a span.
#[derive(Clone, Debug)]
pub struct SpanInput {
    pub event: Arc<Event>,
    pub container: Option<Arc<ContainerMeta>>,
    /// The wall clock of the run that recorded it (a span sent by a later run, from the
    /// spool, keeps the times its event has).
    pub clock: WallClock,
}
