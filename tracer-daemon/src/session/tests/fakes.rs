//! Stand-ins for the kernel and the Docker engine, for unit tests of the lifecycle. The
//! privileged end-to-end suite (`tests/`) runs the real ones.
use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
};

use futures_util::{
    future::BoxFuture,
    stream::{self, BoxStream},
    FutureExt as _, StreamExt as _,
};
use tokio::sync::mpsc;

use crate::{
    backend::{
        delivery::{DeliveryCounters, EventReceiver, Route, SessionCounters},
        Backend, EngineError, SessionOptions, Trace, Tracer,
    },
    containers::{Container, ContainerError, ContainerEvent, ContainerRuntime, LaunchRequest},
    record::{batch::BatchBuilder, samples, TraceFilter},
    sync::lock,
};

/// An engine whose sessions receive what the test delivers.
#[derive(Default)]
pub struct FakeTracer {
    ebpf_unavailable: Option<String>,
    traces: Mutex<Vec<Weak<FakeTrace>>>,
    filters: Mutex<Vec<TraceFilter>>,
}

impl FakeTracer {
    pub fn without_ebpf(why: &str) -> Self {
        Self {
            ebpf_unavailable: Some(why.to_owned()),
            ..Self::default()
        }
    }

    /// How many sessions were started.
    pub fn started(&self) -> usize {
        lock(&self.filters).len()
    }

    pub fn last_filter(&self) -> TraceFilter {
        lock(&self.filters)
            .last()
            .cloned()
            .expect("a session started")
    }

    fn live(&self) -> Vec<Arc<FakeTrace>> {
        lock(&self.traces)
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// How many sessions run now.
    pub fn running(&self) -> usize {
        self.live().len()
    }

    /// The cgroups of the running session.
    pub fn cgroups(&self) -> Vec<u64> {
        self.live()
            .first()
            .map(|trace| lock(&trace.cgroups).clone())
            .unwrap_or_default()
    }

    /// `count` calls of `nr` in `cgroup_id`, matched and delivered to every running session.
    pub fn deliver(&self, nr: u32, cgroup_id: u64, count: u32) {
        for trace in self.live() {
            for tid in 0..count {
                trace.matched.fetch_add(1, Ordering::Relaxed);
                let record = samples::record(nr, 1, tid, cgroup_id);
                let mut batch = BatchBuilder::default();
                batch.push(&record, &[]);
                trace.route.deliver(batch.take());
            }
        }
    }
}

impl Tracer for FakeTracer {
    fn backend_status(&self, backend: Backend) -> Result<(), String> {
        match (backend, &self.ebpf_unavailable) {
            (Backend::Ebpf, Some(why)) => Err(why.clone()),
            _ => Ok(()),
        }
    }

    fn start(
        &self,
        filter: &TraceFilter,
        options: &SessionOptions,
    ) -> Result<(Arc<dyn Trace>, EventReceiver), EngineError> {
        let backend = match (options.backend, &self.ebpf_unavailable) {
            (Some(backend), _) => backend,
            (None, None) => Backend::Ebpf,
            (None, Some(_)) => Backend::Ftrace,
        };
        let delivery = Arc::new(DeliveryCounters::default());
        let (route, events) = Route::new(1024, delivery.clone());
        let trace = Arc::new(FakeTrace {
            backend,
            cgroups: Mutex::new(filter.cgroups.clone()),
            matched: AtomicU64::new(0),
            route,
            delivery,
        });
        lock(&self.filters).push(filter.clone());
        lock(&self.traces).push(Arc::downgrade(&trace));
        Ok((trace, events))
    }
}

pub struct FakeTrace {
    backend: Backend,
    cgroups: Mutex<Vec<u64>>,
    matched: AtomicU64,
    route: Route,
    delivery: Arc<DeliveryCounters>,
}

impl Trace for FakeTrace {
    fn backend(&self) -> Backend {
        self.backend
    }

    fn backend_reason(&self) -> &str {
        "a fake"
    }

    fn add_cgroup(&self, cgroup_id: u64) -> Result<(), EngineError> {
        lock(&self.cgroups).push(cgroup_id);
        Ok(())
    }

    fn remove_cgroup(&self, cgroup_id: u64) -> Result<(), EngineError> {
        lock(&self.cgroups).retain(|&id| id != cgroup_id);
        Ok(())
    }

    fn counters(&self) -> Result<SessionCounters, EngineError> {
        Ok(self
            .delivery
            .with_kernel(self.matched.load(Ordering::Relaxed), 0))
    }

    fn stop(self: Arc<Self>) -> BoxFuture<'static, Result<SessionCounters, EngineError>> {
        // Dropping the trace drops its route: the writer sees the end of its events.
        let counters = self.counters();
        let unique = Arc::into_inner(self).is_some();
        async move {
            if unique {
                counters
            } else {
                Err(EngineError::StillInUse)
            }
        }
        .boxed()
    }
}

