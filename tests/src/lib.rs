//! pushgate-tests: black-box tests that start the real `pushgate` binary on loopback ports.
//!
//! The harness here is shared by the files in `tests/`:
//!
//! - [`pushgate_bin`] builds (once per test process) and locates the `pushgate` binary of this
//!   workspace: `cargo build -p pushgate --bin pushgate`, a no-op when it is up to date. Set
//!   `PUSHGATE_BIN` to test another binary.
//! - [`TestServer`] writes a TOML config on three free loopback ports, spawns
//!   `pushgate serve --config FILE`, keeps its stderr for diagnostics (printed when a test
//!   panics; `PUSHGATE_TESTS_ECHO=1` echoes it live), waits until it serves, and kills it on
//!   drop.
//! - [`CliProcess`] runs the other subcommands (`push`, `device`, `keygen`) as child processes
//!   and collects their output lines.
//! - [`RawConn`] is a bare TCP connection that speaks frames byte for byte, for the tests that
//!   must send what no well-behaved client sends.
//! - [`vectors`] loads the captured MPush traffic and replays its client side.
//! - [`redis`] starts real Redis servers (standalone, Cluster, Sentinel) for the store tests.
//! - [`http`] is a tiny HTTP/1.1 client for the admin API, and [`Metrics`] reads its
//!   Prometheus text.
//!
//! Everything that waits is bounded in time.
#![cfg(not(madsim))]

pub mod http;
pub mod redis;
pub mod vectors;
pub mod zookeeper;

pub use pushgate;
pub use pushgate_core as core;

use bytes::{Bytes, BytesMut};
use pushgate::client::{
    AckPolicy, ClientError, DeviceClient, DeviceEvent, DeviceOptions, PushClient,
};
use pushgate_core::frame::{Flags, Frame, FrameDecoder};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs `fut`, panicking if it takes longer than `limit`: every test is bounded.
///
/// The binary is built (or found up to date) first, outside the limit: `cargo build` may wait
/// for the shared target directory's lock for a while.
pub async fn bounded<F: Future>(limit: Duration, fut: F) -> F::Output {
    pushgate_bin();
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The binary

/// The workspace root (the parent of this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A file of the shared folder beside the workspace (`../shared/...`).
pub fn shared_path(relative: &str) -> PathBuf {
    workspace_root().join("..").join("shared").join(relative)
}

/// The `pushgate` binary, built once per test process with `cargo build -p pushgate --bin
/// pushgate` (a quick no-op when it is up to date), or `$PUSHGATE_BIN` when set.
pub fn pushgate_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("PUSHGATE_BIN") {
            return PathBuf::from(path);
        }
        build_workspace_bin("pushgate", "pushgate")
            .unwrap_or_else(|e| panic!("cannot build the pushgate binary: {e:#}"))
    })
}

