//! Storage calls run off the actor threads.

use lsync_storage::StorageError;

/// Runs a blocking storage call on tokio's blocking pool.
pub async fn run_blocking<R, F>(f: F) -> Result<R, StorageError>
where
    R: Send + 'static,
    F: FnOnce() -> Result<R, StorageError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StorageError::Io(std::io::Error::other(format!("storage task failed: {e}")))),
    }
}
