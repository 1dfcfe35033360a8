//! Locking, and short blocking work from async code.

/// Locks a mutex, recovering from poisoning: the values behind tracerd's mutexes stay
/// consistent between statements, so a panicking holder does not justify taking the
/// daemon down with it.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs short blocking work (a kernel map update or read, a few small cgroup or tracefs
/// files) without holding up other tasks: in place on a multi-threaded runtime, where tokio
/// hands this worker's other tasks to another thread for the duration (so the work keeps the
/// CPU it has, which matters on a busy node: a trip to the blocking pool waits for a thread
/// to be scheduled), else on the blocking pool. Long or unbounded work (a reader thread's
/// last pass, SQLite queries, event downloads) goes to `spawn_blocking` instead.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => Ok(tokio::task::block_in_place(work)),
        _ => tokio::task::spawn_blocking(work).await,
    }
}
