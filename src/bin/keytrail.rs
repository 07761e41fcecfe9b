//! The keytrail command-line tool.

fn main() {
    println!("keytrail {}", env!("CARGO_PKG_VERSION"));
}
