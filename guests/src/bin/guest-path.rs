//! Prints the path of a built test guest, for scripts: `cargo run -p guests --bin guest-path -- hello`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let names: Vec<&str> = guests::ALL.iter().map(|(name, _)| *name).collect();
    let Some(wanted) = std::env::args().nth(1) else {
        eprintln!("usage: guest-path NAME   (one of: {})", names.join(", "));
        return ExitCode::from(2);
    };
    match guests::ALL.iter().find(|(name, _)| *name == wanted) {
        Some((_, path)) => {
            println!("{path}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("guest-path: no guest named '{wanted}' (one of: {})", names.join(", "));
            ExitCode::from(2)
        }
    }
}
