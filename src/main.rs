//! The thin binary: everything, the runtime included, starts in [`tollgate::cli::main`].

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
