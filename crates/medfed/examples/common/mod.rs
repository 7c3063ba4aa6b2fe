//! Helpers the benchmark programs share: processes stopped on drop, free ports, arguments.

#![allow(dead_code)]

use std::process::Child;
use std::time::Duration;

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub use medfed_testkit::free_port;

/// Wait until something listens on `port`; on giving up, show `log`.
pub fn wait_port(port: u16, log: Option<&std::path::Path>) {
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = log
        .and_then(|l| std::fs::read_to_string(l).ok())
        .unwrap_or_default();
    panic!("nothing listens on {port}: {log}");
}

/// The value after `name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}
