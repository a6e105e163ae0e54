//! One-shot tasks, supervised: every task an actor spawns to wait for something (a request's
//! answer, a storage call, a network command) runs through [`spawn_supervised`] or
//! [`supervised`], which catch a panic inside it, log it with its kind, count it
//! (`Metrics::task_panics`, by [`Task`] kind) and hand whoever waits for the task a failure
//! instead of silence: a reply channel gets an error answer, an actor waiting for an answer gets
//! "not delivered", a fetch becomes a failed fetch that its machine retries
//! (docs/architecture.md, "Supervision").

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use tracing::error;

use crate::metrics::Metrics;
pub use crate::metrics::Task;

/// A task that panicked (its message, when it was a string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked(pub String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task panicked: {}", self.0)
    }
}

/// Runs `task` to its end; a panic inside it is logged with `kind`, counted in `metrics` and
/// returned as `Err`.
pub async fn supervised<T>(
    kind: Task,
    metrics: &Metrics,
    task: impl Future<Output = T>,
) -> Result<T, Panicked> {
    match AssertUnwindSafe(task).catch_unwind().await {
        Ok(value) => Ok(value),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            error!(task = kind.name(), panic = %message, "a task panicked");
            metrics.task_panics.count(kind);
            Err(Panicked(message))
        }
    }
}

/// Spawns `task` on this thread's actix runtime, supervised ([`supervised`]); `done` gets its
/// output, or the panic — it answers whoever waits for the task either way.
pub fn spawn_supervised<T: 'static>(
    kind: Task,
    metrics: Arc<Metrics>,
    task: impl Future<Output = T> + 'static,
    done: impl FnOnce(Result<T, Panicked>) + 'static,
) {
    actix_rt::spawn(async move { done(supervised(kind, &metrics, task).await) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_task_that_panics_is_counted_by_kind_and_its_waiter_gets_the_failure() {
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fail = true;
        let task = async move {
            if fail {
                panic!("injected");
            }
            7
        };
        spawn_supervised(Task::Serve, metrics.clone(), task, move |r| {
            let _ = tx.send(r);
        });
        assert_eq!(rx.await.unwrap(), Err(Panicked("injected".into())));
        assert_eq!(metrics.task_panics.of(Task::Serve), 1);
        assert_eq!(metrics.task_panics.of(Task::Notify), 0);
    }

    #[actix_rt::test]
    async fn a_task_that_ends_hands_its_output_and_counts_nothing() {
        let metrics = Metrics::default();
        assert_eq!(supervised(Task::Fetch, &metrics, async { 3 }).await, Ok(3));
        assert_eq!(Task::ALL.map(|k| metrics.task_panics.of(k)), [0; 11]);
    }
}
