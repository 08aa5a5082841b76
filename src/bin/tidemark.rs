//! The `tidemark` command line.

fn main() {
    eprintln!("tidemark: no commands yet");
    std::process::exit(2);
}
