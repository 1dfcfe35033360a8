//! Locking, and short blocking work from async code.

/// Locks a mutex, recovering from poisoning: the values behind tracerd's mutexes stay
/// consistent between statements, so a panicking holder does not justify taking the
/// daemon down with it.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs short blocking work (a kernel map update or read, a few cgroup or tracefs files, a
/// log file opened) on tokio's blocking pool, so no async worker waits on it. Measured on the
/// 2-core machines against running it in place (`block_in_place`) and inline: the blocking
/// pool keeps the API's median, in place lost a fifth of the lifecycle rate, and each trip
/// costs tail latency under overload (docs/benchmarks.md, the API numbers).
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(work).await
}
