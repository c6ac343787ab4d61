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
    pub cluster: ClusterConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub tls: TlsConfig,
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

/// Printed above `cluster.zookeeper` by `--print-config`.
const ZOOKEEPER_COMMENT: &str = "\
# MPush's ZooKeeper (mp.zk.server-address), host:port[,host:port...]; empty = off. The node
# registers /{namespace}/cluster/cs/{uuid} and /{namespace}/cluster/gs/{uuid} as MPush does.
# Also PUSHGATE_CLUSTER__ZOOKEEPER, or `pushgate serve --zookeeper HOSTS`.
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

/// Membership in an MPush cluster's ZooKeeper (reference §11.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// ZooKeeper servers, `host:port,host:port…` (MPush's `mp.zk.server-address`): the node
    /// registers its connection and gateway servers there in MPush's layout, and reads the
    /// gateways of MPush's Java nodes from there. Empty = off.
    /// Environment: `PUSHGATE_CLUSTER__ZOOKEEPER`; flag: `pushgate serve --zookeeper HOSTS`.
    pub zookeeper: String,
    /// MPush's `mp.zk.namespace`: the root of the registry (`/mpush/cluster/cs/…`).
    pub zookeeper_namespace: String,
    /// MPush's `mp.zk.digest`: the credential of the `digest` scheme (empty = no
    /// authentication and open ACLs).
    pub zookeeper_digest: String,
    /// The ZooKeeper session timeout asked for (MPush: 5 s); a node away longer loses its
    /// registration and registers again when back.
    pub zookeeper_session_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            zookeeper: String::new(),
            zookeeper_namespace: "mpush".into(),
            zookeeper_digest: "mpush".into(),
            zookeeper_session_timeout_ms: 5_000,
        }
    }
}

impl ClusterConfig {
    /// Checks the values; under the simulator ZooKeeper must be off.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.zookeeper.trim().is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            !cfg!(madsim),
            "cluster.zookeeper: ZooKeeper is not available in the simulator"
        );
        for server in self.zookeeper.trim().split(',') {
            let host_port = server.split('/').next().unwrap_or_default().trim();
            let valid = host_port
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            anyhow::ensure!(
                valid,
                "cluster.zookeeper {:?}: expected host:port[,host:port…]",
                self.zookeeper
            );
        }
        anyhow::ensure!(
            (1_000..=120_000).contains(&self.zookeeper_session_timeout_ms),
            "cluster.zookeeper_session_timeout_ms must be between 1000 and 120000"
        );
        Ok(())
    }
}

/// The listeners' default backlog: Linux's default `net.core.somaxconn` (MPush: 1,024).
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;

/// `limits.max_gateway_queued_bytes`' default: statuses queued for one PushClient.
pub const MAX_GATEWAY_QUEUED_BYTES: usize = 8 * 1024 * 1024;

/// How phone connections are run (`net.phone_io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhoneIo {
    /// Phone groups (`phone_group`): a few tasks poll the phones over their own epoll sets.
    Groups,
    /// A tokio task per phone.
    Tasks,
}

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
    /// MPush's alloc service on its own port: `GET /` answers the connection servers,
    /// least loaded first (`host:port,host:port…`, text/plain). 0 = off (the admin API still
    /// answers it on `GET /v1/alloc`). Flag: `pushgate serve --alloc-port PORT`.
    pub alloc_bind: String,
    pub alloc_port: u16,
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
    /// How phone connections are run: `"groups"` (a few tasks, one per runtime worker, each
    /// polling its phones from a slot table over an epoll set of its own: no tokio task and no
    /// reactor registration per phone, about 0.5 KiB less per idle phone) or `"tasks"` (a
    /// tokio task per phone, as the simulator runs them). The TLS connection port always runs
    /// a task per phone.
    pub phone_io: PhoneIo,
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
    /// permessage-deflate (RFC 7692) for web clients that offer it, on the server's bounded
    /// terms (see `web.rs`); off: every web client gets plain frames.
    pub ws_deflate: bool,
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
            alloc_bind: "0.0.0.0".into(),
            alloc_port: 0,
            public_host: "127.0.0.1".into(),
            write_high_water_bytes: 64 * 1024,
            write_low_water_bytes: 32 * 1024,
            write_hard_limit_bytes: 1024 * 1024,
            max_connections: defaults::MAX_CONNECTIONS,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            phone_io: PhoneIo::Groups,
            shutdown_grace_ms: 5_000,
            ws_port: 0,
            ws_bind: "0.0.0.0".into(),
            ws_path: "/".into(),
            ws_max_message_bytes: 64 * 1024,
            ws_ping_interval_ms: 30_000,
            ws_idle_timeout_ms: 90_000,
            ws_deflate: true,
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
    /// A handshaken phone that sends no BIND within this time is closed (0: never, the
    /// default: MPush's SDKs bind after the user logs in).
    pub bind_deadline_ms: u64,
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
            bind_deadline_ms: defaults::BIND_DEADLINE_MS,
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

