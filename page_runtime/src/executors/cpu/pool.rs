//! The tab's worker threads (the threaded build: wasm atomics and shared memory, in a
//! cross-origin isolated page). `www/main.js` starts Web Workers that instantiate this module
//! on the same memory and call [`pool_register`], then [`pool_worker`], which never returns.
//!
//! The main thread hands out one job at a time (`run`): a function of a part index and a part
//! count. It takes parts itself too, then spins until every part is done — a browser's main
//! thread must not block (`memory.atomic.wait` traps there), and the kernels it waits for last
//! a few milliseconds. Workers claim parts through one 64-bit word holding the job's
//! generation, its part count and its next part, so a worker late from an older job can never
//! claim a part of a newer one, nor read a count that is not its job's; between jobs they spin briefly (a decode step issues a job every fraction of a
//! millisecond), then sleep on `memory.atomic.wait32` until the next generation is published.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use core::arch::wasm32::{memory_atomic_notify, memory_atomic_wait32};

/// The job's generation (bits 32..64), its parts (16..32) and the next unclaimed part (0..16).
static STATE: AtomicU64 = AtomicU64::new(0);
/// The generation alone, what sleeping workers wait on.
static GENERATION: AtomicU32 = AtomicU32::new(0);
/// Parts of the current job that are finished.
static DONE: AtomicUsize = AtomicUsize::new(0);
/// The current job: a pointer to the main thread's `&dyn Fn(usize)`, valid until `DONE` reaches
/// the job's part count (the main thread does not return before).
static JOB: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
/// Workers that registered.
static WORKERS: AtomicUsize = AtomicUsize::new(0);
/// A job is running: a kernel inside a part (on any thread) runs its own splits serially.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Threads kernels may use (`set_limit`: the host's share of the machine for this tab); workers
/// past it sleep through jobs.
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Spins a worker makes between jobs before it sleeps (about a millisecond).
const SPINS: u32 = 1 << 16;

type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// Threads that run kernels: the main thread and the registered workers.
pub fn threads() -> usize {
    (1 + WORKERS.load(Ordering::Acquire)).min(LIMIT.load(Ordering::Acquire))
}

/// Use at most `n` threads (at least the main thread) from the next job on; the count in force.
/// Workers past it take no parts and sleep without spinning, so they cost the machine nothing.
pub fn set_limit(n: usize) -> usize {
    LIMIT.store(n.max(1), Ordering::Release);
    threads()
}

/// The most parts a job has (the state word's field).
pub const MAX_PARTS: usize = 0xffff;

/// Run `f(0..parts)`, the parts spread over the main thread and the workers; returns when all
/// are done. Jobs come from the main thread only, one at a time.
pub fn run(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 || parts > MAX_PARTS || threads() <= 1 || ACTIVE.swap(true, Ordering::AcqRel) {
        (0..parts).for_each(f);
        return;
    }
    let job: Job = f;
    JOB.store(&job as *const Job as *mut (), Ordering::Release);
    DONE.store(0, Ordering::Release);
    let generation = GENERATION.load(Ordering::Acquire).wrapping_add(1);
    STATE.store((generation as u64) << 32 | (parts as u64) << 16, Ordering::Release);
    GENERATION.store(generation, Ordering::Release);
    // SAFETY: notify on a live static's address wakes waiters; it never traps.
    unsafe { memory_atomic_notify(GENERATION.as_ptr() as *mut i32, u32::MAX) };
    while let Some(p) = claim(generation) {
        f(p);
        DONE.fetch_add(1, Ordering::AcqRel);
    }
    while DONE.load(Ordering::Acquire) < parts {
        std::hint::spin_loop();
    }
    ACTIVE.store(false, Ordering::Release);
}

/// The next part of job `generation`, if it has one left.
fn claim(generation: u32) -> Option<usize> {
    let mut s = STATE.load(Ordering::Acquire);
    loop {
        let (g, parts, next) = ((s >> 32) as u32, ((s >> 16) & 0xffff) as usize, (s & 0xffff) as usize);
        if g != generation || next >= parts {
            return None;
        }
        match STATE.compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(next),
            Err(now) => s = now,
        }
    }
}

/// What a worker instantiates: `[module, memory]` (the compiled module and the shared memory).
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn pool_handles() -> js_sys::Array {
    [wasm_bindgen::module(), wasm_bindgen::memory()].into_iter().collect()
}

/// Called by a worker once its instance is up: counts it (a worker's index).
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn pool_register() -> usize {
    WORKERS.fetch_add(1, Ordering::AcqRel)
}

/// A worker's loop: wait for a job, take its parts, repeat. Never returns. `index`: what
/// `pool_register` gave it; a worker at or past the thread limit (`set_limit`) sits jobs out.
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn pool_worker(index: usize) {
    let mut seen = GENERATION.load(Ordering::Acquire);
    loop {
        let mut spins = 0u32;
        let benched = index + 1 >= LIMIT.load(Ordering::Acquire);
        while GENERATION.load(Ordering::Acquire) == seen {
            if spins < SPINS && !benched {
                spins += 1;
                std::hint::spin_loop();
            } else {
                // SAFETY: a wait on a live static's address; workers may block.
                unsafe { memory_atomic_wait32(GENERATION.as_ptr() as *mut i32, seen as i32, -1) };
            }
        }
        seen = GENERATION.load(Ordering::Acquire);
        if index + 1 >= LIMIT.load(Ordering::Acquire) {
            continue;
        }
        while let Some(p) = claim(seen) {
            // SAFETY: a successful claim means job `seen` is unfinished (this part is not done),
            // so the main thread is still inside `run` and `JOB` points at its live `&dyn Fn`:
            // written before the state word was published, read after the claim acquired it.
            let f: Job = unsafe { *(JOB.load(Ordering::Acquire) as *const Job) };
            f(p);
            DONE.fetch_add(1, Ordering::AcqRel);
        }
    }
}
