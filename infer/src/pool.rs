//! A persistent worker pool that runs [`Parallel`] jobs without allocating.
//!
//! The job is a borrowed `&dyn Fn` published through a mutex-protected slot; workers claim
//! task indices from an atomic counter and the caller works alongside them, then waits until
//! every worker has left the job. Mutexes and condition variables are futex-based, so a job
//! costs no heap allocation.

use crate::kernels::Parallel;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

type Job = dyn Fn(usize, usize) + Sync;

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is Sync and outlives the job: `run` does not return before every worker
// has stopped using it.
unsafe impl Send for JobPtr {}

struct State {
    generation: u64,
    job: Option<JobPtr>,
    tasks: usize,
    busy_workers: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    next_task: AtomicUsize,
    panicked: AtomicBool,
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
                busy_workers: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
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
        let (job, tasks) = {
            let mut state = shared.lock();
            while state.generation == seen && !state.shutdown {
                state = shared.work.wait(state).unwrap_or_else(|p| p.into_inner());
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
        let mut state = shared.lock();
        state.busy_workers -= 1;
        if state.busy_workers == 0 {
            shared.done.notify_all();
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
            state.busy_workers = self.handles.len();
            self.shared.work.notify_all();
        }
        self.shared.work_on(f, tasks, 0);
        let mut state = self.shared.lock();
        while state.busy_workers > 0 {
            state = self
                .shared
                .done
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        state.job = None;
        drop(state);
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
}