/// The most routes a broadcast may visit in one turn of the node (a turn's work stays
/// bounded).
const MAX_BROADCAST_BATCH_ROUTES: usize = 65_536;

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
    /// Routes one broadcast visits per turn of the node before other work runs (1 to
    /// 65,536). Larger batches finish broadcasts sooner; smaller ones keep the single pushes
    /// sent beside broadcasts quicker (bench/README.md, run 7: 256 / 128 / 64 routes gave
    /// 157-172k / 106-118k / 79-85k fan-out deliveries/s and a worst server share of a single
    /// push's status of 13-29 / 5 / 5-6 ms).
    pub broadcast_batch_routes: usize,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            global_limit_per_second: defaults::GLOBAL_FLOW_LIMIT_PER_WINDOW,
            global_max_total: defaults::GLOBAL_FLOW_MAX_TOTAL,
            broadcast_limit_per_second: defaults::BROADCAST_FLOW_LIMIT_PER_WINDOW,
            broadcast_max_total: defaults::BROADCAST_FLOW_MAX_TOTAL,
            task_default_limit_per_second: defaults::TASK_FLOW_DEFAULT_LIMIT,
            broadcast_batch_routes: defaults::BROADCAST_BATCH_SIZE,
        }
    }
}

/// The RSA key pair of the handshake, as base64 DER (PKCS#8 private, X.509 public), like
/// MPush's `mp.security.*` (empty = MPush's published default pair), and who may use the
/// business ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    pub private_key: String,
    pub public_key: String,
    /// Refuse to start with anything unsafe for the open internet: MPush's published key, a
    /// business port (admin API, gateway) without a token or allow-list, debug logging.
    pub production: bool,
    /// Bearer tokens of the HTTP admin API (`Authorization: Bearer TOKEN`); any one of them is
    /// accepted, so a new one can be added before the old one is removed. Empty = no token.
    /// Flag: `--admin-token` (repeatable).
    pub admin_tokens: Vec<String>,
    /// Tokens pushgate's PushClient sends first on a gateway connection (`pushgate push
    /// --token`). Flag: `--gateway-token` (repeatable).
    pub gateway_tokens: Vec<String>,
    /// Source networks admitted to the gateway without a token (MPush's Java PushClient sends
    /// none), e.g. `["10.0.0.0/8", "192.0.2.7"]`. Flag: `--gateway-allow` (repeatable).
    pub gateway_allow: Vec<String>,
    /// MPush's `BindValidator` as an HTTP callback: a BIND of a new user is POSTed here as
    /// JSON and goes on only when the answer allows it (README, "On the open internet").
    /// `http://HOST[:PORT]/PATH`; empty = every bind allowed. Flag: `--bind-check-url URL`.
    pub bind_check_url: String,
    /// Sent as `Authorization: Bearer TOKEN` to the bind check; empty = none.
    pub bind_check_token: String,
    /// A bind check not answered in this time is an error.
    pub bind_check_timeout_ms: u64,
    /// What a bind becomes when its check fails (error answer, timeout, unreachable, too many
    /// checks in flight): "refuse" (the default: the check guards who may bind) or "allow".
    pub bind_check_on_error: pushgate_core::config::BindCheckFallback,
    /// Bind checks in flight at once; beyond it a bind follows `bind_check_on_error`.
    pub bind_check_max_in_flight: usize,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            private_key: String::new(),
            public_key: String::new(),
            production: false,
            admin_tokens: Vec::new(),
            gateway_tokens: Vec::new(),
            gateway_allow: Vec::new(),
            bind_check_url: String::new(),
            bind_check_token: String::new(),
            bind_check_timeout_ms: 2_000,
            bind_check_on_error: pushgate_core::config::BindCheckFallback::Refuse,
            bind_check_max_in_flight: defaults::MAX_BIND_CHECKS,
        }
    }
}

