//! The process's memory allocator: mimalloc, asked for alignment only when
//! a type needs more than every block already has.
//!
//! mimalloc's own Rust wrapper sends every allocation through its aligned
//! entry point. That path takes the plain fast path only for blocks of at
//! most 1 KiB whose free block happens to be aligned; anything larger (a
//! request's boxed future, a connection's buffers) falls to a generic path
//! that over-allocates and realigns. Most Rust types need 16 bytes of
//! alignment or less, which every mimalloc block of at least that size has,
//! so those go to the plain entry points, as the standard library's own
//! system allocator does with malloc.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block of at least this many bytes has
/// (smaller blocks are aligned to their own size class, a multiple of 8).
const BLOCK_ALIGN: usize = 16;

/// mimalloc as the global allocator (see the module doc).
pub struct Mimalloc;

/// Whether a plain allocation of `size` bytes is aligned enough for `align`.
fn plain_suffices(size: usize, align: usize) -> bool {
    align <= BLOCK_ALIGN && align <= size
}

// SAFETY: every method hands mimalloc's pointers back as they came, and
// takes the aligned entry points whenever `plain_suffices` does not hold, so
// each block meets its layout's alignment; `mi_free` and the `realloc`s
// accept any block from either kind of entry point.
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain_suffices(layout.size(), layout.align()) {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain_suffices(layout.size(), layout.align()) {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain_suffices(new_size, layout.align()) {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes around mimalloc's small-block limit (1 KiB) and its size
    /// classes, with every alignment up to a page.
    fn layouts() -> impl Iterator<Item = Layout> {
        let sizes = [1, 7, 8, 12, 16, 24, 40, 100, 1000, 1024, 1040, 4096, 9000];
        let aligns = [1, 2, 4, 8, 16, 32, 64, 128, 4096];
        sizes.into_iter().flat_map(move |size| {
            aligns
                .into_iter()
                .map(move |align| Layout::from_size_align(size, align).expect("a valid layout"))
        })
    }

    #[test]
    fn every_block_meets_its_layouts_alignment_and_a_zeroed_one_is_zero() {
        for layout in layouts() {
            // SAFETY: the layouts have non-zero sizes; each block is read
            // within its size and freed once, with its own layout.
            unsafe {
                for zeroed in [false, true] {
                    let block = if zeroed {
                        Mimalloc.alloc_zeroed(layout)
                    } else {
                        Mimalloc.alloc(layout)
                    };
                    assert!(!block.is_null(), "{layout:?}");
                    assert_eq!(block as usize % layout.align(), 0, "{layout:?}");
                    if zeroed {
                        let bytes = std::slice::from_raw_parts(block, layout.size());
                        assert!(bytes.iter().all(|&b| b == 0), "{layout:?} not zeroed");
                    }
                    Mimalloc.dealloc(block, layout);
                }
            }
        }
    }

    #[test]
    fn a_grown_or_shrunk_block_keeps_its_bytes_and_its_alignment() {
        for layout in layouts() {
            for new_size in [layout.size() / 2 + 1, layout.size() * 3] {
                let kept = layout.size().min(new_size);
                // SAFETY: the block is written within its size, resized
                // once, read within the smaller of both sizes and freed
                // once with its new layout.
                unsafe {
                    let block = Mimalloc.alloc(layout);
                    std::ptr::write_bytes(block, 0xA5, layout.size());
                    let moved = Mimalloc.realloc(block, layout, new_size);
                    assert!(!moved.is_null(), "{layout:?} to {new_size}");
                    assert_eq!(
                        moved as usize % layout.align(),
                        0,
                        "{layout:?} to {new_size}"
                    );
                    let bytes = std::slice::from_raw_parts(moved, kept);
                    assert!(bytes.iter().all(|&b| b == 0xA5), "{layout:?} to {new_size}");
                    let resized =
                        Layout::from_size_align(new_size, layout.align()).expect("a valid layout");
                    Mimalloc.dealloc(moved, resized);
                }
            }
        }
    }

    #[test]
    fn only_alignments_a_plain_block_has_take_the_plain_path() {
        assert!(plain_suffices(4096, 16));
        assert!(plain_suffices(8, 8));
        assert!(
            !plain_suffices(8, 16),
            "an 8-byte block is aligned to 8 only"
        );
        assert!(!plain_suffices(4096, 64));
    }
}
