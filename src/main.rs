//! The `operator` binary: a startup script; everything lives in the library.

fn main() -> std::process::ExitCode {
    // Every agent starts through `operator agent-exec`: it skips the argument parser.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some((parent, program, args)) = operator::process::agent_exec_args(&argv) {
        let code = operator::process::agent_exec(parent, program, args);
        return std::process::ExitCode::from(code.clamp(0, 255) as u8);
    }
    operator::cli::main()
}
