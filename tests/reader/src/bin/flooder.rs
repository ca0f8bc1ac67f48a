//! `flooder FILE MARK [OPENS]`: opens FILE in a loop, until killed or OPENS times, and creates
//! `MARK.<pid>` after 5,000 opens so that a test can tell the flood is on. The flood tests
//! (tests/flood.rs) run it: a shell loop is too slow to fill the ring buffer.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(mark)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: flooder FILE MARK [OPENS]");
        std::process::exit(2);
    };
    let opens: u64 = match args.get(3) {
        None => u64::MAX,
        Some(n) => n.parse().unwrap_or_else(|_| {
            eprintln!("flooder: OPENS is not a number: {n}");
            std::process::exit(2);
        }),
    };
    for n in 0..opens {
        if let Err(err) = std::fs::File::open(path) {
            eprintln!("flooder: opening {path}: {err}");
            std::process::exit(1);
        }
        if n == 5_000 {
            let marker = format!("{mark}.{}", std::process::id());
            if let Err(err) = std::fs::write(&marker, "") {
                eprintln!("flooder: creating {marker}: {err}");
                std::process::exit(1);
            }
        }
    }
}
