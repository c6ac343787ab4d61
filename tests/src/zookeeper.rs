//! Real ZooKeeper for the cluster tests: Debian's `zookeeper` package (its server jar, run by
//! `java` as a standalone `ZooKeeperServerMain`) on a free loopback port with its own data
//! directory, killed by pid on drop.
//!
//! A missing jar or `java` fails the test with the install command: these tests never skip.
use crate::ScratchDir;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to run when ZooKeeper is missing.
pub const INSTALL_HINT: &str = "install it: apt-get install -y zookeeper";
/// Where Debian's `zookeeper` package puts the server jar (its manifest names the libraries).
pub const DEBIAN_JAR: &str = "/usr/share/java/zookeeper.jar";
/// The server's tick: sessions may ask for 2 to 20 ticks (1 s to 10 s).
pub const TICK_MS: u64 = 500;

/// The server jar at `jar` and a `java` on the PATH; panics with [`INSTALL_HINT`] otherwise.
pub fn zookeeper_install(jar: &Path) -> (PathBuf, PathBuf) {
    assert!(
        jar.is_file(),
        "ZooKeeper's server jar {} is missing; {INSTALL_HINT}",
        jar.display()
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let java = std::env::split_paths(&path)
        .map(|dir| dir.join("java"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("java is not on the PATH; {INSTALL_HINT}"));
    (java, jar.to_owned())
}

/// Sends a four-letter word and returns the answer.
pub fn four_letter(port: u16, word: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(word.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// A standalone ZooKeeper server on a free loopback port.
#[derive(Debug)]
pub struct ZooKeeper {
    child: Child,
    pub port: u16,
    dir: ScratchDir,
}

impl ZooKeeper {
    /// Starts Debian's ZooKeeper and waits until it answers `ruok`.
    pub fn start() -> Self {
        let (java, jar) = zookeeper_install(Path::new(DEBIAN_JAR));
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&java, &jar) {
                Ok(server) => return server,
                Err(error) => last = error,
            }
        }
        panic!("zookeeper could not start on three free ports: {last}");
    }

    fn try_start(java: &Path, jar: &Path) -> Result<Self, String> {
        let dir = ScratchDir::new("zookeeper");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port: {e}"))?;
        let child = Self::spawn(java, jar, &dir, port)?;
        Ok(Self { child, port, dir })
    }

    /// Starts the server on `port` with its data in `dir`, and waits until it answers `ruok`.
    fn spawn(java: &Path, jar: &Path, dir: &ScratchDir, port: u16) -> Result<Child, String> {
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let config = dir.path().join("zoo.cfg");
        std::fs::write(
            &config,
            format!(
                "tickTime={TICK_MS}\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,cons\nmaxClientCnxns=0\n",
                data.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("zookeeper.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new(java)
            .args([
                "-Xmx128m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-cp",
            ])
            .arg(jar)
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start java for ZooKeeper: {e}; {INSTALL_HINT}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(dir.path().join("zookeeper.log")).unwrap_or_default();
                return Err(format!(
                    "zookeeper on port {port} exited at start: {status}\n{log}"
                ));
            }
            if four_letter(port, "ruok").is_ok_and(|a| a == "imok") {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("zookeeper on port {port} did not answer ruok within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT` (the `cluster.zookeeper` value).
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the server again on the same port with the same data (after [`Self::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let (java, jar) = zookeeper_install(Path::new(DEBIAN_JAR));
        self.child = Self::spawn(&java, &jar, &self.dir, self.port)
            .unwrap_or_else(|error| panic!("zookeeper restart: {error}"));
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_zookeeper_fails_with_the_install_command() {
        let outcome =
            std::panic::catch_unwind(|| zookeeper_install(Path::new("/nonexistent/zookeeper.jar")));
        let payload = outcome.expect_err("a missing ZooKeeper must fail the test");
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains(INSTALL_HINT), "{message}");
        assert!(
            message.contains("apt-get install -y zookeeper"),
            "{message}"
        );
    }
}