impl SecurityConfig {
    /// The admin API's tokens.
    pub fn admin_token_set(&self) -> crate::access::TokenSet {
        crate::access::TokenSet::new(&self.admin_tokens)
    }

    /// The gateway's access rules.
    pub fn gateway_access(&self) -> anyhow::Result<crate::access::GatewayAccess> {
        Ok(crate::access::GatewayAccess {
            tokens: crate::access::TokenSet::new(&self.gateway_tokens),
            allow: crate::access::AllowList::parse(&self.gateway_allow, "security.gateway_allow")?,
        })
    }

    /// Rejects tokens too short to be secret.
    fn validate_tokens(&self) -> anyhow::Result<()> {
        use crate::access::{MAX_TOKEN_BYTES, MIN_TOKEN_BYTES};
        for (key, tokens) in [
            ("security.admin_tokens", &self.admin_tokens),
            ("security.gateway_tokens", &self.gateway_tokens),
        ] {
            for token in tokens.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
                anyhow::ensure!(
                    (MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&token.len()),
                    "{key}: a token must be {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} bytes long (got one of {} bytes); `openssl rand -hex 24` makes a good one",
                    token.len()
                );
                anyhow::ensure!(
                    token.bytes().all(|b| b.is_ascii_graphic()),
                    "{key}: a token must be printable ASCII without spaces"
                );
            }
        }
        Ok(())
    }

    /// The bind check's client, when `bind_check_url` is set.
    pub fn bind_checker(
        &self,
    ) -> anyhow::Result<Option<std::sync::Arc<crate::bind_check::BindChecker>>> {
        if self.bind_check_url.trim().is_empty() {
            return Ok(None);
        }
        anyhow::ensure!(
            self.bind_check_max_in_flight > 0,
            "security.bind_check_max_in_flight must be > 0"
        );
        let token = Some(self.bind_check_token.trim().to_owned());
        crate::bind_check::BindChecker::new(&self.bind_check_url, token, self.bind_check_timeout_ms)
            .map(Some)
    }

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

/// Limits on what one peer, one PushClient or the whole node may hold; each one hit counts in
/// `pushgate_limit_hits_total{limit=...}` and logs a line (at most one per limit every 10 s).
/// `GET /v1/limits` lists them with their counters. Other limits live beside the rule they
/// bound: `net.max_connections` (phones in total), `net.write_hard_limit_bytes` (queued
/// bytes per phone), `core.handshake_deadline_ms`, `core.max_packet_bytes` (frame size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Phone connections open at once from one source address; 0 = no limit. Phones behind
    /// a carrier-grade NAT share addresses: raise it (and the rate below) for such networks.
    pub max_connections_per_address: usize,
    /// New phone connections per second from one source address; 0 = no limit.
    pub new_connections_per_second_per_address: u32,
    /// Source networks the two per-address limits skip (loopback by default: load tests and
    /// local proxies). `[]` applies them to every address.
    pub per_address_exempt: Vec<String>,
    /// PushClient connections at once.
    pub max_gateway_connections: usize,
    /// Bytes of answers queued for one PushClient that does not read them; beyond it the
    /// connection is closed.
    pub max_gateway_queued_bytes: usize,
    /// Time a gateway connection that needs a token has to send it.
    pub gateway_auth_deadline_ms: u64,
    /// Single pushes pending on this node at once (each holds at most one pending ACK);
    /// beyond it a push is answered failure "server busy".
    pub max_pending_pushes: usize,
    /// Broadcasts running at once.
    pub max_broadcasts: usize,
    /// Longest user id a bind may carry.
    pub max_user_id_bytes: usize,
    /// Longest tags string a bind may carry.
    pub max_tags_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections_per_address: 5_000,
            new_connections_per_second_per_address: 500,
            per_address_exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_gateway_connections: defaults::MAX_GATEWAY_CONNECTIONS,
            max_gateway_queued_bytes: MAX_GATEWAY_QUEUED_BYTES,
            gateway_auth_deadline_ms: 5_000,
            max_pending_pushes: defaults::MAX_PENDING_PUSHES,
            max_broadcasts: defaults::MAX_BROADCASTS,
            max_user_id_bytes: defaults::MAX_USER_ID_BYTES,
            max_tags_bytes: defaults::MAX_TAGS_BYTES,
        }
    }
}

