//! The `operator` binary: a startup script; everything lives in the library.

fn main() -> std::process::ExitCode {
    operator::cli::main()
}
