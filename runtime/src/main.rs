//! The `pushgate` binary: `serve` (the node), `push` (a PushClient from the shell), `device`
//! (a phone from the shell), `keygen` (a new RSA key pair in the config's format).
use clap::{Args, Parser, Subcommand};
use pushgate::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc (`runtime/Cargo.toml` says why); the feature `system-alloc` keeps the system's,
/// which heaptrack can see.
#[cfg(all(not(madsim), not(feature = "system-alloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc purges the pages freed on a thread only when later frees come by; an idle node
/// would keep its peak. The housekeeping calls this every round.
#[cfg(all(not(madsim), not(feature = "system-alloc")))]
fn mimalloc_release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and only walks the allocator's own state; it may
    // be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

#[derive(Parser, Debug)]
#[command(
    name = "pushgate",
    version,
    about = "A mobile push gateway that speaks MPush's protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: connection server (3000), gateway server (3001), HTTP admin (3002), and
    /// web clients over WebSocket with `--ws-port`.
    Serve(ServeArgs),
    /// Push to a user (or broadcast) through a gateway, print the status as one JSON line.
    Push(pushgate::client::cli::PushArgs),
    /// Connect as a phone, bind a user and print every push received as a JSON line.
    Device(pushgate::client::cli::DeviceArgs),
    /// Generate a new RSA key pair for `[security]`.
    Keygen(KeygenArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// A TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Override net.connect_port.
    #[arg(long)]
    connect_port: Option<u16>,
    /// Override net.gateway_port.
    #[arg(long)]
    gateway_port: Option<u16>,
    /// Override net.admin_port.
    #[arg(long)]
    admin_port: Option<u16>,
    /// Override net.connect_bind (the address phones connect to).
    #[arg(long, value_name = "ADDR")]
    connect_bind: Option<String>,
    /// Override net.gateway_bind. Beyond loopback it needs --gateway-token or --gateway-allow.
    #[arg(long, value_name = "ADDR")]
    gateway_bind: Option<String>,
    /// Override net.admin_bind. Beyond loopback it needs --admin-token.
    #[arg(long, value_name = "ADDR")]
    admin_bind: Option<String>,
    /// A bearer token of the HTTP admin API (security.admin_tokens); repeat it to accept
    /// several (rotation).
    #[arg(long, value_name = "TOKEN")]
    admin_token: Vec<String>,
    /// A token pushgate's PushClient must send first on the gateway
    /// (security.gateway_tokens); repeatable.
    #[arg(long, value_name = "TOKEN")]
    gateway_token: Vec<String>,
    /// A source network admitted to the gateway without a token, for MPush's Java PushClient
    /// (security.gateway_allow, e.g. 10.0.0.0/8); repeatable.
    #[arg(long, value_name = "CIDR")]
    gateway_allow: Vec<String>,
    /// Ask this HTTP callback before a bind of a new user (security.bind_check_url,
    /// `http://HOST[:PORT]/PATH`; MPush's BindValidator).
    #[arg(long, value_name = "URL")]
    bind_check_url: Option<String>,
    /// Refuse unsafe settings: MPush's published key, business ports without a token, debug
    /// logging (security.production).
    #[arg(long)]
    production: bool,
    /// Override net.ws_port: serve web clients (MPush's JSON packets over WebSocket) here.
    #[arg(long)]
    ws_port: Option<u16>,
    /// Override net.ws_path (the WebSocket path; a plain GET there serves the demo page).
    #[arg(long)]
    ws_path: Option<String>,
    /// Override net.ws_deflate: permessage-deflate for web clients that offer it.
    #[arg(long, value_name = "BOOL")]
    ws_deflate: Option<bool>,
    /// PEM certificate chain for the TLS ports (tls.cert_file); reread on SIGHUP.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// PEM private key for the TLS ports (tls.key_file); reread on SIGHUP.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// The gateway port speaks TLS (tls.gateway).
    #[arg(long)]
    gateway_tls: bool,
    /// With --gateway-tls: the CAs (PEM) trusted when this node forwards a push to another
    /// node's gateway (tls.gateway_ca_file; default: --tls-cert).
    #[arg(long, value_name = "FILE")]
    gateway_ca: Option<String>,
    /// The admin API speaks HTTPS (tls.admin).
    #[arg(long)]
    admin_tls: bool,
    /// Also serve MPush's protocol inside TLS on this port (tls.connect_port).
    #[arg(long, value_name = "N")]
    connect_tls_port: Option<u16>,
    /// The WebSocket port speaks TLS: pages connect with wss:// (tls.ws).
    #[arg(long)]
    ws_tls: bool,
    /// Override net.public_host (the gateway host written into routes).
    #[arg(long)]
    public_host: Option<String>,
    /// Override net.listen_backlog (connections the kernel queues before they are accepted).
    #[arg(long)]
    listen_backlog: Option<u32>,
    /// Override core.min_heartbeat_ms.
    #[arg(long)]
    min_heartbeat_ms: Option<u64>,
    /// Override core.max_heartbeat_ms.
    #[arg(long)]
    max_heartbeat_ms: Option<u64>,
    /// Override flow.global_limit_per_second (0 = unlimited).
    #[arg(long)]
    global_limit_per_second: Option<u64>,
    /// Override log.filter (e.g. "debug").
    #[arg(long)]
    log: Option<String>,
    /// Override store.redis_url: share routes through Redis. `redis://HOST:PORT[/DB]`,
    /// `redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB]` or
    /// `redis+cluster://HOST:PORT[,HOST:PORT…]`.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Override cluster.zookeeper: register in this ZooKeeper in MPush's layout
    /// (`host:port[,host:port…]`).
    #[arg(long, value_name = "HOSTS")]
    zookeeper: Option<String>,
    /// Override net.alloc_port: answer MPush's alloc query (`GET /`) on this port.
    #[arg(long)]
    alloc_port: Option<u16>,
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// Key size in bits (MPush clients expect 1024; 2048 works with clients given the new key).
    #[arg(long, default_value_t = 1024)]
    bits: usize,
    /// Write the `[security]` section to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ServeArgs {
    /// The flags given, as a partial configuration.
    fn overrides(&self) -> toml::Table {
        let mut root = toml::Table::new();
        let mut set = |section: &str, key: &str, value: toml::Value| {
            let entry = root
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(table) = entry {
                table.insert(key.to_owned(), value);
            }
        };
        let int = |v: u64| toml::Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
        if let Some(v) = self.connect_port {
            set("net", "connect_port", int(v.into()));
        }
        if let Some(v) = self.gateway_port {
            set("net", "gateway_port", int(v.into()));
        }
        if let Some(v) = self.admin_port {
            set("net", "admin_port", int(v.into()));
        }
        let text = |v: &String| toml::Value::String(v.clone());
        let list = |v: &[String]| toml::Value::Array(v.iter().map(text).collect());
        if let Some(v) = &self.connect_bind {
            set("net", "connect_bind", text(v));
        }
        if let Some(v) = &self.gateway_bind {
            set("net", "gateway_bind", text(v));
        }
        if let Some(v) = &self.admin_bind {
            set("net", "admin_bind", text(v));
        }
        if !self.admin_token.is_empty() {
            set("security", "admin_tokens", list(&self.admin_token));
        }
        if !self.gateway_token.is_empty() {
            set("security", "gateway_tokens", list(&self.gateway_token));
        }
        if !self.gateway_allow.is_empty() {
            set("security", "gateway_allow", list(&self.gateway_allow));
        }
        if let Some(v) = &self.bind_check_url {
            set("security", "bind_check_url", text(v));
        }
        if let Some(v) = &self.tls_cert {
            set("tls", "cert_file", text(v));
        }
        if let Some(v) = &self.tls_key {
            set("tls", "key_file", text(v));
        }
        if self.gateway_tls {
            set("tls", "gateway", toml::Value::Boolean(true));
        }
        if let Some(v) = &self.gateway_ca {
            set("tls", "gateway_ca_file", text(v));
        }
        if self.admin_tls {
            set("tls", "admin", toml::Value::Boolean(true));
        }
        if let Some(v) = self.connect_tls_port {
            set("tls", "connect_port", int(v.into()));
        }
        if self.ws_tls {
            set("tls", "ws", toml::Value::Boolean(true));
        }
        if self.production {
            set("security", "production", toml::Value::Boolean(true));
        }
        if let Some(v) = self.ws_port {
            set("net", "ws_port", int(v.into()));
        }
        if let Some(v) = &self.ws_path {
            set("net", "ws_path", toml::Value::String(v.clone()));
        }
        if let Some(v) = self.ws_deflate {
            set("net", "ws_deflate", toml::Value::Boolean(v));
        }
        if let Some(v) = &self.public_host {
            set("net", "public_host", toml::Value::String(v.clone()));
        }
        if let Some(v) = self.listen_backlog {
            set("net", "listen_backlog", int(v.into()));
        }
        if let Some(v) = self.min_heartbeat_ms {
            set("core", "min_heartbeat_ms", int(v));
        }
        if let Some(v) = self.max_heartbeat_ms {
            set("core", "max_heartbeat_ms", int(v));
        }
        if let Some(v) = self.global_limit_per_second {
            set("flow", "global_limit_per_second", int(v));
        }
        if let Some(v) = &self.log {
            set("log", "filter", toml::Value::String(v.clone()));
        }
        if let Some(v) = &self.redis {
            set("store", "redis_url", toml::Value::String(v.clone()));
        }
        if let Some(v) = &self.zookeeper {
            set("cluster", "zookeeper", toml::Value::String(v.clone()));
        }
        if let Some(v) = self.alloc_port {
            set("net", "alloc_port", int(v.into()));
        }
        root
    }
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref(), Some(args.overrides()))?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    init_logging(&config.log.filter, config.log.json);
    #[cfg(all(not(madsim), not(feature = "system-alloc")))]
    pushgate::housekeeping::set_release_freed_memory(mimalloc_release_freed_memory);
    let server = pushgate::server::start(&config).await?;
    wait_for_signal().await;
    tracing::info!("shutdown requested: answering pending pushes and closing connections");
    server.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(all(unix, not(madsim)))]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Elsewhere, and in the simulator (whose tokio has no Unix signals): Ctrl-C only.
#[cfg(any(not(unix), madsim))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1024..=4096).contains(&args.bits),
        "--bits must be between 1024 and 4096"
    );
    let key = pushgate::core::crypto::ServerRsaKey::generate(&mut rand_core::OsRng, args.bits)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = format!(
        "# pushgate RSA key pair ({} bits). Put this section in the server's config; give clients the public key.\n[security]\nprivate_key = \"{}\"\npublic_key = \"{}\"\n",
        args.bits,
        key.to_pkcs8_base64(),
        key.public_key().to_x509_base64()
    );
    match args.out {
        Some(path) => {
            std::fs::write(&path, text)?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pushgate: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Push(args) => pushgate::client::cli::push_command(args).await,
            Command::Device(args) => pushgate::client::cli::device_command(args).await,
            Command::Keygen(args) => keygen(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("pushgate: {error:#}");
            ExitCode::from(2)
        }
    }
}
