//! Serve a directory over HTTP on 127.0.0.1 (the test suite's server, as a program): used by the
//! benchmarks and by hand to serve the fixture mirror. Prints its base URL, then serves until killed.
//!
//! usage: cargo run --example fixture_server -- DIR [PORT]

#[path = "../tests/common/server.rs"]
#[allow(dead_code)]
mod server;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: fixture_server DIR [PORT]");
    let port: u16 = args
        .next()
        .map_or(0, |p| p.parse().expect("PORT must be a number"));
    let s = server::Server::start_on(&dir, port);
    println!("{}", s.url());
    loop {
        std::thread::park();
    }
}
