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

/// With mimalloc's defaults an idle gateway held 25 MiB and one that had served a burst of
/// streams ~95 MiB long after they closed: the kernel's transparent huge pages back mimalloc's
/// eagerly committed arena with 2 MiB pages, and freed memory is kept a second (ten for whole
/// arenas) before it is given back. The binary turns both off (docs/BENCHMARKS.md, "Allocator");
/// an operator's `MIMALLOC_ALLOW_THP` / `MIMALLOC_PURGE_DELAY` still decide when set.
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Applies to every page the process touches from now on (the kernel's per-process
        // switch); a kernel without it answers EINVAL and nothing changes.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // Position of `mi_option_purge_delay` in mimalloc v3's `mi_option_e`
        // (include/mimalloc.h of libmimalloc-sys 0.1.49); 0 gives freed pages back at once.
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: `mi_option_set` is not thread-safe; this runs first in `main`, before the
        // runtime or any other thread exists, and the option is read at each purge.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
    }
}
