//! The probes' own thread: a single-threaded tokio runtime that runs every probe task and the
//! half-open prober's reader. At 10k targets every 2 s, 5,000 probes a second each wake a task
//! a few times (its timer, its answer, its next round). On the daemon's multi-threaded runtime
//! those wake-ups bounced between the two workers (futex and eventfd wake-ups, a context
//! switch each: a quarter of the checker's samples in `perf`); on one thread a wake-up is a
//! queue push, and the timer wheel's millisecond resolution batches the sleeps.

use std::io;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A thread running a current-thread runtime until dropped; tasks spawned on [`handle`]
/// end with it.
///
/// [`handle`]: ProbeThread::handle
pub struct ProbeThread {
    handle: Handle,
    /// Dropped with the owner, which ends the thread's wait.
    _stop: oneshot::Sender<()>,
}

impl ProbeThread {
    pub fn start() -> io::Result<Self> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("health-probes".into())
            .spawn(move || {
                // Runs the spawned tasks until the owner goes (its dropped sender ends the
                // wait); dropping the runtime here, outside any async context, cancels them.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(ProbeThread {
            handle,
            _stop: stop,
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn runs_spawned_tasks_and_ends_them_when_dropped() {
        let thread = ProbeThread::start().expect("start");
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        thread.handle().spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        let name = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the task ran");
        assert_eq!(name.as_deref(), Some("health-probes"));
        // A task still sleeping when the thread goes is dropped, and its sender with it.
        thread.handle().spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let _ = tx2.send(None);
        });
        drop(thread);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
