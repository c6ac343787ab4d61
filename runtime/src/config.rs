//! The server's configuration: embedded defaults (MPush's, reference §16), then a TOML file,
//! then `PUSHGATE_*` environment variables, then command-line flags — each layer overriding
//! the one before. Every key carries its unit.
//!
//! Environment variables name a key by its section and field joined with a double
//! underscore: `PUSHGATE_CORE__MIN_HEARTBEAT_MS=10000`, `PUSHGATE_NET__GATEWAY_PORT=4001`.
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use pushgate_core::config::{defaults, TagMatch};
use pushgate_core::crypto::{ClientRsaKey, ServerRsaKey, MPUSH_DEFAULT_PUBLIC_KEY_B64};
use pushgate_core::{NodeAddr, NodeConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything `pushgate serve` runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub net: NetConfig,
    pub core: CoreConfig,
    pub flow: FlowConfig,
    pub security: SecurityConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
}

/// Printed above `store.redis_url` by `--print-config`.
const STORE_COMMENT: &str = "\
# Redis shared with other pushgate and MPush nodes (MPush's keys and formats); empty = not Redis.
#   redis://HOST:PORT[/DB]                              one Redis server
#   redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]  the master the Sentinels name for SERVICE
#   redis+cluster://HOST:PORT[,HOST:PORT...]            Redis Cluster seed nodes
# A password goes in the user info: redis://:PASSWORD@HOST:PORT.
# Also PUSHGATE_STORE__REDIS_URL, or `pushgate serve --redis URL`.
";

/// Where the route store lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Redis shared with other pushgate (and MPush) nodes, in MPush's data model. Forms:
    /// `redis://HOST:PORT[/DB]` (one server),
    /// `redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB]` (the master Sentinel names),
    /// `redis+cluster://HOST:PORT[,HOST:PORT…]` (Redis Cluster seed nodes); a password goes
    /// in the user info (`redis://:PASSWORD@HOST:PORT`). Empty = not Redis.
    /// Environment: `PUSHGATE_STORE__REDIS_URL`; flag: `pushgate serve --redis URL`.
    pub redis_url: String,
    /// `host:port` of the simulator's store node (`pushgate-sim` runs one; production clusters
    /// use `redis_url`);
    /// empty (and no `redis_url`) = the embedded in-memory store (one node).
    pub address: String,
    /// With Redis: how long this node's announcement in the node registry lives without a
    /// heartbeat (renewed every third of it); a node that died leaves `/v1/nodes` after this.
    pub node_ttl_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            address: String::new(),
            node_ttl_ms: 10_000,
        }
    }
}

impl StoreConfig {
    /// The store to use.
    pub fn spec(&self) -> anyhow::Result<crate::driver::StoreSpec> {
        if !self.redis_url.trim().is_empty() {
            anyhow::ensure!(
                self.address.trim().is_empty(),
                "store.redis_url and store.address are both set: choose one route store"
            );
            return self.redis_spec();
        }
        if self.address.trim().is_empty() {
            return Ok(crate::driver::StoreSpec::Memory);
        }
        let addr = self
            .address
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("store.address {:?}: {e}", self.address))?;
        Ok(crate::driver::StoreSpec::Remote(addr))
    }

    #[cfg(not(madsim))]
    fn redis_spec(&self) -> anyhow::Result<crate::driver::StoreSpec> {
        let target = crate::redis_store::RedisTarget::parse(&self.redis_url)?;
        Ok(crate::driver::StoreSpec::Redis(target))
    }

    #[cfg(madsim)]
    fn redis_spec(&self) -> anyhow::Result<crate::driver::StoreSpec> {
        anyhow::bail!("store.redis_url: Redis is not available in the simulator")
    }
}

/// The listeners' default backlog: Linux's default `net.core.somaxconn` (MPush: 1,024).
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;

