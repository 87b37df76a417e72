//! The thin binary: everything, the runtime included, starts in [`tollgate::cli::main`].

/// The allocator of the binary (feature `mimalloc`, on by default): fewer CPU cycles per request
/// than glibc's malloc and freed memory given back after bursts (docs/BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    #[cfg(feature = "mimalloc")]
    tune_allocator();
    tollgate::cli::main()
}

/// mimalloc's defaults keep freed memory for a second (ten for whole arenas) and commit arenas
/// eagerly, so a gateway that served a burst of streams stayed at ~95 MiB long after they closed.
/// The binary gives freed pages back at once instead (docs/BENCHMARKS.md, "Allocator"); an
/// operator's `MIMALLOC_PURGE_DELAY` / `MIMALLOC_ARENA_EAGER_COMMIT` still decide when set.
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn tune_allocator() {
    use libmimalloc_sys::{mi_option_set, mi_option_t};
    // Positions in mimalloc v3's `mi_option_e` (include/mimalloc.h of libmimalloc-sys 0.1.49).
    const ARENA_EAGER_COMMIT: mi_option_t = 4;
    const PURGE_DELAY: mi_option_t = 15;
    for (option, env) in [
        (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT"),
        (PURGE_DELAY, "MIMALLOC_PURGE_DELAY"),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: `mi_option_set` is not thread-safe; this runs first in `main`, before the
            // runtime or any other thread exists. Both options take 0 (off / purge at once).
            unsafe { mi_option_set(option, 0) };
        }
    }
}
