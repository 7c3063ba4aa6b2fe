//! Helpers shared by the process-level tests: the `medfed` binary, a hub server process.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

pub fn medfed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_medfed"))
}

pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start `medfed hub serve`, logging at debug level into `log` (appended).
pub fn serve(dir: &Path, port: u16, log: &Path, failpoint: Option<&str>) -> Server {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = medfed();
    cmd.args(["hub", "serve", "--config"])
        .arg(dir.join("hub.toml"))
        .env("MEDFED_LOG", "debug")
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if let Some(f) = failpoint {
        cmd.env("MEDFED_HUB_FAILPOINT", f);
    }
    let server = Server {
        child: cmd.spawn().unwrap(),
        port,
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    panic!(
        "hub did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
