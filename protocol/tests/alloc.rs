//! A hostile length prefix or element count costs the reader nothing large: proven with a
//! global allocator that records the largest single allocation made while decoding.
//!
//! Its own test binary because a `#[global_allocator]` is per binary; the tests here take a lock
//! so that one test's measurement never sees another test's allocations.

// The only unsafe code of the crate: `GlobalAlloc` is an unsafe trait. Each method forwards to
// `System` unchanged and only records the requested size.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use futures::executor::block_on;
use futures::io::Cursor;
use libp2p::request_response::Codec;
use lsync_protocol::codec::{decode_body, read_frame};
use lsync_protocol::{SyncCodec, DEFAULT_MAX_FRAME, PROTOCOL};

struct LargestAllocation;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn record(size: usize) {
    LARGEST.fetch_max(size, Ordering::Relaxed);
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; recording a size is an atomic operation that allocates nothing.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

static MEASURING: Mutex<()> = Mutex::new(());

const MIB: usize = 1024 * 1024;

/// Runs `f` and returns its result with the largest single allocation made meanwhile.
fn largest_allocation_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let _serial = MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    LARGEST.store(0, Ordering::SeqCst);
    let out = f();
    (out, LARGEST.load(Ordering::SeqCst))
}

/// The allocator really sees what it should, or every bound below would be vacuous.
#[test]
fn the_allocator_records_large_allocations() {
    let (v, largest) = largest_allocation_of(|| vec![0u8; 3 * MIB]);
    assert_eq!(v.len(), 3 * MIB);
    assert!(largest >= 3 * MIB, "largest {largest}");
}

/// 0xFFFF_FFFF followed by a few bytes, with the default 16 MiB limit: refused on the prefix.
#[test]
fn a_4_gib_prefix_is_refused_without_allocating() {
    let stream = [0xff, 0xff, 0xff, 0xff, 0x81, 0xa5, b'E', b'r', b'r'];
    let (result, largest) = largest_allocation_of(|| {
        block_on(read_frame(&mut Cursor::new(&stream[..]), DEFAULT_MAX_FRAME))
    });
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
    assert!(largest < MIB, "largest single allocation: {largest} bytes");

    let (result, largest) = largest_allocation_of(|| {
        let mut codec = SyncCodec::default();
        block_on(codec.read_request(&PROTOCOL, &mut Cursor::new(&stream[..])))
    });
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
    assert!(largest < MIB, "largest single allocation: {largest} bytes");
}

/// Even a codec configured to accept 4 GiB frames only allocates for bytes that arrive: the
/// announced length never sizes a buffer.
#[test]
fn a_4_gib_prefix_within_the_limit_allocates_only_for_what_arrives() {
    let mut stream = vec![0xff, 0xff, 0xff, 0xff];
    stream.extend(std::iter::repeat_n(0xc0, 100_000));
    let (result, largest) = largest_allocation_of(|| {
        let mut codec = SyncCodec::new(u32::MAX as usize);
        block_on(codec.read_response(&PROTOCOL, &mut Cursor::new(&stream[..])))
    });
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    // 100 kB arrived; the buffer grows by doubling, so it stays within a small multiple.
    assert!(largest < MIB, "largest single allocation: {largest} bytes");
}

/// Counts and lengths inside a body are no better: an array header announcing 2^32 - 1 entries,
/// or a bin/str announcing 4 GiB, in a body of a few bytes.
#[test]
fn huge_counts_inside_a_body_allocate_at_most_serdes_cautious_bound() {
    // {"EntriesResponse": {"library_id": bin16, "term": 1, "entries": array32(0xFFFF_FFFF)}}
    let mut entries = vec![0x81, 0xaf];
    entries.extend_from_slice(b"EntriesResponse");
    entries.extend_from_slice(&[0x85, 0xaa]);
    entries.extend_from_slice(b"library_id");
    entries.extend_from_slice(&[0xc4, 0x10]);
    entries.extend_from_slice(&[0; 16]);
    entries.push(0xa4);
    entries.extend_from_slice(b"term");
    entries.push(0x01);
    entries.push(0xa7);
    entries.extend_from_slice(b"entries");
    entries.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);

    // {"SyncRequired": {"library_id": bin16, "term": 1, "reason": str32(0xFFFF_FFFF) "abc"}}
    let mut reason = vec![0x81, 0xac];
    reason.extend_from_slice(b"SyncRequired");
    reason.extend_from_slice(&[0x84, 0xaa]);
    reason.extend_from_slice(b"library_id");
    reason.extend_from_slice(&[0xc4, 0x10]);
    reason.extend_from_slice(&[0; 16]);
    reason.push(0xa4);
    reason.extend_from_slice(b"term");
    reason.push(0x01);
    reason.push(0xa6);
    reason.extend_from_slice(b"reason");
    reason.extend_from_slice(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a', b'b', b'c']);

    // {"Acknowledge": {"library_id": bin32(0xFFFF_FFFF) ...}}
    let mut uuid = vec![0x81, 0xab];
    uuid.extend_from_slice(b"Acknowledge");
    uuid.extend_from_slice(&[0x82, 0xaa]);
    uuid.extend_from_slice(b"library_id");
    uuid.extend_from_slice(&[0xc6, 0xff, 0xff, 0xff, 0xff, 0, 0, 0]);

    // A map header announcing 2^32 - 1 fields.
    let mut fields = vec![0x81, 0xab];
    fields.extend_from_slice(b"Acknowledge");
    fields.extend_from_slice(&[0xdf, 0xff, 0xff, 0xff, 0xff]);

    for body in [entries, reason, uuid, fields] {
        let (result, largest) = largest_allocation_of(|| decode_body(&body));
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
        // serde pre-allocates at most 1 MiB for a sequence whatever its announced length
        // (`serde::__private::size_hint::cautious`); nothing is sized by a bin or str length.
        assert!(largest <= MIB, "largest single allocation: {largest} bytes");
    }
}