/// Listeners and per-connection buffers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// Phones connect here (all interfaces by default).
    pub connect_bind: String,
    pub connect_port: u16,
    /// PushClients connect here (loopback by default).
    pub gateway_bind: String,
    pub gateway_port: u16,
    /// The HTTP admin API (loopback by default).
    pub admin_bind: String,
    pub admin_port: u16,
    /// The gateway host written into this node's routes: what PushClients of other nodes dial.
    pub public_host: String,
    /// A phone's queued outbound bytes above this make pushes to it fail (MPush: 64 KiB).
    pub write_high_water_bytes: usize,
    /// ...until the queue drains below this.
    pub write_low_water_bytes: usize,
    /// Above this the connection is closed: a peer that never reads cannot grow memory.
    pub write_hard_limit_bytes: usize,
    /// Most phone connections served at once.
    pub max_connections: usize,
    /// Connections the kernel queues on each listener before they are accepted (`listen(2)`'s
    /// backlog, capped by the kernel's `net.core.somaxconn`). A reconnect storm beyond it
    /// loses SYNs, and each lost SYN costs a phone a retransmission timeout (1 s, then 3 s).
    pub listen_backlog: u32,
    /// Longest the server waits on shutdown for pending pushes to be answered.
    pub shutdown_grace_ms: u64,
    /// Web clients (MPush's JSON packets over WebSocket) connect here; 0 = off (MPush's
    /// `ws-server-port`).
    pub ws_port: u16,
    /// The WebSocket listener's interface (all interfaces by default).
    pub ws_bind: String,
    /// The path of the WebSocket upgrade; a plain `GET` there serves the demo page (MPush's
    /// `ws-path`).
    pub ws_path: String,
    /// Largest message (and frame) a web client may send.
    pub ws_max_message_bytes: usize,
    /// A web client silent this long is sent a WebSocket ping.
    pub ws_ping_interval_ms: u64,
    /// A web client silent this long (pongs count) is closed.
    pub ws_idle_timeout_ms: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            connect_bind: "0.0.0.0".into(),
            connect_port: 3000,
            gateway_bind: "127.0.0.1".into(),
            gateway_port: 3001,
            admin_bind: "127.0.0.1".into(),
            admin_port: 3002,
            public_host: "127.0.0.1".into(),
            write_high_water_bytes: 64 * 1024,
            write_low_water_bytes: 32 * 1024,
            write_hard_limit_bytes: 1024 * 1024,
            max_connections: defaults::MAX_CONNECTIONS,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            shutdown_grace_ms: 5_000,
            ws_port: 0,
            ws_bind: "0.0.0.0".into(),
            ws_path: "/".into(),
            ws_max_message_bytes: 64 * 1024,
            ws_ping_interval_ms: 30_000,
            ws_idle_timeout_ms: 90_000,
        }
    }
}

/// Protocol numbers (MPush `mp.core.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreConfig {
    pub min_heartbeat_ms: u64,
    pub max_heartbeat_ms: u64,
    /// Closed on the (this + 1)th consecutive missed heartbeat check.
    pub max_heartbeat_misses: u32,
    pub handshake_deadline_ms: u64,
    pub session_expire_ms: u64,
    pub max_packet_bytes: usize,
    pub compress_threshold_bytes: usize,
    /// Timeout of a push whose request carries none (also MPush's ACK default).
    pub default_push_timeout_ms: u64,
    pub max_push_timeout_ms: u64,
    pub store_timeout_ms: u64,
    /// Broadcast tag matching: "exact" (default) or "substring" (MPush's behaviour).
    pub tag_match: TagMatch,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            min_heartbeat_ms: defaults::MIN_HEARTBEAT_MS,
            max_heartbeat_ms: defaults::MAX_HEARTBEAT_MS,
            max_heartbeat_misses: defaults::MAX_HEARTBEAT_MISSES,
            handshake_deadline_ms: defaults::HANDSHAKE_DEADLINE_MS,
            session_expire_ms: defaults::SESSION_EXPIRE_MS,
            max_packet_bytes: defaults::MAX_BODY_BYTES,
            compress_threshold_bytes: defaults::COMPRESS_THRESHOLD_BYTES,
            default_push_timeout_ms: defaults::DEFAULT_PUSH_TIMEOUT_MS,
            max_push_timeout_ms: defaults::MAX_PUSH_TIMEOUT_MS,
            store_timeout_ms: defaults::STORE_TIMEOUT_MS,
            tag_match: TagMatch::default(),
        }
    }
}

