//! The one tokio runtime behind every async export and background task.
//!
//! Exported futures are polled by UniFFI on the foreign side's executor
//! (Kotlin coroutines, Swift tasks). [`in_runtime`] wraps each of them so
//! that every poll runs inside the shared runtime's context: timers, sockets
//! and spawned tasks created by Sotto code all belong to this one runtime,
//! whose two worker threads drive them, whichever thread polls.
//!
//! Cancellation: when a Kotlin coroutine or a Swift `Task` is cancelled,
//! UniFFI drops the future. Because the future itself (not a spawned copy)
//! is what the foreign side holds, dropping it stops the work at once and
//! a cancel-safe await loses nothing (a message already dequeued is always
//! returned by the same poll that dequeued it). Every exported future must
//! therefore be cancel-safe at each await point.
//!
//! Why not UniFFI's `async_runtime = "tokio"`: it does the same wrapping but
//! with async-compat's own lazily created single-thread runtime, which our
//! synchronous exports (such as `subscribe`, which starts a listener task)
//! cannot reach; owning the runtime keeps it to one.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::runtime::{Handle, Runtime};

use crate::error::{Result, SottoError};

/// Worker threads: enough to keep listeners and I/O moving on a phone
/// without competing with the app's own threads.
const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

/// The shared runtime, started on first use.
pub(crate) fn runtime() -> Result<&'static Runtime> {
    let built = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("sotto-ffi")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    built.as_ref().map_err(|reason| SottoError::Internal {
        reason: format!("cannot start the tokio runtime: {reason}"),
    })
}

/// A future that enters the shared runtime's context on every poll.
pub(crate) struct InRuntime<F> {
    handle: Handle,
    // Boxed so that this wrapper is `Unpin` without unsafe pin projection.
    future: Pin<Box<F>>,
}

impl<F: Future> Future for InRuntime<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _context = this.handle.enter();
        this.future.as_mut().poll(cx)
    }
}

/// Wraps the body of an exported `async fn` so it runs in the shared
/// runtime's context (see the module docs): `in_runtime(async { .. })?.await`.
pub(crate) fn in_runtime<F: Future>(future: F) -> Result<InRuntime<F>> {
    Ok(InRuntime {
        handle: runtime()?.handle().clone(),
        future: Box::pin(future),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::sync::Arc;
    use std::task::Wake;
    use std::thread::Thread;
    use std::time::{Duration, Instant};

    /// A minimal executor with no tokio context, standing in for the
    /// foreign side (Kotlin's dispatcher, Swift's cooperative pool).
    fn foreign_block_on<F: Future>(future: F) -> F::Output {
        struct Unpark(Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Arc::new(Unpark(std::thread::current())).into();
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::park();
        }
    }

    #[test]
    fn tokio_timers_work_when_polled_from_a_foreign_executor() {
        assert!(
            Handle::try_current().is_err(),
            "test needs no ambient runtime"
        );
        let start = Instant::now();
        // The timer is created inside the async block, i.e. during a poll.
        foreign_block_on(
            in_runtime(async { tokio::time::sleep(Duration::from_millis(30)).await }).unwrap(),
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn spawned_tasks_land_on_the_shared_runtime() {
        let name = foreign_block_on(
            in_runtime(async {
                tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                    .await
                    .unwrap()
            })
            .unwrap(),
        );
        assert_eq!(name.as_deref(), Some("sotto-ffi"));
    }
}
