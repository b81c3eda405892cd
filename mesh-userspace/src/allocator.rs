//! The agent's memory allocator: jemalloc, configured so memory freed after a burst or by idle
//! connections goes back to the kernel (issue 13, README "Memory returned after a burst").
//!
//! Why not glibc: an idle HTTP/1 connection keeps ~5 KB of small structs alive while its 8 KiB
//! hyper buffers are freed, and glibc's heap interleaves the two, so the freed buffers' pages
//! cannot be returned (13.1 KB per idle connection measured, with `malloc_trim` after parking).
//! jemalloc keeps each size class on its own pages (slabs): a slab whose buffers are all freed is
//! returned whole.
//!
//! The `mesh` binary installs it as the global allocator with [`MALLOC_CONF`]; library users
//! (the unit tests) keep the system allocator, where [`purge`] finds nothing to do.
use std::time::Instant;

/// jemalloc's options for the agent, read at its first allocation (`malloc_conf`; the
/// environment's `_RJEM_MALLOC_CONF` still overrides them, for measuring):
/// - `narenas:1`: one arena for every thread, as glibc's `M_ARENA_MAX` 1 was here — memory freed
///   by one worker thread is reused by the others instead of sitting in a per-thread arena (the
///   per-thread caches still serve small allocations without the arena's lock);
/// - `dirty_decay_ms:1000`: freed pages go back to the kernel about a second after they are
///   freed, when the allocator is next used, or at once on a [`purge`];
/// - `muzzy_decay_ms:0`: returned with `MADV_DONTNEED`, never lazily with `MADV_FREE` — lazily
///   freed pages stay in the RSS the overload manager reads (and in the cgroup's charge) until the
///   kernel needs them, which would read as memory still held.
pub const MALLOC_CONF: &[u8] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// jemalloc's `MALLCTL_ARENAS_ALL`: "arena.<this>.purge" purges every arena.
const PURGE_ALL_ARENAS: &std::ffi::CStr = c"arena.4096.purge";

/// Gives every page jemalloc holds free back to the kernel now (what `malloc_trim` was for
/// glibc). Takes well under a millisecond on an agent at rest; the overload manager calls it at
/// most once a second, and the agent once after loading eBPF (the kernel's BTF, parsed and freed).
pub fn purge() {
    let started = Instant::now();
    let rc = purge_all_arenas();
    tracing::debug!(rc, took_us = started.elapsed().as_micros() as u64, "allocator purge");
}

/// The `arena.<all>.purge` command; jemalloc's answer (0: done, ENOENT: an unknown name).
fn purge_all_arenas() -> std::ffi::c_int {
    // SAFETY: "arena.<i>.purge" is a command: jemalloc reads no value and writes none, and the
    // null old/new pointers with zero lengths say so. The name is a NUL-terminated C string.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL_ARENAS.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_options_are_one_c_string() {
        let conf = super::MALLOC_CONF;
        assert_eq!(conf.iter().position(|b| *b == 0), Some(conf.len() - 1));
    }

    #[test]
    fn purge_is_a_known_command() {
        // The system allocator is the test binary's global one, but jemalloc is linked and its
        // control interface answers: 0 means the name was understood (ENOENT otherwise).
        assert_eq!(super::purge_all_arenas(), 0);
    }
}