/// The window of the `*_per_second` flow limits.
const FLOW_WINDOW_MS: u64 = 1_000;

/// Flow control (MPush `mp.push.flow-control.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    /// Single-user pushes per second for the whole node; 0 = unlimited.
    pub global_limit_per_second: u64,
    /// Cap on single-user pushes in total; 0 = none.
    pub global_max_total: u64,
    /// Deliveries per second of one broadcast.
    pub broadcast_limit_per_second: u64,
    /// Most deliveries of one broadcast.
    pub broadcast_max_total: u64,
    /// Deliveries per second of a task-id broadcast whose store record sets none.
    pub task_default_limit_per_second: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            global_limit_per_second: defaults::GLOBAL_FLOW_LIMIT_PER_WINDOW,
            global_max_total: defaults::GLOBAL_FLOW_MAX_TOTAL,
            broadcast_limit_per_second: defaults::BROADCAST_FLOW_LIMIT_PER_WINDOW,
            broadcast_max_total: defaults::BROADCAST_FLOW_MAX_TOTAL,
            task_default_limit_per_second: defaults::TASK_FLOW_DEFAULT_LIMIT,
        }
    }
}

/// The RSA key pair of the handshake, as base64 DER (PKCS#8 private, X.509 public), like
/// MPush's `mp.security.*`. Empty = MPush's published default pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    pub private_key: String,
    pub public_key: String,
}

impl SecurityConfig {
    /// True when the published default key is in use.
    pub fn uses_default_key(&self) -> bool {
        self.private_key.trim().is_empty()
    }

    /// The server key.
    pub fn server_key(&self) -> anyhow::Result<ServerRsaKey> {
        if self.uses_default_key() {
            return Ok(ServerRsaKey::mpush_default());
        }
        ServerRsaKey::from_pkcs8_base64(&self.private_key)
            .map_err(|e| anyhow::anyhow!("security.private_key: {e}"))
    }

    /// The public key clients must embed.
    pub fn public_key_b64(&self) -> anyhow::Result<String> {
        if !self.public_key.trim().is_empty() {
            let key = ClientRsaKey::from_x509_base64(&self.public_key)
                .map_err(|e| anyhow::anyhow!("security.public_key: {e}"))?;
            return Ok(key.to_x509_base64());
        }
        if self.uses_default_key() {
            return Ok(MPUSH_DEFAULT_PUBLIC_KEY_B64.to_owned());
        }
        Ok(self.server_key()?.public_key().to_x509_base64())
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. "info" or "pushgate=debug".
    pub filter: String,
    /// Log lines as JSON objects.
    pub json: bool,
    /// Handling one input slower than this logs a slow-packet line with its time points
    /// (MPush `profile-slowly-duration`).
    pub profile_slowly_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            json: false,
            profile_slowly_ms: 10,
        }
    }
}

