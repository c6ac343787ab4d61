//! Real Redis for the store tests: a `redis-server` on a free loopback port, a three-master
//! Redis Cluster, and a Sentinel setup (master, replica, one `redis-sentinel`), each started
//! per test run from Debian's packages, with persistence off, and killed by pid on drop.
//!
//! A missing binary fails the test with the install command: these tests never skip.
use crate::ScratchDir;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to run when a Redis binary is missing.
pub const INSTALL_HINT: &str =
    "install it: apt-get install -y redis-server redis-sentinel redis-tools";

/// The path of a Redis binary (`redis-server`, `redis-sentinel`, `redis-cli`); panics with
/// [`INSTALL_HINT`] when it is not on the PATH.
pub fn redis_bin(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} is not on the PATH; {INSTALL_HINT}");
}

/// A loopback port free now, whose cluster bus port (+10000) is free too.
pub fn free_redis_port() -> u16 {
    for _ in 0..200 {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = listener.local_addr() else {
            continue;
        };
        let port = addr.port();
        if port > 55_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for redis-server");
}

/// Sends one command in RESP and returns the raw reply text (up to 64 KiB), or an error.
pub fn raw_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Waits until the server on `port` answers PING; an error when it exited (its port taken
/// meanwhile, most likely).
fn wait_ready(port: u16, child: &mut Child, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} on port {port} exited at start: {status}"));
        }
        if raw_command(port, &["PING"]).is_ok_and(|r| r.starts_with("+PONG")) {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "{what} on port {port} did not answer PING within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `redis-server` (or `redis-sentinel`) child process, killed by pid on drop.
#[derive(Debug)]
pub struct RedisProcess {
    child: Child,
    pub port: u16,
}

impl RedisProcess {
    fn spawn(bin: &str, args: &[String], port: u16) -> Self {
        Self::try_spawn(bin, args, port).unwrap_or_else(|error| panic!("{error}"))
    }

    /// Starts `bin`; an error when it exited at once (its port taken meanwhile).
    fn try_spawn(bin: &str, args: &[String], port: u16) -> Result<Self, String> {
        let mut child = Command::new(redis_bin(bin))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}; {INSTALL_HINT}"));
        match wait_ready(port, &mut child, bin) {
            Ok(()) => Ok(Self { child, port }),
            Err(error) => {
                let _ = child.wait();
                Err(error)
            }
        }
    }

    /// Starts `bin` with the arguments `args_for(port)` on a free port, trying other ports
    /// when one was taken between picking and binding.
    fn spawn_on_free_port(bin: &str, args_for: impl Fn(u16) -> Vec<String>) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_redis_port();
            match Self::try_spawn(bin, &args_for(port), port) {
                Ok(process) => return process,
                Err(error) => last = error,
            }
        }
        panic!("{bin} could not start on three free ports: {last}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Arguments of a throw-away server: no persistence, in the foreground, loopback only.
fn server_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A standalone Redis on a free loopback port.
#[derive(Debug)]
pub struct RedisServer {
    pub process: RedisProcess,
    dir: ScratchDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra arguments (e.g. `--replicaof 127.0.0.1 PORT`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = ScratchDir::new("redis");
        let process = RedisProcess::spawn_on_free_port("redis-server", |port| {
            let mut args = server_args(port, dir.path());
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        });
        Self { process, dir }
    }

    /// A server on `port` (one picked earlier with [`free_redis_port`]).
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let dir = ScratchDir::new("redis");
        let mut args = server_args(port, dir.path());
        args.extend(extra.iter().map(|s| s.to_string()));
        Self {
            process: RedisProcess::spawn("redis-server", &args, port),
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// Restarts the server on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.process.kill();
        let args = server_args(self.port(), self.dir.path());
        self.process = RedisProcess::spawn("redis-server", &args, self.port());
    }

    /// Runs a command and returns the raw RESP reply.
    pub fn command(&self, args: &[&str]) -> String {
        raw_command(self.port(), args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisProcess>,
    _dir: ScratchDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = ScratchDir::new("redis-cluster");
        let mut nodes = Vec::new();
        for i in 0..3 {
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            nodes.push(RedisProcess::spawn_on_free_port("redis-server", |port| {
                let mut args = server_args(port, &node_dir);
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ]
                    .iter()
                    .map(|s| s.to_string()),
                );
                args
            }));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new(redis_bin("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}; {INSTALL_HINT}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = raw_command(node.port, &["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not reach cluster_state:ok within 20 s: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes, _dir: dir }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }
}

/// A master, one replica and one Sentinel watching them as `mymaster` (quorum 1, down after
/// 1 s).
#[derive(Debug)]
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinel: RedisProcess,
    _dir: ScratchDir,
}

/// The service name the Sentinel watches.
pub const SENTINEL_SERVICE: &str = "mymaster";

impl RedisSentinel {
    pub fn start() -> Self {
        let master = RedisServer::start();
        let master_port = master.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port]);
        let dir = ScratchDir::new("redis-sentinel");
        let config = dir.path().join("sentinel.conf");
        let sentinel = RedisProcess::spawn_on_free_port("redis-sentinel", |port| {
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
                     sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} 1\n\
                     sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                     sentinel failover-timeout {SENTINEL_SERVICE} 5000\n",
                    dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            vec![config.display().to_string()]
        });
        Self {
            master,
            replica,
            sentinel,
            _dir: dir,
        }
    }

    /// `redis+sentinel://127.0.0.1:PORT/mymaster`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{SENTINEL_SERVICE}",
            self.sentinel.port
        )
    }

    /// The port of the master the Sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let reply = raw_command(
            self.sentinel.port,
            &["SENTINEL", "get-master-addr-by-name", SENTINEL_SERVICE],
        )
        .ok()?;
        reply
            .split("\r\n")
            .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
            .nth(1)?
            .parse()
            .ok()
    }
}

/// Starts `pushgate serve --redis URL` with the Redis store's debug lines on; `extra_toml` is
/// appended to its configuration (e.g. a `[store]` section).
pub async fn node_on(url: &str, extra_toml: &str) -> crate::TestServer {
    crate::TestServer::start_with(crate::ServerOptions {
        args: vec!["--redis".into(), url.into()],
        toml: format!("[log]\nfilter = \"info,pushgate::redis_store=debug\"\n{extra_toml}"),
    })
    .await
}

/// A single push asking for the phone's automatic ACK, with a 3 s timeout.
pub fn auto_ack_push(user: &str, content: &str) -> pushgate::client::SinglePushRequest {
    pushgate::client::SinglePushRequest {
        ack: pushgate_core::push::AckMode::Auto,
        timeout_ms: 3000,
        ..pushgate::client::SinglePushRequest::new(user, content.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_fails_with_the_install_command() {
        let outcome = std::panic::catch_unwind(|| redis_bin("redis-server-not-installed-here"));
        let payload = outcome.expect_err("a missing binary must fail the test");
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains(INSTALL_HINT), "{message}");
    }

    #[test]
    fn the_debian_binaries_are_found() {
        for name in ["redis-server", "redis-sentinel", "redis-cli"] {
            assert!(redis_bin(name).is_file());
        }
    }
}
