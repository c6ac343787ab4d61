//! The `pushgate` binary. Subcommands arrive with the runtime; until then it reports what this
//! build can do and exits non-zero for anything it cannot.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("pushgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "pushgate {}: this build contains the protocol core only; `serve` is not available yet",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::from(2)
        }
    }
}
