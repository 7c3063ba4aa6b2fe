//! Bulk work (hashing, encrypting and storing uploads, parsing STOW instances) on a small pool
//! of threads that the operating system runs after the request path.
//!
//! On tokio's blocking pool every chunk of every upload gets its own thread at normal priority:
//! with 16 chunks in flight on two cores the scheduler gave the two async workers, which answer
//! every other request (`/health` included), a small share of the CPU, and their p99 grew to
//! hundreds of milliseconds (issue 13, `bench/hub/health.sh`). Here bulk work runs on at most
//! one thread per core, each at nice 10 (Linux: niceness is per thread), so an idle machine
//! still gives uploads full speed while a busy one serves requests first.

use std::sync::Arc;

/// Niceness of bulk threads: CFS weights nice 10 at about a tenth of nice 0.
const BULK_NICENESS: i32 = 10;

/// The pool; cheap to clone.
#[derive(Clone)]
pub struct BulkPool {
    pool: Arc<rayon::ThreadPool>,
}

/// Bulk work that could not run (the pool is gone or the work panicked).
#[derive(Debug, thiserror::Error)]
#[error("bulk work failed: {0}")]
pub struct BulkError(String);

impl BulkPool {
    /// One thread per available core, each lowered to [`BULK_NICENESS`].
    pub fn new() -> Result<BulkPool, BulkError> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("medfed-bulk-{i}"))
            .start_handler(|_| lower_own_priority())
            .build()
            .map_err(|e| BulkError(e.to_string()))?;
        Ok(BulkPool {
            pool: Arc::new(pool),
        })
    }

    /// Run `f` on a bulk thread and wait for it without blocking the async worker.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BulkError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
            // A panic must not take the pool thread (rayon aborts the process on one).
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(out);
        });
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(BulkError("the work panicked".into())),
            Err(_) => Err(BulkError("the pool dropped the work".into())),
        }
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // two libc calls with no pointers: there is no safe wrapper for per-thread nice
fn lower_own_priority() {
    // SAFETY: gettid and setpriority take no pointers; on Linux PRIO_PROCESS with a thread id
    // changes that thread only.
    let done = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, BULK_NICENESS)
    };
    if done != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "bulk thread keeps normal priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_own_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_at_lower_priority_and_a_panic_is_an_error() {
        let pool = BulkPool::new().unwrap();
        let nice = pool
            .run(|| {
                std::fs::read_to_string("/proc/thread-self/stat")
                    .ok()
                    .and_then(|s| {
                        // Field 19 (nice), after the command name in parentheses.
                        let rest = &s[s.rfind(')')? + 2..];
                        rest.split_whitespace().nth(16)?.parse::<i32>().ok()
                    })
            })
            .await
            .unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(nice, Some(BULK_NICENESS));
        }
        let e = pool.run(|| -> u8 { panic!("boom") }).await.unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        assert_eq!(pool.run(|| 41 + 1).await.unwrap(), 42);
    }
}