/// A container runtime with the containers the test adds.
#[derive(Default)]
pub struct FakeRuntime {
    containers: Mutex<Vec<Container>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<ContainerEvent>>>,
    removed_labelled: Mutex<Vec<(String, String)>>,
    reject_images: Mutex<Option<String>>,
    away: std::sync::atomic::AtomicBool,
}

impl FakeRuntime {
    /// A running container `name` in cgroup `cgroup_id`.
    pub fn add(&self, name: &str, cgroup_id: u64, labels: &[(&str, &str)]) {
        lock(&self.containers).push(Container {
            id: format!("{name}-id"),
            name: name.to_owned(),
            image: "shop:1".into(),
            labels: labels
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            pid: 1,
            cgroup_id,
            cgroup_path: PathBuf::from(format!("/sys/fs/cgroup/{name}")),
        });
    }

    /// Adds a container and tells subscribers it started.
    pub fn start(&self, name: &str, cgroup_id: u64, labels: &[(&str, &str)]) {
        self.add(name, cgroup_id, labels);
        self.publish(&ContainerEvent::Started(format!("{name}-id")));
    }

    /// Removes a container without telling anyone.
    pub fn remove(&self, name: &str) {
        lock(&self.containers).retain(|c| c.name != name);
    }

    /// Removes a container and tells subscribers it died and was destroyed.
    pub fn destroy(&self, name: &str) {
        self.remove(name);
        self.publish(&ContainerEvent::Died(format!("{name}-id")));
        self.publish(&ContainerEvent::Destroyed(format!("{name}-id")));
    }

    /// Restarts a container in a new cgroup, as `docker restart` does: it dies, then starts
    /// again with the same id.
    pub fn restart(&self, name: &str, cgroup_id: u64) {
        let labels: Vec<(String, String)> = lock(&self.containers)
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.labels.clone().into_iter().collect())
            .unwrap_or_default();
        self.remove(name);
        self.publish(&ContainerEvent::Died(format!("{name}-id")));
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.start(name, cgroup_id, &labels);
    }

    /// Image look-ups are refused from now on, as a bad request.
    pub fn reject_images(&self, message: &str) {
        *lock(&self.reject_images) = Some(message.to_owned());
    }

    /// The engine cannot be reached from now on.
    pub fn go_away(&self) {
        self.away.store(true, Ordering::Relaxed);
    }

    pub fn removed_labelled(&self) -> Vec<(String, String)> {
        lock(&self.removed_labelled).clone()
    }

    fn publish(&self, event: &ContainerEvent) {
        lock(&self.subscribers).retain(|subscriber| subscriber.send(event.clone()).is_ok());
    }

    fn reachable(&self) -> Result<(), ContainerError> {
        if self.away.load(Ordering::Relaxed) {
            return Err(ContainerError::Unavailable {
                socket: "/fake.sock".into(),
                message: "connection refused".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn running(&self) -> Result<Vec<Container>, ContainerError> {
        self.reachable()?;
        Ok(lock(&self.containers).clone())
    }

    async fn inspect(&self, id: &str) -> Result<Option<Container>, ContainerError> {
        self.reachable()?;
        Ok(lock(&self.containers).iter().find(|c| c.id == id).cloned())
    }

    async fn events(
        &self,
    ) -> Result<BoxStream<'static, Result<ContainerEvent, ContainerError>>, ContainerError> {
        self.reachable()?;
        let (sender, receiver) = mpsc::unbounded_channel();
        lock(&self.subscribers).push(sender);
        Ok(stream::unfold(receiver, |mut receiver| async move {
            let event = receiver.recv().await?;
            Some((Ok(event), receiver))
        })
        .boxed())
    }

    async fn uses_cgroupfs(&self) -> Result<bool, ContainerError> {
        self.reachable()?;
        Ok(true)
    }

    async fn has_image(&self, _image: &str) -> Result<bool, ContainerError> {
        self.reachable()?;
        match lock(&self.reject_images).clone() {
            Some(message) => Err(ContainerError::Rejected {
                status: 400,
                message,
            }),
            None => Ok(true),
        }
    }

    async fn create(&self, request: &LaunchRequest) -> Result<String, ContainerError> {
        self.reachable()?;
        Ok(format!("{}-id", request.name))
    }

    async fn start(&self, _id: &str) -> Result<(), ContainerError> {
        self.reachable()
    }

    async fn kill(&self, _id: &str) {}

    async fn remove(&self, _id: &str) {}

    async fn remove_labelled(&self, key: &str, value: &str) -> Result<(), ContainerError> {
        self.reachable()?;
        lock(&self.removed_labelled).push((key.to_owned(), value.to_owned()));
        Ok(())
    }

    async fn wait(&self, _id: &str) -> Result<i64, ContainerError> {
        self.reachable()?;
        std::future::pending().await
    }
}