/// TLS (rustls) beside the plain ports: the certificate chain and key as PEM files, read
/// again on SIGHUP, and which ports use them. The plain connection port stays plain for
/// MPush's SDKs; `connect_port` adds a second one with the same protocol inside TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first). Flag: `--tls-cert FILE`.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Flag: `--tls-key FILE`.
    pub key_file: String,
    /// The gateway port speaks TLS (pushgate's PushClient with a CA; MPush's Java PushClient
    /// cannot). Flag: `--gateway-tls`.
    pub gateway: bool,
    /// The admin API speaks HTTPS. Flag: `--admin-tls`.
    pub admin: bool,
    /// A connection port with MPush's protocol inside TLS, on `net.connect_bind`; 0 = none.
    /// Flag: `--connect-tls-port N`.
    pub connect_port: u16,
    /// The WebSocket port (`net.ws_port`) speaks TLS: pages connect with `wss://`. Flag:
    /// `--ws-tls`.
    pub ws: bool,
    /// A TLS handshake not done in this time closes the connection.
    pub handshake_timeout_ms: u64,
    /// With `gateway`: the CAs (PEM) this node trusts when it forwards a push to another
    /// node's gateway; empty = `cert_file` (every node's certificate signed by the CA in it,
    /// or one self-signed certificate shared by the nodes). Flag: `--gateway-ca FILE`.
    pub gateway_ca_file: String,
    /// The name other nodes' gateway certificates must carry; empty = the host their routes
    /// name (`net.public_host`).
    pub gateway_server_name: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            gateway: false,
            admin: false,
            connect_port: 0,
            ws: false,
            handshake_timeout_ms: 10_000,
            gateway_ca_file: String::new(),
            gateway_server_name: String::new(),
        }
    }
}

