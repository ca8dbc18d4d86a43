//! The `sshwarden` binary: parses the command line and runs it (see the
//! library's [`sshwarden::cli`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    sshwarden::cli::Cli::from_args().execute()
}
