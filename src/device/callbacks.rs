//! The audio callbacks: real-time code. They copy samples between the device and a
//! pre-allocated ring and bump atomics — no allocation, no lock, no I/O, no channel
//! send, no logging. The tests below run them under a counting allocator.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cpal::{FromSample, Sample};
use ringbuf::traits::{Consumer, Observer, Producer};
use ringbuf::{HeapCons, HeapProd};

use super::Health;

/// Frames converted at a time (a fixed stack buffer: callbacks may be any size).
const BLOCK: usize = 256;

/// Capture: `data` (interleaved, any format, any channel count) mixed to mono f32 and
/// pushed into the ring; what does not fit is dropped and counted.
pub fn capture<T>(data: &[T], channels: usize, prod: &mut HeapProd<f32>, health: &Health)
where
    T: Sample,
    f32: FromSample<T>,
{
    let mut mono = [0f32; BLOCK];
    let scale = 1.0 / channels as f32;
    for block in data.chunks(BLOCK * channels) {
        let frames = block.len() / channels;
        for (m, frame) in mono[..frames].iter_mut().zip(block.chunks_exact(channels)) {
            *m = frame.iter().map(|&s| f32::from_sample(s)).sum::<f32>() * scale;
        }
        let pushed = prod.push_slice(&mono[..frames]);
        if pushed < frames {
            health.lost.fetch_add((frames - pushed) as u64, Ordering::Relaxed);
        }
    }
    health.beat();
}

/// What the playback side and its callback share.
#[derive(Debug, Default)]
pub struct Control {
    /// Set to drop everything queued (a cancelled reply): the callback empties the
    /// ring and clears the flag.
    pub flush: AtomicBool,
    /// More of a reply is still to come: running dry now is an underrun, not the
    /// silence after a reply.
    pub active: AtomicBool,
    /// Frames that have left the ring, ever: taken by the device, or dropped by a
    /// flush. It is the speaker's timeline: a frame written to the ring as the Nth
    /// is past once this reaches N, whether it was heard or cut.
    pub consumed: AtomicU64,
}

/// Playback: mono f32 from the ring into `out` (interleaved, any format), every
/// channel the same; silence where the ring has nothing.
pub fn playback<T>(out: &mut [T], channels: usize, cons: &mut HeapCons<f32>, control: &Control, health: &Health)
where
    T: Sample + FromSample<f32>,
{
    let mut consumed = 0u64;
    if control.flush.swap(false, Ordering::AcqRel) {
        let n = cons.occupied_len();
        consumed += cons.skip(n) as u64;
    }
    let mut mono = [0f32; BLOCK];
    let mut short = 0usize;
    for block in out.chunks_mut(BLOCK * channels) {
        let frames = block.len() / channels;
        let got = cons.pop_slice(&mut mono[..frames]);
        mono[got..frames].fill(0.0);
        short += frames - got;
        consumed += got as u64;
        for (frame, &m) in block.chunks_exact_mut(channels).zip(&mono[..frames]) {
            frame.fill(T::from_sample(m));
        }
    }
    control.consumed.fetch_add(consumed, Ordering::Relaxed);
    if short > 0 && control.active.load(Ordering::Relaxed) {
        // Ran dry while more of the reply was still to come.
        health.lost.fetch_add(1, Ordering::Relaxed);
    }
    health.beat();
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringbuf::traits::Split;
    use ringbuf::HeapRb;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// Counts allocations made on this thread while armed.
    struct Counting;

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
        static COUNT: Cell<usize> = const { Cell::new(0) };
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if ARMED.with(Cell::get) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if ARMED.with(Cell::get) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if ARMED.with(Cell::get) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Allocations (and frees) `f` makes.
    fn allocations(f: impl FnOnce()) -> usize {
        COUNT.with(|c| c.set(0));
        ARMED.with(|a| a.set(true));
        f();
        ARMED.with(|a| a.set(false));
        COUNT.with(Cell::get)
    }

    #[test]
    fn the_counter_sees_allocations() {
        assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 64]))) >= 1, "else the tests below prove nothing");
    }

    #[test]
    fn callbacks_neither_allocate_nor_free() {
        let health = Health::new();
        let control = Control::default();
        let (mut prod, mut cons) = HeapRb::<f32>::new(4096).split();
        // Stereo i16 at every size a device might use, a ring filling up and running dry.
        let stereo_i16: Vec<i16> = (0..4800).map(|i| (i % 200) as i16 * 100).collect();
        let mut out_f32 = vec![1.0f32; 2 * 1500];
        let mut out_u8 = vec![0u8; 700];
        let n = allocations(|| {
            for size in [2, 64, 480, 960, 4800] {
                capture(&stereo_i16[..size], 2, &mut prod, &health);
            }
            capture(&out_f32[..], 1, &mut prod, &health); // overflow: counted, not stored
            control.active.store(true, Ordering::Relaxed);
            control.flush.store(true, Ordering::Relaxed);
            playback(&mut out_f32, 2, &mut cons, &control, &health);
            playback(&mut out_u8, 1, &mut cons, &control, &health);
        });
        assert_eq!(n, 0, "the audio callbacks allocated {n} times");
        assert!(health.lost.load(Ordering::Relaxed) > 0, "the overflow was counted");
    }

    #[test]
    fn capture_mixes_to_mono_and_playback_fills_every_channel() {
        let health = Health::new();
        let control = Control::default();
        let (mut prod, mut cons) = HeapRb::<f32>::new(64).split();
        capture(&[1.0f32, 0.0, 0.5, 0.5], 2, &mut prod, &health);
        let mut out = [0f32; 6];
        playback(&mut out, 3, &mut cons, &control, &health);
        assert_eq!(out, [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]);
        assert_eq!(control.consumed.load(Ordering::Relaxed), 2);
        let mut more = [9f32; 4];
        playback(&mut more, 2, &mut cons, &control, &health);
        assert_eq!(more, [0.0; 4], "silence when the ring is dry");
        assert_eq!(health.lost.load(Ordering::Relaxed), 0, "idle silence is no underrun");
    }

    #[test]
    fn a_flush_drops_what_is_queued() {
        let health = Health::new();
        let control = Control::default();
        let (mut prod, mut cons) = HeapRb::<f32>::new(64).split();
        prod.push_slice(&[0.7; 10]);
        control.flush.store(true, Ordering::Relaxed);
        let mut out = [1f32; 4];
        playback(&mut out, 1, &mut cons, &control, &health);
        assert_eq!(out, [0.0; 4]);
        assert!(!control.flush.load(Ordering::Relaxed), "the flag is cleared");
        // The dropped frames are past on the speaker's timeline, as if played: what is
        // written next is placed after them and is reached when it has been played.
        assert_eq!(control.consumed.load(Ordering::Relaxed), 10);
    }
}
