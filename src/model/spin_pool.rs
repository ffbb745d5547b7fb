//! A small thread pool for the serving encoder's dense layers, whose workers spin briefly
//! between jobs instead of sleeping.
//!
//! Why not rayon: one forward pass at batch 1 is ~16 dense calls of 100-300 µs each. Rayon's
//! idle workers go to sleep (futex) between calls, and waking them each time cost ~20 % of a
//! batch-1 pass (profiled: `finish_task_switch`, `sched_yield`, futex wake-ups). Here a worker
//! that has just finished a job keeps polling for the next one for a short while (`SPIN`), so
//! the calls of one pass reach it in nanoseconds; then it parks until the next pass. After the
//! first few microseconds the polling yields the core between polls (`YIELD_AFTER`), so the
//! wait costs other threads nothing when they have work.
//!
//! Work is split into items claimed one at a time from a shared counter, and the caller runs
//! items too: when a worker is not scheduled (a shared machine), the caller simply does its
//! share, and only waits for items a worker has actually started. The counter carries the job's
//! sequence number, so a worker that wakes late can never claim an item of a newer job.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker polls for the next job before parking.
const SPIN: Duration = Duration::from_micros(300);

/// How long an idle worker polls without giving way. Past it, it yields between polls: the
/// gaps inside a pass (layer norms, activations, the caller's share) are where the tokio
/// workers, the store's database and, on a shared machine, other processes get a core. Pure
/// spinning there took about 14 % of the server's CPU at half load and pushed those threads
/// back; yielding lowered the open-loop p99 at half load in every measured pair without
/// lowering the maximum throughput (`benches/RESULTS.md`, 2026-12-03 08:30).
const YIELD_AFTER: Duration = Duration::from_micros(5);