impl TlsConfig {
    /// How this node reaches other nodes' gateways: TLS when its own gateway serves TLS
    /// (the nodes of a cluster share the setting), plain otherwise.
    pub fn gateway_client(
        &self,
    ) -> anyhow::Result<Option<std::sync::Arc<crate::client::GatewayTls>>> {
        if !self.gateway {
            return Ok(None);
        }
        let ca = match self.gateway_ca_file.trim() {
            "" => self.cert_file.trim(),
            file => file,
        };
        let name = Some(self.gateway_server_name.trim()).filter(|n| !n.is_empty());
        crate::client::GatewayTls::from_ca_file(std::path::Path::new(ca), name)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("tls.gateway_ca_file: {e}"))
    }

    /// True when some port uses TLS.
    pub fn is_used(&self) -> bool {
        self.gateway || self.admin || self.connect_port != 0 || self.ws
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
        anyhow::ensure!(
            (1..=MAX_BROADCAST_BATCH_ROUTES).contains(&self.flow.broadcast_batch_routes),
            "flow.broadcast_batch_routes must be between 1 and {MAX_BROADCAST_BATCH_ROUTES}"
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
        self.security.validate_tokens()?;
        self.security.gateway_access()?;
        self.security.bind_checker()?;
        crate::access::AllowList::parse(
            &self.limits.per_address_exempt,
            "limits.per_address_exempt",
        )?;
        let l = &self.limits;
        anyhow::ensure!(
            l.max_gateway_connections > 0 && l.max_pending_pushes > 0 && l.max_broadcasts > 0,
            "limits.max_gateway_connections, limits.max_pending_pushes and limits.max_broadcasts must be > 0"
        );
        anyhow::ensure!(
            l.max_gateway_queued_bytes >= 64 * 1024,
            "limits.max_gateway_queued_bytes must be at least 64 KiB"
        );
        anyhow::ensure!(
            l.gateway_auth_deadline_ms > 0,
            "limits.gateway_auth_deadline_ms must be > 0"
        );
        anyhow::ensure!(
            l.max_user_id_bytes > 0 && l.max_tags_bytes > 0,
            "limits.max_user_id_bytes and limits.max_tags_bytes must be > 0"
        );
        let t = &self.tls;
        anyhow::ensure!(
            !t.is_used() || (!t.cert_file.trim().is_empty() && !t.key_file.trim().is_empty()),
            "TLS is on (tls.gateway, tls.admin, tls.connect_port or tls.ws) but tls.cert_file or tls.key_file is not set: give --tls-cert FILE --tls-key FILE (PEM)"
        );
        anyhow::ensure!(
            !t.ws || self.net.ws_port != 0,
            "tls.ws (--ws-tls) needs the WebSocket listener: set net.ws_port (--ws-port N)"
        );
        anyhow::ensure!(
            t.handshake_timeout_ms > 0,
            "tls.handshake_timeout_ms must be > 0"
        );
        self.store.spec()?;
        self.cluster.validate()?;
        anyhow::ensure!(
            self.store.node_ttl_ms >= 300,
            "store.node_ttl_ms must be at least 300 (the heartbeat renews it every third)"
        );
        Ok(())
    }

    /// The configured value of `limit`, as `GET /v1/limits` shows it.
    pub fn limit_value(&self, limit: crate::limits::Limit) -> serde_json::Value {
        use crate::limits::Limit;
        use serde_json::json;
        let l = &self.limits;
        let tokens = |list: &[String]| list.iter().filter(|t| !t.trim().is_empty()).count();
        match limit {
            Limit::Connections => json!(self.net.max_connections),
            Limit::ConnectionsPerAddress => json!(l.max_connections_per_address),
            Limit::NewConnectionsPerAddress => json!(l.new_connections_per_second_per_address),
            Limit::HandshakeDeadline => json!(self.core.handshake_deadline_ms),
            Limit::BindDeadline => json!(self.core.bind_deadline_ms),
            Limit::FrameSize => json!(self.core.max_packet_bytes),
            Limit::UserIdLength => json!(l.max_user_id_bytes),
            Limit::TagsLength => json!(l.max_tags_bytes),
            Limit::BindChecks => json!({
                "maxInFlight": self.security.bind_check_max_in_flight,
                "on": !self.security.bind_check_url.trim().is_empty(),
                "timeoutMs": self.security.bind_check_timeout_ms,
                "onError": self.security.bind_check_on_error,
            }),
            Limit::PhoneQueuedBytes => json!(self.net.write_hard_limit_bytes),
            Limit::GatewayQueuedBytes => json!(l.max_gateway_queued_bytes),
            Limit::GatewayConnections => json!(l.max_gateway_connections),
            Limit::PendingPushes => json!(l.max_pending_pushes),
            Limit::Broadcasts => json!(l.max_broadcasts),
            Limit::GatewayAuth => json!({
                "tokens": tokens(&self.security.gateway_tokens),
                "allow": self.security.gateway_allow,
                "deadlineMs": l.gateway_auth_deadline_ms,
            }),
            Limit::AdminAuth => json!({ "tokens": tokens(&self.security.admin_tokens) }),
        }
    }

    /// Refuses what must not reach the open internet: a business port (admin API, gateway)
    /// bound beyond loopback without a token or allow-list, always; with
    /// `security.production`, also MPush's published key, a business port without a token
    /// even on loopback, and debug logging (`log.filter`, or `rust_log`: the `RUST_LOG`
    /// variable, which overrides it). Every problem found is listed with its fix.
    pub fn check_safety(&self, rust_log: Option<&str>) -> anyhow::Result<()> {
        let problems = self.safety_problems(rust_log);
        if problems.is_empty() {
            return Ok(());
        }
        let mut text = String::from("refusing to start:");
        for problem in &problems {
            text.push_str("\n  - ");
            text.push_str(problem);
        }
        anyhow::bail!(text)
    }

    /// The problems [`Config::check_safety`] reports, one sentence each.
    pub fn safety_problems(&self, rust_log: Option<&str>) -> Vec<String> {
        let mut problems = Vec::new();
        let net = &self.net;
        let sec = &self.security;
        let admin_open = sec.admin_tokens.iter().all(|t| t.trim().is_empty());
        let gateway_open = sec.gateway_tokens.iter().all(|t| t.trim().is_empty())
            && sec.gateway_allow.iter().all(|t| t.trim().is_empty());
        let production = sec.production;
        if admin_open && (production || !crate::access::is_loopback_bind(&net.admin_bind)) {
            problems.push(format!(
                "the HTTP admin API (net.admin_bind = {:?}{}) has no token: set security.admin_tokens = [\"...\"] (or --admin-token TOKEN; `openssl rand -hex 24` makes one){}",
                net.admin_bind,
                if production { ", security.production" } else { ", beyond loopback" },
                if production { "" } else { ", or bind it to 127.0.0.1 (--admin-bind)" },
            ));
        }
        if gateway_open && (production || !crate::access::is_loopback_bind(&net.gateway_bind)) {
            problems.push(format!(
                "the gateway (net.gateway_bind = {:?}{}) admits anyone: set security.gateway_tokens = [\"...\"] (--gateway-token; pushgate's PushClient sends it) and/or security.gateway_allow = [\"10.0.0.0/8\"] (--gateway-allow; the source networks of MPush's Java PushClient){}",
                net.gateway_bind,
                if production { ", security.production" } else { ", beyond loopback" },
                if production { "" } else { ", or bind it to 127.0.0.1 (--gateway-bind)" },
            ));
        }
        if production {
            if sec.uses_default_key() {
                problems.push(
                    "security.production refuses MPush's published RSA key (anyone can decrypt its handshakes): run `pushgate keygen`, put its [security] keys in the config and give the apps the new public key".to_owned(),
                );
            }
            for (source, filter) in [
                ("log.filter", Some(self.log.filter.as_str())),
                ("RUST_LOG", rust_log),
            ] {
                let Some(filter) = filter else { continue };
                let lower = filter.to_ascii_lowercase();
                if lower.contains("debug") || lower.contains("trace") {
                    problems.push(format!(
                        "security.production refuses debug logging ({source} = {filter:?} logs user ids and connection detail): set log.filter = \"info\" (--log info){}",
                        if source == "RUST_LOG" { " and unset RUST_LOG" } else { "" }
                    ));
                }
            }
        }
        problems
    }

    /// The effective configuration as TOML (for `--print-config`).
    pub fn to_toml(&self) -> String {
        let text = toml::to_string_pretty(self).unwrap_or_default();
        let mut out =
            String::with_capacity(text.len() + STORE_COMMENT.len() + ZOOKEEPER_COMMENT.len());
        for line in text.lines() {
            if line.starts_with("redis_url = ") {
                out.push_str(STORE_COMMENT);
            }
            if line.starts_with("zookeeper = ") {
                out.push_str(ZOOKEEPER_COMMENT);
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
        cfg.bind_deadline_ms = c.bind_deadline_ms;
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
        cfg.broadcast_batch_size = f.broadcast_batch_routes;
        cfg.max_connections = self.net.max_connections;
        let l = &self.limits;
        cfg.max_gateway_connections = l.max_gateway_connections;
        cfg.max_pending_pushes = l.max_pending_pushes;
        cfg.max_broadcasts = l.max_broadcasts;
        cfg.max_user_id_bytes = l.max_user_id_bytes;
        cfg.max_tags_bytes = l.max_tags_bytes;
        let s = &self.security;
        cfg.bind_check = !s.bind_check_url.trim().is_empty();
        cfg.bind_check_fallback = s.bind_check_on_error;
        cfg.max_bind_checks = s.bind_check_max_in_flight;
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
                (c.task_flow_default_limit, c.broadcast_batch_size),
                (
                    c.default_push_timeout_ms,
                    c.max_push_timeout_ms,
                    c.store_timeout_ms,
                ),
                (c.tag_match, c.max_connections),
                (
                    c.max_gateway_connections,
                    c.max_pending_pushes,
                    c.max_broadcasts,
                    c.max_user_id_bytes,
                    c.max_tags_bytes,
                ),
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

#[cfg(all(test, not(madsim)))]
mod cluster_tests {
    use super::*;

    #[test]
    fn zookeeper_is_off_by_default_and_checked_when_set() {
        let config = Config::default();
        assert!(config.cluster.zookeeper.is_empty());
        assert_eq!(config.cluster.zookeeper_namespace, "mpush");
        assert_eq!(config.cluster.zookeeper_digest, "mpush");
        assert_eq!(
            config.net.alloc_port, 0,
            "alloc's own port is off by default"
        );
        let text = config.to_toml();
        assert!(
            text.contains("# Also PUSHGATE_CLUSTER__ZOOKEEPER"),
            "{text}"
        );
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
        let mut cluster = ClusterConfig {
            zookeeper: "10.0.0.1:2181,10.0.0.2:2181/chroot".into(),
            ..ClusterConfig::default()
        };
        cluster.validate().unwrap();
        for bad in ["10.0.0.1", "10.0.0.1:99999", ":2181", "a:1,,b:2"] {
            cluster.zookeeper = bad.into();
            let error = cluster.validate().unwrap_err().to_string();
            assert!(error.contains("cluster.zookeeper"), "{bad}: {error}");
        }
        cluster.zookeeper = "127.0.0.1:2181".into();
        cluster.zookeeper_session_timeout_ms = 10;
        assert!(cluster.validate().is_err());
    }

    #[test]
    fn zookeeper_from_the_environment() {
        // A name no other test uses: tests run in parallel threads of one process.
        std::env::set_var("PUSHGATE_CLUSTER__ZOOKEEPER", "127.0.0.1:2181");
        let config = Config::load(None, None);
        std::env::remove_var("PUSHGATE_CLUSTER__ZOOKEEPER");
        assert_eq!(config.unwrap().cluster.zookeeper, "127.0.0.1:2181");
    }

    #[test]
    fn wss_needs_the_websocket_listener_and_the_certificate_files() {
        let mut config = Config::default();
        config.tls.ws = true;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("--tls-cert"), "{error}");
        config.tls.cert_file = "server.crt".into();
        config.tls.key_file = "server.key".into();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("--ws-port"), "{error}");
        config.net.ws_port = 8443;
        config.validate().unwrap();
    }

    #[test]
    fn phone_io_is_groups_by_default_and_names_its_choices_when_wrong() {
        assert_eq!(Config::default().net.phone_io, PhoneIo::Groups);
        let tasks: Config = toml::from_str("[net]\nphone_io = \"tasks\"\n").unwrap();
        assert_eq!(tasks.net.phone_io, PhoneIo::Tasks);
        let error = toml::from_str::<Config>("[net]\nphone_io = \"threads\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("groups") && error.contains("tasks"),
            "{error}"
        );
    }

    #[test]
    fn the_broadcast_batch_is_configurable_and_bounded() {
        let mut config = Config::default();
        config.flow.broadcast_batch_routes = 128;
        config.validate().unwrap();
        assert_eq!(config.node_config().unwrap().broadcast_batch_size, 128);
        for wrong in [0, MAX_BROADCAST_BATCH_ROUTES + 1] {
            config.flow.broadcast_batch_routes = wrong;
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("flow.broadcast_batch_routes"), "{error}");
        }
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
