//! `token-reader HOW PATH`: reads PATH the way HOW says (see `picket_test_reader::How`) and
//! prints its contents, like `cat`. Exit status 1 and a message on failure, 2 on bad usage.

use std::io::Write as _;

use picket_test_reader::How;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(how), Some(path), 3) = (
        args.get(1).and_then(|name| How::parse(name)),
        args.get(2),
        args.len(),
    ) else {
        let ways: Vec<&str> = How::ALL.iter().map(|(name, _)| *name).collect();
        eprintln!("usage: token-reader {} PATH", ways.join("|"));
        std::process::exit(2);
    };
    match picket_test_reader::read(how, path) {
        Ok(bytes) => {
            if how == How::Quick {
                // SAFETY: _exit has no preconditions; nothing needs flushing.
                unsafe { libc::_exit(0) };
            }
            let _ = std::io::stdout().write_all(&bytes);
        }
        Err(err) => {
            eprintln!("token-reader {}: {path}: {err}", args[1]);
            std::process::exit(1);
        }
    }
}