/// The job being run: its sequence number, its item count and the caller's closure with its
/// lifetime erased; valid until the job completes (`SpinPool::run` waits for that before
/// returning). The three travel together: a worker that read the cursor of one job and the
/// item count of the next could claim an index of the next job under the old sequence number,
/// run an item twice and let the caller return while an item still ran (a use after free,
/// seen as a SIGSEGV in the int8 kernel under 32 concurrent clients).
#[derive(Clone, Copy)]
struct JobRef {
    seq: u64,
    items: usize,
    f: *const (dyn Fn(usize) + Sync + 'static),
}

// SAFETY: a JobRef is only dereferenced while its job runs, and the closure is `Sync`.
unsafe impl Send for JobRef {}

struct Shared {
    /// High 32 bits: job sequence number; low 32 bits: next item to claim.
    cursor: AtomicU64,
    done: AtomicUsize,
    job: Mutex<Option<JobRef>>,
    /// The first panic of the current job's items, re-raised on the caller.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Workers parked on `wake`.
    sleepers: AtomicUsize,
    /// Bumped by `SpinPool::wake`: a parked worker wakes and spins again without a job.
    nudge: AtomicUsize,
    /// Set by `SpinPool::rest`: no job is coming soon, park now instead of spinning.
    resting: AtomicBool,
    park: Mutex<()>,
    wake: Condvar,
}

pub struct SpinPool {
    shared: Arc<Shared>,
    /// One job at a time; a caller that finds the pool busy runs its items alone.
    submit: Mutex<u32>,
    workers: usize,
}

impl SpinPool {
    /// A pool running jobs on the caller plus `threads - 1` workers.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            cursor: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            job: Mutex::new(None),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            nudge: AtomicUsize::new(0),
            resting: AtomicBool::new(false),
            park: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = threads.max(1) - 1;
        for i in 0..workers {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("intentd-dense-{i}"))
                .spawn(move || worker(&s))
                .expect("spawn dense worker thread");
        }
        Self {
            shared,
            submit: Mutex::new(0),
            workers,
        }
    }

    /// The process-wide pool, sized like candle's (`RAYON_NUM_THREADS`, else every core).
    pub fn global() -> &'static SpinPool {
        static POOL: OnceLock<SpinPool> = OnceLock::new();
        POOL.get_or_init(|| SpinPool::new(candle_core::utils::get_num_threads()))
    }

    /// Wakes parked workers so they are already polling when the next job arrives (a batch
    /// is about to be run: its embedding lookup and first layer norm hide the wake-up).
    pub fn wake(&self) {
        let s = &*self.shared;
        s.resting.store(false, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            s.nudge.fetch_add(1, Ordering::SeqCst);
            let _g = s.park.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
    }

    /// Tells spinning workers that no job follows soon (a forward pass just ended): they park
    /// at once rather than spin, leaving the cores to the threads that send the answers.
    pub fn rest(&self) {
        self.shared.resting.store(true, Ordering::SeqCst);
    }

    /// Runs `f(0) .. f(items - 1)`, each exactly once, spread over the pool; returns when all
    /// have finished. If an item panics (on any thread), the other items still run and the
    /// first panic is re-raised here.
    pub fn run(&self, items: usize, f: &(dyn Fn(usize) + Sync)) {
        if items == 0 {
            return;
        }
        let mut seq_guard = match self.submit.try_lock() {
            Ok(g) if self.workers > 0 && items > 1 && items < u32::MAX as usize => g,
            _ => {
                (0..items).for_each(f);
                return;
            }
        };
        *seq_guard = seq_guard.wrapping_add(1);
        self.shared.resting.store(false, Ordering::SeqCst);
        let seq = *seq_guard as u64;
        let s = &*self.shared;
        let f_ptr: *const (dyn Fn(usize) + Sync + '_) = f;
        // SAFETY: erasing the lifetime; the pointer is used only until `done == items`, which
        // this function waits for before returning.
        let job = JobRef {
            seq,
            items,
            f: unsafe {
                std::mem::transmute::<
                    *const (dyn Fn(usize) + Sync + '_),
                    *const (dyn Fn(usize) + Sync + 'static),
                >(f_ptr)
            },
        };
        s.done.store(0, Ordering::SeqCst);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        // Publishing the cursor starts the job.
        s.cursor.store(seq << 32, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.park.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        claim_and_run(s, seq, items, f);
        // Items claimed by workers must finish before `f` goes out of scope.
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < items {
            spins += 1;
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let panic = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(seq_guard);
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
    }
}

/// Claims items of job `seq` until none is left.
fn claim_and_run(s: &Shared, seq: u64, items: usize, f: &(dyn Fn(usize) + Sync)) {
    let items = items as u64;
    loop {
        let cur = s.cursor.load(Ordering::Acquire);
        if cur >> 32 != seq || (cur & 0xffff_ffff) >= items {
            return;
        }
        if s.cursor
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let i = (cur & 0xffff_ffff) as usize;
            // A panicking item still counts as done, so the caller is never left waiting.
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))) {
                s.panic
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(p);
            }
            s.done.fetch_add(1, Ordering::Release);
        }
    }
}

fn worker(s: &Shared) {
    let mut last_seen = 0u64;
    loop {
        // Wait for a job newer than the last one seen: spin first, then park.
        let mut started = Instant::now();
        let mut polls = 0u32;
        let seq = loop {
            let seq = s.cursor.load(Ordering::Acquire) >> 32;
            if seq != last_seen {
                break seq;
            }
            polls += 1;
            if !polls.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let spun = started.elapsed();
            if spun < SPIN && !s.resting.load(Ordering::Relaxed) {
                if spun > YIELD_AFTER {
                    // Keep polling, but let a thread that is runnable on this core go first.
                    std::thread::yield_now();
                }
                continue;
            }
            let guard = s.park.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let nudged = s.nudge.load(Ordering::SeqCst);
            let mut guard = guard;
            while s.cursor.load(Ordering::SeqCst) >> 32 == last_seen
                && s.nudge.load(Ordering::SeqCst) == nudged
            {
                guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
            // Spin afresh: a job (or the one `wake` announced) is near.
            started = Instant::now();
        };
        last_seen = seq;
        // The job pointer is stable while any of its items is unfinished; `claim_and_run`
        // only runs an item it claimed under this sequence number, so reading it here and
        // using it after a successful claim is sound. A job already over leaves `None` or a
        // newer job whose sequence number differs (no claim succeeds).
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        // Only the job this sequence number names: its closure and its item count.
        let Some(job) = job.filter(|j| j.seq == seq) else {
            continue;
        };
        // SAFETY: see above; the pointer came from a live `&(dyn Fn(usize) + Sync)`.
        let f: &(dyn Fn(usize) + Sync) = unsafe { &*job.f };
        claim_and_run(s, seq, job.items, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_item_runs_exactly_once_across_many_jobs() {
        let pool = SpinPool::new(3);
        for n in [1usize, 2, 7, 64, 500] {
            for _ in 0..50 {
                let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "n = {n}"
                );
            }
        }
    }

    #[test]
    fn workers_that_parked_wake_for_the_next_job() {
        let pool = SpinPool::new(2);
        let sum = AtomicUsize::new(0);
        pool.run(10, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        std::thread::sleep(SPIN * 10);
        // Slow items: the parked worker must join in (or the caller finishes alone); either
        // way all run once.
        let ran_on = Mutex::new(std::collections::HashSet::new());
        pool.run(8, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
            ran_on.lock().unwrap().insert(std::thread::current().id());
            std::thread::sleep(Duration::from_millis(2));
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45 + 28);
        assert!(!ran_on.lock().unwrap().is_empty());
    }

    #[test]
    fn concurrent_callers_each_get_all_their_items() {
        let pool = Arc::new(SpinPool::new(2));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let count = AtomicUsize::new(0);
                        pool.run(16, &|_| {
                            count.fetch_add(1, Ordering::Relaxed);
                        });
                        assert_eq!(count.load(Ordering::Relaxed), 16);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_panicking_item_propagates_to_the_caller_and_the_pool_still_works() {
        let pool = SpinPool::new(2);
        for _ in 0..20 {
            let count = AtomicUsize::new(0);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(8, &|i| {
                    count.fetch_add(1, Ordering::Relaxed);
                    assert_ne!(i, 3, "boom");
                })
            }));
            assert!(
                r.is_err(),
                "the item's panic reaches the caller, whichever thread ran it"
            );
            assert_eq!(
                count.load(Ordering::Relaxed),
                8,
                "the other items still ran"
            );
        }
        let count = AtomicUsize::new(0);
        pool.run(5, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 5);
    }
}