impl Config {
    /// Defaults, then the TOML file at `path` (if given), then `PUSHGATE_*` variables, then
    /// `overrides` (command-line flags, as a partial config).
    pub fn load(path: Option<&Path>, overrides: Option<toml::Table>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only `PUSHGATE_<SECTION>__<KEY>` names are configuration; other PUSHGATE_* variables
        // (tools, tests) are left alone. The filter runs before `split` maps `__` to `.`.
        figment = figment.merge(
            Env::prefixed("PUSHGATE_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        if let Some(overrides) = overrides {
            figment = figment.merge(Serialized::defaults(overrides));
        }
        let config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values the server cannot run with.
    pub fn validate(&self) -> anyhow::Result<()> {
        let c = &self.core;
        anyhow::ensure!(
            c.min_heartbeat_ms > 0 && c.min_heartbeat_ms <= c.max_heartbeat_ms,
            "core.min_heartbeat_ms must be > 0 and <= core.max_heartbeat_ms"
        );
        anyhow::ensure!(
            c.max_packet_bytes >= 1024 && c.max_packet_bytes <= 16 * 1024 * 1024,
            "core.max_packet_bytes must be between 1 KiB and 16 MiB"
        );
        anyhow::ensure!(
            c.default_push_timeout_ms > 0,
            "core.default_push_timeout_ms must be > 0"
        );
        let n = &self.net;
        anyhow::ensure!(
            n.write_low_water_bytes <= n.write_high_water_bytes
                && n.write_high_water_bytes <= n.write_hard_limit_bytes,
            "net.write_low_water_bytes <= net.write_high_water_bytes <= net.write_hard_limit_bytes"
        );
        anyhow::ensure!(
            n.listen_backlog > 0 && n.listen_backlog <= i32::MAX as u32,
            "net.listen_backlog must be between 1 and {}",
            i32::MAX
        );
        anyhow::ensure!(
            n.ws_path.starts_with('/'),
            "net.ws_path must start with '/'"
        );
        anyhow::ensure!(
            n.ws_max_message_bytes >= 1024 && n.ws_max_message_bytes <= 16 * 1024 * 1024,
            "net.ws_max_message_bytes must be between 1 KiB and 16 MiB"
        );
        anyhow::ensure!(
            n.ws_ping_interval_ms > 0 && n.ws_ping_interval_ms < n.ws_idle_timeout_ms,
            "net.ws_ping_interval_ms must be > 0 and < net.ws_idle_timeout_ms"
        );
        self.security.server_key()?;
        self.store.spec()?;
        anyhow::ensure!(
            self.store.node_ttl_ms >= 300,
            "store.node_ttl_ms must be at least 300 (the heartbeat renews it every third)"
        );
        Ok(())
    }

    /// The effective configuration as TOML (for `--print-config`).
    pub fn to_toml(&self) -> String {
        let text = toml::to_string_pretty(self).unwrap_or_default();
        let mut out = String::with_capacity(text.len() + STORE_COMMENT.len());
        for line in text.lines() {
            if line.starts_with("redis_url = ") {
                out.push_str(STORE_COMMENT);
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// The core's configuration.
    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let mut cfg = NodeConfig::new(
            NodeAddr::new(self.net.public_host.clone(), self.net.gateway_port),
            self.security.server_key()?,
        );
        let c = &self.core;
        cfg.min_heartbeat_ms = c.min_heartbeat_ms;
        cfg.max_heartbeat_ms = c.max_heartbeat_ms;
        cfg.max_heartbeat_misses = c.max_heartbeat_misses;
        cfg.handshake_deadline_ms = c.handshake_deadline_ms;
        cfg.session_expire_ms = c.session_expire_ms;
        cfg.max_body_bytes = c.max_packet_bytes;
        cfg.compress_threshold_bytes = c.compress_threshold_bytes;
        cfg.default_push_timeout_ms = c.default_push_timeout_ms;
        cfg.max_push_timeout_ms = c.max_push_timeout_ms;
        cfg.store_timeout_ms = c.store_timeout_ms;
        cfg.tag_match = c.tag_match;
        let f = &self.flow;
        cfg.global_flow_limit_per_window = f.global_limit_per_second;
        cfg.global_flow_max_total = f.global_max_total;
        cfg.flow_window_ms = FLOW_WINDOW_MS;
        cfg.broadcast_flow_limit_per_window = f.broadcast_limit_per_second;
        cfg.broadcast_flow_max_total = f.broadcast_max_total;
        cfg.task_flow_default_limit = f.task_default_limit_per_second;
        cfg.max_connections = self.net.max_connections;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml_and_validate() {
        let config = Config::default();
        config.validate().unwrap();
        let text = config.to_toml();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
        assert!(text.contains("min_heartbeat_ms = 180000"));
    }

    #[test]
    fn defaults_are_the_cores() {
        let config = Config::default();
        let from_file = config.node_config().unwrap();
        let core = NodeConfig::new(
            NodeAddr::new(config.net.public_host.clone(), config.net.gateway_port),
            ServerRsaKey::mpush_default(),
        );
        let numbers = |c: &NodeConfig| {
            (
                (
                    c.min_heartbeat_ms,
                    c.max_heartbeat_ms,
                    c.max_heartbeat_misses,
                ),
                (c.handshake_deadline_ms, c.session_expire_ms),
                (c.max_body_bytes, c.compress_threshold_bytes),
                (
                    c.global_flow_limit_per_window,
                    c.global_flow_max_total,
                    c.flow_window_ms,
                ),
                (
                    c.broadcast_flow_limit_per_window,
                    c.broadcast_flow_max_total,
                ),
                c.task_flow_default_limit,
                (
                    c.default_push_timeout_ms,
                    c.max_push_timeout_ms,
                    c.store_timeout_ms,
                ),
                (c.tag_match, c.max_connections),
            )
        };
        assert_eq!(numbers(&from_file), numbers(&core));
        assert_eq!(FLOW_WINDOW_MS, defaults::FLOW_WINDOW_MS);
        assert!(config.net.listen_backlog >= 1024);
    }

    #[test]
    fn file_env_and_flags_layer_in_order() {
        let dir = std::env::temp_dir().join(format!("pushgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pushgate.toml");
        std::fs::write(&path, "[core]\nmin_heartbeat_ms = 10000\nmax_heartbeat_ms = 60000\n[net]\ngateway_port = 4001\n").unwrap();
        let mut flags = toml::Table::new();
        let mut net = toml::Table::new();
        net.insert("gateway_port".into(), toml::Value::Integer(5001));
        flags.insert("net".into(), toml::Value::Table(net));
        let config = Config::load(Some(&path), Some(flags)).unwrap();
        assert_eq!(config.core.min_heartbeat_ms, 10_000);
        assert_eq!(config.net.gateway_port, 5001, "flags win over the file");
        assert_eq!(
            config.net.connect_port, 3000,
            "untouched keys keep defaults"
        );
        std::fs::write(&path, "[core]\nmin_heartbeat_ms = 0\n").unwrap();
        assert!(Config::load(Some(&path), None).is_err());
        std::fs::write(&path, "[core]\nno_such_key = 1\n").unwrap();
        assert!(
            Config::load(Some(&path), None).is_err(),
            "unknown keys are errors"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[cfg(all(test, not(madsim)))]
mod store_tests {
    use super::*;
    use crate::driver::StoreSpec;

    #[test]
    fn redis_url_selects_the_redis_store_and_is_checked() {
        let mut store = StoreConfig {
            redis_url: "redis+sentinel://127.0.0.1:26379/mymaster".into(),
            ..StoreConfig::default()
        };
        assert!(matches!(store.spec().unwrap(), StoreSpec::Redis(_)));
        store.address = "127.0.0.1:3003".into();
        assert!(store.spec().is_err(), "two stores at once");
        store.address.clear();
        store.redis_url = "redis://:pw@no-port".into();
        let error = store.spec().unwrap_err().to_string();
        assert!(error.contains("store.redis_url"), "{error}");
        assert!(!error.contains("pw@"), "{error}");
        let text = Config::default().to_toml();
        assert!(text.contains("#   redis+cluster://"), "{text}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;

    #[test]
    fn environment_variables_override_the_file() {
        // A name no other test uses: tests run in parallel threads of one process.
        std::env::set_var("PUSHGATE_FLOW__BROADCAST_MAX_TOTAL", "777");
        std::env::set_var("PUSHGATE_UNRELATED", "ignored");
        let config = Config::load(None, None);
        std::env::remove_var("PUSHGATE_FLOW__BROADCAST_MAX_TOTAL");
        std::env::remove_var("PUSHGATE_UNRELATED");
        assert_eq!(config.unwrap().flow.broadcast_max_total, 777);
    }
}
