//! A persistent worker pool that runs [`Parallel`] jobs without allocating.
//!
//! The job is a borrowed `&dyn Fn` published through a mutex-protected slot; workers claim
//! task indices from an atomic counter and the caller works alongside them, then waits until
//! every worker has left the job. Mutexes and condition variables are futex-based, so a job
//! costs no heap allocation.
//!
//! Why workers and the caller spin for a short while before they sleep: a network is a chain
//! of 20-50 jobs (one per convolution) of 0.05-1 ms each. Waking a thread that sleeps on a
//! condition variable costs a system call on each side and, on a virtual machine whose idle
//! CPU has halted, 50-85 us of wake-up latency (`examples/pool_overhead.rs` measures it), which
//! is most of a small layer's time. A worker that has just finished a job therefore polls for
//! the next one for [`SPIN`] before it parks, and the caller polls for the workers to finish
//! before it sleeps; between frames (milliseconds apart) everyone still sleeps.

use crate::kernels::Parallel;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = dyn Fn(usize, usize) + Sync;

/// How long a worker polls for the next job, and the caller for the end of its job, before
/// sleeping on a condition variable: longer than the gap between the layers of one forward
/// pass, far shorter than the gap between frames.
const SPIN: Duration = Duration::from_micros(100);

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is Sync and outlives the job: `run` does not return before every worker
// has stopped using it.
unsafe impl Send for JobPtr {}

struct State {
    generation: u64,
    job: Option<JobPtr>,
    tasks: usize,
    shutdown: bool,
    /// Workers waiting on `work` (only then does publishing a job need a notify).
    sleeping_workers: usize,
    /// The caller waits on `done` (only then does the last worker need to notify).
    caller_sleeping: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    /// `State::generation`, readable without the lock by spinning workers.
    published: AtomicU64,
    /// Workers still inside the current job.
    busy_workers: AtomicUsize,
    next_task: AtomicUsize,
    panicked: AtomicBool,
}

/// Polls `ready` for up to [`SPIN`]; true as soon as it holds.
fn spin_until(ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= SPIN {
            return ready();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn work_on(&self, job: &(dyn Fn(usize, usize) + Sync), tasks: usize, worker: usize) {
        let result = catch_unwind(AssertUnwindSafe(|| loop {
            let task = self.next_task.fetch_add(1, Ordering::Relaxed);
            if task >= tasks {
                break;
            }
            job(task, worker);
        }));
        if result.is_err() {
            self.panicked.store(true, Ordering::Relaxed);
        }
    }
}

/// `threads - 1` parked threads plus the calling thread.
pub struct WorkerPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
}

impl WorkerPool {
    /// Starts `threads - 1` workers (none for `threads <= 1`).
    pub fn new(threads: usize) -> std::io::Result<WorkerPool> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                tasks: 0,
                shutdown: false,
                sleeping_workers: 0,
                caller_sleeping: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            published: AtomicU64::new(0),
            busy_workers: AtomicUsize::new(0),
            next_task: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        let mut handles = Vec::new();
        for worker in 1..threads.max(1) {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("face2exp-infer-{worker}"))
                .spawn(move || worker_loop(&shared, worker))?;
            handles.push(handle);
        }
        Ok(WorkerPool {
            shared,
            handles,
            run_lock: Mutex::new(()),
        })
    }
}

fn worker_loop(shared: &Shared, worker: usize) {
    let mut seen = 0u64;
    loop {
        spin_until(|| shared.published.load(Ordering::Acquire) != seen);
        let (job, tasks) = {
            let mut state = shared.lock();
            while state.generation == seen && !state.shutdown {
                state.sleeping_workers += 1;
                state = shared.work.wait(state).unwrap_or_else(|p| p.into_inner());
                state.sleeping_workers -= 1;
            }
            if state.shutdown {
                return;
            }
            seen = state.generation;
            (state.job, state.tasks)
        };
        if let Some(job) = job {
            // SAFETY: see JobPtr.
            shared.work_on(unsafe { &*job.0 }, tasks, worker);
        }
        if shared.busy_workers.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The caller checks `busy_workers` under the lock before it sleeps, so taking the
            // lock here means it is either not asleep yet (and will see 0) or flagged.
            let state = shared.lock();
            if state.caller_sleeping {
                shared.done.notify_all();
            }
        }
    }
}

impl Parallel for WorkerPool {
    fn threads(&self) -> usize {
        self.handles.len() + 1
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if self.handles.is_empty() || tasks <= 1 {
            for task in 0..tasks {
                f(task, 0);
            }
            return;
        }
        let _exclusive = self.run_lock.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: erasing the lifetime is sound because this function waits below until no
        // worker holds the pointer any more.
        let job: *const Job =
            unsafe { core::mem::transmute::<&(dyn Fn(usize, usize) + Sync), &'static Job>(f) };
        self.shared.next_task.store(0, Ordering::Relaxed);
        self.shared.panicked.store(false, Ordering::Relaxed);
        {
            let mut state = self.shared.lock();
            state.generation += 1;
            state.job = Some(JobPtr(job));
            state.tasks = tasks;
            self.shared
                .busy_workers
                .store(self.handles.len(), Ordering::Release);
            self.shared
                .published
                .store(state.generation, Ordering::Release);
            if state.sleeping_workers > 0 {
                self.shared.work.notify_all();
            }
        }
        self.shared.work_on(f, tasks, 0);
        let busy = || self.shared.busy_workers.load(Ordering::Acquire) > 0;
        if !spin_until(|| !busy()) {
            let mut state = self.shared.lock();
            while busy() {
                state.caller_sleeping = true;
                state = self
                    .shared
                    .done
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            state.caller_sleeping = false;
        }
        self.shared.lock().job = None;
        if self.shared.panicked.load(Ordering::Relaxed) {
            panic!("a face2exp-infer worker task panicked");
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_a_valid_worker() {
        let pool = WorkerPool::new(3).unwrap();
        for round in 0..50 {
            let hits: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
            pool.run(37, &|task, worker| {
                assert!(worker < 3);
                hits[task].fetch_add(round + 1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == round + 1));
        }
    }

    #[test]
    fn jobs_run_whether_the_workers_spin_or_have_parked() {
        let pool = WorkerPool::new(2).unwrap();
        // Gaps inside the spin window, then past it (the workers and the caller park).
        for gap in [0, 10, 5_000, 0, 20_000] {
            std::thread::sleep(Duration::from_micros(gap));
            let ran = AtomicUsize::new(0);
            pool.run(8, &|_, _| {
                // Long enough that the caller finishes first and has to wait for the worker.
                std::thread::sleep(Duration::from_micros(300));
                ran.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(ran.load(Ordering::Relaxed), 8);
        }
    }
}
