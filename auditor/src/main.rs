//! The `auditor` command: parses its arguments and hands them to the library.

fn main() -> std::process::ExitCode {
    auditor::cli::main()
}
