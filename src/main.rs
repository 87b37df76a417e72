//! The thin binary: everything, the runtime included, starts in [`tollgate::cli::main`].

/// The allocator of the binary (feature `mimalloc`, on by default): fewer CPU cycles per request
/// than glibc's malloc and freed memory given back after bursts (docs/BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
