//! Heap allocations per forward are constant (no per-forward growth) and a generation leaves no
//! live bytes behind once the session is warm. A counting global allocator measures it.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use setblock::{GenerateOptions, Mode, Selection, Session};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (allocations, live bytes left) of one generation on a reset, warm session.
fn measure(s: &mut Session, prompt: &[u32], opts: &GenerateOptions) -> (usize, isize) {
    s.reset();
    let live0 = LIVE.load(Ordering::SeqCst);
    let a0 = ALLOCS.load(Ordering::SeqCst);
    let out = s.generate_tokens(prompt, opts, &mut |_| {}).unwrap();
    let a1 = ALLOCS.load(Ordering::SeqCst);
    drop(out);
    (a1 - a0, LIVE.load(Ordering::SeqCst) - live0)
}

fn per_forward(mode: Mode) -> f64 {
    let mut s = Session::new(common::model()).unwrap();
    let opts = |n| GenerateOptions {
        mode,
        block_size: Some(4),
        selection: Some(Selection::EbEntropy { gamma: 0.0 }),
        max_new_tokens: n,
        chat_template: Some(false),
        ..GenerateOptions::default()
    };
    let prompt = common::golden()[1].prompt_ids.clone();
    measure(&mut s, &prompt, &opts(100)); // warm-up: buffers reach their size
    let (short, _) = measure(&mut s, &prompt, &opts(20));
    let (long, leak) = measure(&mut s, &prompt, &opts(80));
    // gamma 0 reveals one slot per forward: forwards == tokens in both modes
    let per = (long - short) as f64 / 60.0;
    println!("{mode:?}: {short} allocations for 20 forwards, {long} for 80 -> {per:.1} per forward; live bytes after: {leak}");
    assert!(leak <= 0, "{leak} bytes still allocated after a generation");
    per
}

#[test]
fn allocations_per_forward_are_constant_and_bounded() {
    for mode in [Mode::Ntp, Mode::Sbd] {
        let per = per_forward(mode);
        assert!(per <= 64.0, "{mode:?}: {per} allocations per forward");
    }
}