/// Builds the binary `name` of the workspace's package `package` with `cargo build` (a quick
/// no-op when it is up to date) and returns the executable's path, as cargo names it.
pub fn build_workspace_bin(package: &str, name: &str) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // What cargo sets for this test binary describes the test package, not the build: a build
    // script that watches one of them (ring's watches CARGO_MANIFEST_DIR) would otherwise run
    // again, and rebuild everything above it, at every switch between `cargo test` and this.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || matches!(
                key.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            command.env_remove(key.as_ref());
        }
    }
    let output = command
        .current_dir(workspace_root())
        .args([
            "build",
            "-p",
            package,
            "--bin",
            name,
            "--message-format=json",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "cargo build failed: {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == name
            && message["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        {
            if let Some(exe) = message["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    anyhow::bail!("cargo build named no {name} executable")
}

/// A `Command` for the binary with a clean environment: no `PUSHGATE_*` and no `RUST_LOG`
/// from the developer's shell.
pub fn pushgate_command() -> Command {
    let mut command = Command::new(pushgate_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PUSHGATE_") {
            command.env_remove(&key);
        }
    }
    command.env_remove("RUST_LOG");
    command.env("NO_COLOR", "1");
    command.stdin(Stdio::null());
    command
}

// ---------------------------------------------------------------------------------------------
// Scratch directories

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("pushgate-tests-{}-{label}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a scratch dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes with collected output

/// Lines a child wrote to one stream, filled by a reader thread.
#[derive(Debug, Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(stream: impl std::io::Read + Send + 'static, echo: Option<&'static str>) -> Self {
        let lines = Self::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Some(prefix) = echo {
                    eprintln!("{prefix}{line}");
                }
                sink.0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        });
        lines
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Every line so far, joined.
    pub fn text(&self) -> String {
        let mut text = self.all().join("\n");
        text.push('\n');
        text
    }

    /// Waits (at most `limit`) for a line satisfying `pred` and returns it.
    pub async fn wait_for(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.all().into_iter().find(|l| pred(l)) {
                return Some(line);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A running child process (a `pushgate` subcommand), killed on drop.
#[derive(Debug)]
pub struct CliProcess {
    child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
    label: String,
}

impl CliProcess {
    /// Starts `pushgate ARGS...`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Self {
        let mut command = pushgate_command();
        command.args(args);
        Self::spawn_command(command)
    }

    /// Starts a prepared command with piped stdout and stderr.
    pub fn spawn_command(mut command: Command) -> Self {
        let label = format!("{command:?}");
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        let stdout = Lines::follow(child.stdout.take().expect("piped stdout"), None);
        let stderr = Lines::follow(child.stderr.take().expect("piped stderr"), None);
        Self {
            child,
            stdout,
            stderr,
            label,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `limit` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, limit).await
    }

    /// Waits for the exit (panicking after `limit`), then for the output threads to drain.
    pub async fn finish(&mut self, limit: Duration) -> ExitStatus {
        let status = self.wait_exit(limit).await.unwrap_or_else(|| {
            panic!(
                "{} still running after {limit:?}\nstdout:\n{}stderr:\n{}",
                self.label,
                self.stdout.text(),
                self.stderr.text()
            )
        });
        // The reader threads end at EOF, just after the exit; give them a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        status
    }

    /// Everything it printed, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "{}\n--- stdout:\n{}--- stderr:\n{}",
            self.label,
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

async fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends SIGTERM to a process.
pub fn sigterm_pid(pid: u32) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed: {status}");
}

// ---------------------------------------------------------------------------------------------
// The server

/// How to start a [`TestServer`].
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// TOML merged over the harness's base config (ports, loopback binds, log filter).
    pub toml: String,
    /// Extra `pushgate serve` flags.
    pub args: Vec<String>,
}

impl ServerOptions {
    pub fn toml(text: &str) -> Self {
        Self {
            toml: text.to_owned(),
            ..Self::default()
        }
    }
}

/// A `pushgate serve` child process on free loopback ports, killed on drop.
#[derive(Debug)]
pub struct TestServer {
    child: Child,
    pub connect: SocketAddr,
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    stderr: Lines,
    /// The effective config file (base + options), for tests that want to read it.
    pub config_path: PathBuf,
    _dir: ScratchDir,
}

fn free_ports() -> [u16; 3] {
    // Held together so the three differ; released just before the server binds them.
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect();
    [ports[0], ports[1], ports[2]]
}

/// Merges `over` into `base`, table by table.
fn merge_toml(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_toml(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// What went wrong with one start attempt.
enum StartError {
    /// Some port was taken meanwhile: try others.
    PortTaken(String),
    Fatal(String),
}

impl TestServer {
    /// A server with the defaults (MPush's: 3-minute heartbeats, default RSA key).
    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    /// A server with `toml` merged into the config.
    pub async fn start_toml(toml: &str) -> Self {
        Self::start_with(ServerOptions::toml(toml)).await
    }

    /// Starts a server; retries on other ports if one was taken between picking and binding.
    pub async fn start_with(options: ServerOptions) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&options).await {
                Ok(server) => return server,
                Err(StartError::PortTaken(logs)) => last = logs,
                Err(StartError::Fatal(message)) => panic!("{message}"),
            }
        }
        panic!("pushgate could not bind free ports three times; last log:\n{last}");
    }

    async fn try_start(options: &ServerOptions) -> Result<Self, StartError> {
        let dir = ScratchDir::new("server");
        let [connect_port, gateway_port, admin_port] = free_ports();
        let mut config: toml::Table = toml::from_str(&format!(
            "[net]\nconnect_bind = \"127.0.0.1\"\nconnect_port = {connect_port}\n\
             gateway_bind = \"127.0.0.1\"\ngateway_port = {gateway_port}\n\
             admin_bind = \"127.0.0.1\"\nadmin_port = {admin_port}\n\
             [log]\nfilter = \"info\"\n"
        ))
        .expect("base config");
        let extra: toml::Table = toml::from_str(&options.toml)
            .unwrap_or_else(|e| panic!("ServerOptions::toml is not TOML: {e}\n{}", options.toml));
        merge_toml(&mut config, extra);
        let config_path = dir.path().join("pushgate.toml");
        std::fs::write(
            &config_path,
            toml::to_string(&config).expect("config to TOML"),
        )
        .expect("write config");

        let mut command = pushgate_command();
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(&options.args);
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| StartError::Fatal(format!("cannot start pushgate: {e}")))?;
        let echo = std::env::var_os("PUSHGATE_TESTS_ECHO").map(|_| "[pushgate] ");
        let stderr = Lines::follow(child.stderr.take().expect("piped stderr"), echo);
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = Self {
            child,
            connect: addr(connect_port),
            gateway: addr(gateway_port),
            admin: addr(admin_port),
            stderr,
            config_path,
            _dir: dir,
        };
        // The admin listener is bound last (after the connection and gateway ports), so once
        // /healthz answers every port is serving. Probing it leaves no trace in the stats.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let logs = server.stderr.text();
                return Err(
                    if logs.contains("Address already in use") || logs.contains("AddrInUse") {
                        StartError::PortTaken(logs)
                    } else {
                        StartError::Fatal(format!(
                            "pushgate serve exited with {status} while starting:\n{logs}"
                        ))
                    },
                );
            }
            if let Ok(response) = http::get(server.admin, "/healthz").await {
                if response.status == 200 {
                    return Ok(server);
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError::Fatal(format!(
                    "pushgate serve did not answer /healthz within 10 s:\n{}",
                    server.stderr.text()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far.
    pub fn logs(&self) -> String {
        self.stderr.text()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        sigterm_pid(self.pid());
    }

    /// Waits at most `limit` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, limit).await
    }

    /// Options for a device of this server: SDK defaults, short client-side timeouts.
    pub fn device_options(&self, device_id: &str) -> DeviceOptions {
        DeviceOptions {
            handshake_timeout_ms: 5000,
            request_timeout_ms: 5000,
            connect_timeout_ms: 5000,
            ..DeviceOptions::new(device_id)
        }
    }

    /// A handshaken device.
    pub async fn device_with(&self, options: DeviceOptions) -> DeviceClient {
        let id = options.device_id.clone();
        DeviceClient::connect(self.connect, options)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "device {id} cannot connect: {e}\nserver log:\n{}",
                    self.logs()
                )
            })
    }

    /// A handshaken device bound to `user` with `tags`, acking like the SDK (AUTO_ACK only).
    pub async fn bound_device(&self, device_id: &str, user: &str, tags: &[&str]) -> DeviceClient {
        self.bound_device_with(self.device_options(device_id), user, tags)
            .await
    }

    /// A handshaken device with `options`, bound to `user` with `tags`.
    pub async fn bound_device_with(
        &self,
        options: DeviceOptions,
        user: &str,
        tags: &[&str],
    ) -> DeviceClient {
        let device = self.device_with(options).await;
        device
            .bind(user, tags)
            .await
            .unwrap_or_else(|e| panic!("bind {user} failed: {e}\nserver log:\n{}", self.logs()));
        device
    }

    /// A device that never acknowledges.
    pub async fn silent_device(&self, device_id: &str, user: &str) -> DeviceClient {
        let options = DeviceOptions {
            ack_policy: AckPolicy::None,
            ..self.device_options(device_id)
        };
        self.bound_device_with(options, user, &[]).await
    }

    /// A PushClient on the gateway port.
    pub async fn push_client(&self) -> PushClient {
        PushClient::connect(self.gateway)
            .await
            .expect("connect a PushClient to the gateway")
    }

    /// GET on the admin port.
    pub async fn http_get(&self, path: &str) -> http::Response {
        http::get(self.admin, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// POST JSON on the admin port.
    pub async fn http_post(&self, path: &str, body: &serde_json::Value) -> http::Response {
        http::post_json(self.admin, path, body)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// DELETE on the admin port.
    pub async fn http_delete(&self, path: &str) -> http::Response {
        http::request(self.admin, "DELETE", path, None)
            .await
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"))
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> Metrics {
        let response = self.http_get("/metrics").await;
        assert_eq!(response.status, 200, "/metrics: {}", response.text());
        Metrics(response.text())
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> serde_json::Value {
        let response = self.http_get("/v1/stats").await;
        assert_eq!(response.status, 200, "/v1/stats: {}", response.text());
        response.json()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- pushgate serve log ----\n{}----", self.stderr.text());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Device helpers

/// A push as a device received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub session_id: i32,
    pub flags: Flags,
    pub content: Bytes,
}

/// The next event of `device`, which must be a PUSH (within `limit`).
pub async fn expect_push(device: &DeviceClient, limit: Duration) -> Received {
    match device.next_event_within(limit).await {
        Ok(DeviceEvent::Push {
            session_id,
            flags,
            content,
        }) => Received {
            session_id,
            flags,
            content,
        },
        other => panic!(
            "device {} expected a PUSH, got {other:?}",
            device.device_id()
        ),
    }
}

/// Asserts that `device` gets no event for `quiet`.
pub async fn expect_silence(device: &DeviceClient, quiet: Duration) {
    match device.next_event_within(quiet).await {
        Err(ClientError::Timeout) => {}
        other => panic!(
            "device {} expected nothing, got {other:?}",
            device.device_id()
        ),
    }
}

/// Waits (at most `limit`) until `device`'s connection is closed; events before it are returned.
pub async fn expect_closed(device: &DeviceClient, limit: Duration) -> Vec<DeviceEvent> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match device.next_event_within(left).await {
            Ok(DeviceEvent::Closed) | Err(ClientError::Closed) => return seen,
            Ok(event) => seen.push(event),
            Err(error) => panic!(
                "device {} not closed within {limit:?} ({error}); events: {seen:?}",
                device.device_id()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw frames

/// A bare TCP connection that writes bytes as given and splits what it reads into frames.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    inbound: BytesMut,
    decoder: FrameDecoder,
}

/// How a raw read ended without a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum RawEnd {
    /// The peer closed the connection (EOF or reset); holds the bytes left unparsed.
    Closed(Vec<u8>),
    TimedOut,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).ok();
        Self {
            stream,
            inbound: BytesMut::new(),
            decoder: FrameDecoder::new(16 * 1024 * 1024),
        }
    }

    /// Writes `bytes` (need not be a frame).
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
        self.stream.flush().await.expect("raw flush");
    }

    /// The next frame (heartbeats included).
    pub async fn read_frame(&mut self, limit: Duration) -> Result<Frame, RawEnd> {
        let read = async {
            loop {
                if let Some(frame) = self
                    .decoder
                    .decode(&mut self.inbound)
                    .expect("the server sent an undecodable frame")
                {
                    return Ok(frame);
                }
                match self.stream.read_buf(&mut self.inbound).await {
                    Ok(0) | Err(_) => return Err(RawEnd::Closed(self.inbound.to_vec())),
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(limit, read)
            .await
            .unwrap_or(Err(RawEnd::TimedOut))
    }

    /// Exactly `n` raw bytes.
    pub async fn read_exact(&mut self, n: usize, limit: Duration) -> Vec<u8> {
        let read = async {
            while self.inbound.len() < n {
                let got = self
                    .stream
                    .read_buf(&mut self.inbound)
                    .await
                    .expect("raw read");
                assert!(got > 0, "closed with {} of {n} bytes", self.inbound.len());
            }
            self.inbound.split_to(n).to_vec()
        };
        tokio::time::timeout(limit, read)
            .await
            .unwrap_or_else(|_| panic!("{n} bytes did not arrive within {limit:?}"))
    }

    /// The next frame, which must be a packet.
    pub async fn expect_packet(&mut self, limit: Duration) -> pushgate_core::frame::Packet {
        match self.read_frame(limit).await {
            Ok(Frame::Packet(packet)) => packet,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    /// Waits for the server to close the connection; returns the frames received before.
    pub async fn expect_closed(&mut self, limit: Duration) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            match self.read_frame(limit).await {
                Ok(frame) => frames.push(frame),
                Err(RawEnd::Closed(rest)) => {
                    assert!(
                        rest.is_empty(),
                        "closed with a partial frame: {}",
                        hex::encode(rest)
                    );
                    return frames;
                }
                Err(RawEnd::TimedOut) => {
                    panic!("connection still open after {limit:?}; frames: {frames:?}")
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text

/// The text of `GET /metrics`.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample `name` whose labels are exactly `labels` (any order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, mut found) = match series.split_once('{') {
                    Some((metric, rest)) => (metric, parse_labels(rest.strip_suffix('}')?)?),
                    None => (series, Vec::new()),
                };
                found.sort();
                (metric == name && found == wanted)
                    .then(|| value.parse().ok())
                    .flatten()
            })
    }

    /// Like [`value`](Self::value), 0 when the sample is absent (a counter never incremented).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }
}

fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let end = after.find('"')?;
        out.push((
            key.trim_start_matches(',').to_owned(),
            after[..end].to_owned(),
        ));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(out)
}
