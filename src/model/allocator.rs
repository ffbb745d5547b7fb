//! Allocator settings for tensor work.
//!
//! Every candle operation returns a freshly allocated tensor. With glibc's defaults, anything
//! over 128 KiB (a 32-text batch's activations, every parameter-sized gradient and optimiser
//! temporary) is a fresh `mmap`: the kernel zero-fills its pages on first touch and unmaps
//! them on free, so the next step faults them in again. Profiled, page faults were ~15 % of a
//! fine-tuning step. Serving big tensors from the heap instead, and keeping freed heap memory
//! for reuse, removes that; resident memory then stays at the working set's peak (measured in
//! `benches/RESULTS.md`). What must go back to the system (a replaced model) is returned with
//! [`release_free_memory`].

/// Applies the settings; call once at start-up, before other threads allocate. A no-op where
/// the C library is not glibc.
pub fn tune_for_tensors() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_ARENA_MAX: i32 = -8;
        // Few arenas: with glibc's default (8 per core) each thread that ever allocated (the
        // blocking threads a reload loads on, the compute, pool and store threads) gets its own
        // heap, freed memory in one cannot serve another, and RSS crept up with every model
        // reload. Two per core: reload peak 1.49x -> 1.40x the steady RSS and flat after it,
        // throughput unchanged (benches/RESULTS.md). MALLOC_ARENA_MAX in the environment wins.
        let arenas = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        let arenas = i32::try_from(arenas.max(2)).unwrap_or(i32::MAX);
        let env_set = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        // SAFETY: mallopt only changes allocator tunables; these values are within glibc's
        // documented ranges (the mmap threshold's maximum is 32 MiB on 64-bit).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 512 << 20);
            mallopt(M_TOP_PAD, 16 << 20);
            if !env_set {
                mallopt(M_ARENA_MAX, arenas);
            }
        }
    }
}

/// Returns the heap memory malloc holds free (in every arena, not only at the top) to the
/// operating system; call it after freeing something large, such as a replaced model. Returns
/// whether any memory was released (always false where the C library is not glibc).
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only walks malloc's own free lists under its locks and advises
        // the kernel about whole free pages; it is safe to call from any thread at any time.
        unsafe { malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
