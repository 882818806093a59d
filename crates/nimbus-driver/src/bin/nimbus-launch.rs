//! The container launcher as a binary of its own, for this crate's integration tests (the
//! `nimbus` binary runs the same code as `nimbus __launch-container`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(nimbus_driver::container::launch::main(&args));
}
