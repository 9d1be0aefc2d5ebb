//! The counting allocator: the system allocator, counting the bytes each
//! thread asks for while its counter is switched on.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Once;

/// The system allocator, counting the bytes each thread asks for while its
/// counter is switched on ([`allocated_by`]). A test binary installs it
/// with [`install_counting_allocator!`](crate::install_counting_allocator).
pub struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

/// Adds `bytes` to this thread's counter if it is on. `try_with` because an
/// allocation may happen while the thread's locals are being torn down.
fn note(bytes: usize) {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(bytes)));
        }
    });
}

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds the `GlobalAlloc` contract; the counting touches only
// const-initialized thread-locals that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's layout is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    /// A reallocation counts as a fresh allocation of `new_size` bytes, so
    /// the counter is an upper bound on what a copying allocator would need
    /// (a growing vector is charged for every capacity it passes through).
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` and `layout` come from `System`; `new_size` is the
        // caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Declares [`Counting`] as the global allocator of the calling test
/// binary. A global allocator is declared once per binary, so each test
/// file that measures allocations (through [`allocated_by`], a
/// [`Probe`](crate::Probe) or [`shape`](crate::shape)) calls this once, at
/// its top level.
#[macro_export]
macro_rules! install_counting_allocator {
    () => {
        #[global_allocator]
        static TENET_HOSTILE_COUNTING: $crate::Counting = $crate::Counting;
    };
}

/// Switches this thread's counter off again, also when `f` panics.
struct CountingOff;

impl Drop for CountingOff {
    fn drop(&mut self) {
        COUNTING.with(|c| c.set(false));
    }
}

fn counted<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let off = CountingOff;
    COUNTING.with(|c| c.set(true));
    let out = f();
    drop(off);
    (out, ALLOCATED.with(Cell::get) - before)
}

/// Runs `f` and returns its result and the bytes it allocated on this thread
/// (the result's own allocations included).
///
/// # Panics
///
/// If the test binary did not install [`Counting`]: every bound would hold
/// trivially, with nothing counted.
pub fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let (_, used) = counted(|| std::hint::black_box(vec![0u8; 1]));
        assert!(
            used > 0,
            "allocations are not counted: call tenet_hostile::install_counting_allocator!() in the test binary"
        );
    });
    counted(f)
}
