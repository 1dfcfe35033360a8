//! Locking helpers.

/// Locks a mutex, recovering from poisoning: the values behind tracerd's mutexes stay
/// consistent between statements, so a panicking holder does not justify taking the
/// daemon down with it.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
