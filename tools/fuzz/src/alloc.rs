//! Measures the heap one thread holds at most while it runs a decoder: the system allocator
//! with per-thread counts. A test binary installs it with
//! `#[global_allocator] static ALLOC: Metered = Metered;` and asks [`peak_during`].
//!
//! Counts are per thread (test harnesses run tests on several threads) and drive the
//! decoder on the calling thread (a current-thread runtime, or a single poll).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

thread_local! {
    /// Bytes this thread allocated and has not freed (freeing another thread's memory makes it
    /// go down, hence signed).
    static HELD: Cell<isize> = const { Cell::new(0) };
    /// The most [`HELD`] was since the last [`peak_during`] began.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counting each thread's bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metered;

fn count(delta: isize) {
    // `try_with`: the thread's counters may be gone while it exits.
    let _ = HELD.try_with(|held| {
        let now = held.get() + delta;
        held.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call goes to `System` unchanged; the counting only reads the layouts.
unsafe impl GlobalAlloc for Metered {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Both blocks may be held for a moment: count the new one first.
            count(new_size as isize);
            count(-(layout.size() as isize));
        }
        new
    }
}

/// Runs `f` and returns what it returned and the most heap, in bytes, this thread held at once
/// while it ran beyond what it held before (0 when [`Metered`] is not the global allocator).
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = HELD.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, usize::try_from(peak - before).unwrap_or(0))
}
