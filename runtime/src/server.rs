//! `pushgate serve`: binds the three listeners (phones, PushClients, HTTP admin), starts the
//! node task and accepts connections until shut down.
//!
//! Shutdown (SIGINT/SIGTERM in the binary, [`RunningServer::shutdown`] in tests): stop
//! accepting, let the node answer every pending push and close every phone, then wait — at
//! most `net.shutdown_grace_ms` — for the connection tasks to flush what they hold.
use crate::config::Config;
use crate::conn::{self, GatewaySettings, PhoneSettings};
use crate::driver::{self, GatewayCmd, GatewayOutbox, NodeHandle, NodeMsg, QueueLimits};
use crate::limits::{AddressLimits, Limit, LimitCounters};
use crate::phone_queue::PhoneQueue;
use futures_util::FutureExt;
use pushgate_core::{ConnConfig, ConnId, GatewayId, Node, QueueMarks};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A started server.
pub struct RunningServer {
    pub connect_addr: SocketAddr,
    /// The TLS connection port (`tls.connect_port`), if any.
    pub connect_tls_addr: Option<SocketAddr>,
    pub gateway_addr: SocketAddr,
    /// `None` in the simulator, which has no HTTP server.
    pub admin_addr: Option<SocketAddr>,
    /// The WebSocket listener for web clients; `None` when `net.ws_port` is 0 (and in the
    /// simulator).
    pub ws_addr: Option<SocketAddr>,
    handle: NodeHandle,
    node_task: JoinHandle<()>,
    accept_tasks: Vec<JoinHandle<()>>,
    live_connections: Arc<AtomicUsize>,
    shutdown_grace: Duration,
    /// The node registry membership (withdrawn first on shutdown).
    #[cfg(not(madsim))]
    cluster: Arc<crate::cluster::ClusterNode>,
}

/// Counts a live connection task (phone, gateway, web) for as long as it exists.
pub(crate) struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    pub(crate) fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a embedding program (the simulator) can attach to a server.
#[derive(Clone, Default)]
pub struct ServerHooks {
    /// Sees every core event of the node (see [`driver::EventObserver`]).
    pub observer: Option<driver::EventObserver>,
}

/// Binds the listeners and starts serving. Port 0 binds a free port (see the addresses).
pub async fn start(config: &Config) -> anyhow::Result<RunningServer> {
    start_with(config, ServerHooks::default()).await
}

/// [`start`] with hooks.
pub async fn start_with(config: &Config, hooks: ServerHooks) -> anyhow::Result<RunningServer> {
    config.validate()?;
    // The simulator's nodes listen on their own (non-loopback) addresses, unguarded.
    #[cfg(not(madsim))]
    config.check_safety(std::env::var("RUST_LOG").ok().as_deref())?;
    if config.security.uses_default_key() {
        tracing::warn!(
            "USING MPUSH'S PUBLISHED DEFAULT RSA KEY: anyone can decrypt handshakes. Run `pushgate keygen` and set security.private_key for production"
        );
    }
    let net = &config.net;
    let connect = listen(&net.connect_bind, net.connect_port, net.listen_backlog)
        .await
        .map_err(|e| anyhow::anyhow!("bind {}:{}: {e}", net.connect_bind, net.connect_port))?;
    let gateway = listen(&net.gateway_bind, net.gateway_port, net.listen_backlog)
        .await
        .map_err(|e| anyhow::anyhow!("bind {}:{}: {e}", net.gateway_bind, net.gateway_port))?;
    let connect_addr = connect.local_addr()?;
    #[cfg(not(madsim))]
    let tls = match config.tls.is_used() {
        true => Some(crate::tls::TlsFiles::load(
            std::path::Path::new(config.tls.cert_file.trim()),
            std::path::Path::new(config.tls.key_file.trim()),
            Duration::from_millis(config.tls.handshake_timeout_ms),
        )?),
        false => None,
    };
    #[cfg(not(madsim))]
    let connect_tls = match config.tls.connect_port {
        0 => None,
        port => Some(
            listen(&net.connect_bind, port, net.listen_backlog)
                .await
                .map_err(|e| anyhow::anyhow!("bind {}:{port}: {e}", net.connect_bind))?,
        ),
    };
    #[cfg(not(madsim))]
    let connect_tls_addr = match &connect_tls {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    #[cfg(madsim)]
    let connect_tls_addr = None;
    let gateway_addr = gateway.local_addr()?;

    // Routes must name the gateway port actually bound (port 0 picks one).
    let mut node_config = config.node_config()?;
    node_config.node_addr.port = gateway_addr.port();
    node_config.trace_events = hooks.observer.is_some();
    let seed = node_seed();
    // The node's clock is `epoch_ms` plus the time since `clock_start`: both read together, so
    // building the node (key set-up) does not put its clock, and its bind versions, behind
    // other nodes' (a later bind elsewhere must get a newer version).
    let clock_start = tokio::time::Instant::now();
    let epoch_ms = crate::node_clock::wall_epoch_ms();
    let marks = QueueMarks::new(
        net.write_low_water_bytes,
        net.write_high_water_bytes,
        net.write_hard_limit_bytes,
    )
    .ok_or_else(|| {
        anyhow::anyhow!(
            "net.write_low_water_bytes <= net.write_high_water_bytes <= net.write_hard_limit_bytes"
        )
    })?;
    let phone_timers = Arc::new(crate::phone_timers::PhoneTimers::new());
    tokio::spawn(crate::phone_timers::PhoneTimers::run(
        Arc::downgrade(&phone_timers),
        clock_start,
    ));
    #[cfg(not(madsim))]
    let web_settings = Arc::new(crate::web::WebSettings {
        cfg: pushgate_core::WebConfig::from_node(
            &node_config,
            marks,
            net.ws_max_message_bytes,
            net.ws_ping_interval_ms,
            net.ws_idle_timeout_ms,
        ),
        start: clock_start,
        path: net.ws_path.clone(),
        max_queued_items: marks.hard_limit_bytes / pushgate_core::frame::HEADER_BYTES + 1,
        deflate: net.ws_deflate,
        timers: phone_timers.clone(),
    });
    let phone_settings = Arc::new(PhoneSettings {
        cfg: ConnConfig::from_node(&node_config, epoch_ms, marks),
        start: clock_start,
        seed: node_seed(),
        timers: phone_timers,
    });
    let max_body_bytes = node_config.max_body_bytes;
    let counters = Arc::new(LimitCounters::default());
    let limits = QueueLimits {
        slow_ms: config.log.profile_slowly_ms,
        max_gateway_queued_bytes: config.limits.max_gateway_queued_bytes,
        max_gateway_connections: config.limits.max_gateway_connections,
        counters: counters.clone(),
        bind_checker: config.security.bind_checker()?,
    };
    let phone_door = PhoneDoor {
        addresses: AddressLimits::new(
            config.limits.max_connections_per_address,
            config.limits.new_connections_per_second_per_address,
            crate::access::AllowList::parse(
                &config.limits.per_address_exempt,
                "limits.per_address_exempt",
            )?,
        ),
        counters: counters.clone(),
    };
    let gateway_door = GatewayDoor {
        settings: GatewaySettings {
            max_body_bytes,
            access: Arc::new(config.security.gateway_access()?),
            counters: counters.clone(),
        },
        auth_deadline: Duration::from_millis(config.limits.gateway_auth_deadline_ms),
        #[cfg(not(madsim))]
        tls: tls.clone().filter(|_| config.tls.gateway),
    };
    #[cfg(not(madsim))]
    let gateway_node = node_config.node_addr.clone();
    let (handle, node_task) = driver::spawn(
        Node::new(node_config, seed, epoch_ms),
        limits,
        config.store.spec()?,
        clock_start,
        hooks.observer,
    );
    let live = Arc::new(AtomicUsize::new(0));
    let next_id = Arc::new(AtomicU64::new(1));
    let phones = PhonePort {
        node: handle.clone(),
        settings: phone_settings,
        next_id: next_id.clone(),
        door: phone_door,
    };
    #[cfg(not(madsim))]
    let tls_phones = tls.clone().map(|files| (phones.clone(), files));
    #[cfg_attr(madsim, allow(unused_mut))]
    let mut accept_tasks = vec![
        tokio::spawn(accept_phones(connect, phones, live.clone(), net.phone_io)),
        tokio::spawn(accept_gateways(
            gateway,
            handle.clone(),
            gateway_door,
            next_id.clone(),
            live.clone(),
        )),
    ];

    #[cfg(not(madsim))]
    let ws_addr = if net.ws_port == 0 {
        None
    } else {
        let ws = listen(&net.ws_bind, net.ws_port, net.listen_backlog)
            .await
            .map_err(|e| anyhow::anyhow!("bind {}:{}: {e}", net.ws_bind, net.ws_port))?;
        let addr = ws.local_addr()?;
        let (node, ids, live) = (handle.clone(), next_id.clone(), live.clone());
        accept_tasks.push(match tls.clone().filter(|_| config.tls.ws) {
            Some(files) => tokio::spawn(crate::web::serve(
                crate::tls::TlsListener::new(ws, files, "ws")?,
                node,
                web_settings,
                ids,
                live,
            )),
            None => tokio::spawn(crate::web::serve(ws, node, web_settings, ids, live)),
        });
        Some(addr)
    };
    #[cfg(madsim)]
    let ws_addr = None;
    #[cfg(not(madsim))]
    if let (Some(listener), Some((phones, files))) = (connect_tls, tls_phones) {
        accept_tasks.push(tokio::spawn(accept_tls_phones(
            listener,
            phones,
            live.clone(),
            files,
        )));
    }
    #[cfg(not(madsim))]
    if let Some(files) = &tls {
        accept_tasks.push(crate::tls::reload_on_sighup(files.clone())?);
    }

    #[cfg(not(madsim))]
    let admin_addr = {
        let admin = listen(&net.admin_bind, net.admin_port, net.listen_backlog)
            .await
            .map_err(|e| anyhow::anyhow!("bind {}:{}: {e}", net.admin_bind, net.admin_port))?;
        let addr = admin.local_addr()?;
        let info = crate::redis_store::NodeInfo {
            node_id: hex::encode(&seed[..8]),
            connect_addr: format!("{}:{}", net.public_host, connect_addr.port()),
            gateway_host: gateway_node.host.clone(),
            gateway_port: gateway_node.port,
            admin_addr: addr.to_string(),
            online_users: 0,
            started_at_ms: epoch_ms,
            updated_at_ms: epoch_ms,
            ttl_ms: config.store.node_ttl_ms,
        };
        let redis = match config.store.spec()? {
            driver::StoreSpec::Redis(target) => Some(target),
            _ => None,
        };
        let token = config.security.gateway_tokens.first().cloned();
        let zookeeper = (!config.cluster.zookeeper.trim().is_empty()).then(|| {
            let options = crate::zookeeper::ZkOptions {
                servers: config.cluster.zookeeper.trim().to_owned(),
                namespace: config.cluster.zookeeper_namespace.clone(),
                digest: config.cluster.zookeeper_digest.clone(),
                session_timeout: Duration::from_millis(config.cluster.zookeeper_session_timeout_ms),
            };
            let registration = crate::zookeeper::Registration::new(
                &net.public_host,
                connect_addr.port(),
                &gateway_node.host,
                gateway_node.port,
            );
            (options, registration)
        });
        let gateway_tls = config.tls.gateway_client()?;
        let cluster = crate::cluster::ClusterNode::start(
            info,
            redis,
            zookeeper,
            handle.clone(),
            token,
            gateway_tls,
        );
        if net.alloc_port != 0 {
            let alloc = listen(&net.alloc_bind, net.alloc_port, net.listen_backlog)
                .await
                .map_err(|e| anyhow::anyhow!("bind {}:{}: {e}", net.alloc_bind, net.alloc_port))?;
            tracing::info!(alloc_addr = %alloc.local_addr()?, "alloc serving");
            accept_tasks.push(tokio::spawn(crate::http::serve_alloc(
                alloc,
                handle.clone(),
                cluster.clone(),
            )));
        }
        let api = crate::http::ApiConfig {
            tokens: config.security.admin_token_set(),
            counters: counters.clone(),
            limits: crate::limits::Limit::ALL
                .iter()
                .map(|limit| (*limit, config.limit_value(*limit)))
                .collect(),
            public_key: config.security.public_key_b64()?,
            default_push_timeout_ms: config.core.default_push_timeout_ms,
            max_push_timeout_ms: config.core.max_push_timeout_ms,
        };
        match tls.clone().filter(|_| config.tls.admin) {
            Some(files) => accept_tasks.push(tokio::spawn(crate::http::serve(
                crate::tls::TlsListener::new(admin, files, "admin")?,
                handle.clone(),
                api,
                cluster.clone(),
            ))),
            None => accept_tasks.push(tokio::spawn(crate::http::serve(
                admin,
                handle.clone(),
                api,
                cluster.clone(),
            ))),
        }
        (Some(addr), cluster)
    };
    #[cfg(not(madsim))]
    let (admin_addr, cluster) = admin_addr;
    #[cfg(madsim)]
    let admin_addr = None;

    tracing::info!(%connect_addr, connect_tls_addr = ?connect_tls_addr, %gateway_addr, admin_addr = ?admin_addr, ws_addr = ?ws_addr, "pushgate serving");
    Ok(RunningServer {
        connect_addr,
        connect_tls_addr,
        gateway_addr,
        admin_addr,
        ws_addr,
        handle,
        node_task,
        accept_tasks,
        live_connections: live,
        shutdown_grace: Duration::from_millis(net.shutdown_grace_ms),
        #[cfg(not(madsim))]
        cluster,
    })
}

/// Binds a listener whose kernel queue holds `backlog` connections not yet accepted (the
/// kernel caps it at `net.core.somaxconn`). A reconnect storm overflowing a short queue makes
/// the kernel drop SYNs, and each dropped SYN costs the phone a retransmission timeout (1 s,
/// then 3 s, ...).
#[cfg(not(madsim))]
async fn listen(host: &str, port: u16, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted server can bind while old sockets linger.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(backlog)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{host}: no address to bind"),
        )
    }))
}

/// The simulator's listeners have no kernel queue to size.
#[cfg(madsim)]
async fn listen(host: &str, port: u16, _backlog: u32) -> std::io::Result<TcpListener> {
    TcpListener::bind((host, port)).await
}

/// Most connections taken off the listen queue in one turn of the accept task; it then
/// yields, so the connection tasks it just started (and every older one) run before it takes
/// more: the kernel's queue is first come, first served, and so is each turn.
const ACCEPT_BATCH: usize = 64;

/// How the accept loop reacts to failed accepts: errors of one connection (it was reset
/// before it was taken) are skipped at once; running out of file descriptors, buffers or
/// memory pauses accepting, doubling the pause while it lasts, instead of spinning on a
/// queue that cannot be served.
#[derive(Debug, Default)]
struct AcceptBackoff {
    pause: Option<Duration>,
}

impl AcceptBackoff {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_secs(1);

    /// A connection was accepted: the next shortage starts over from the first pause.
    fn accepted(&mut self) {
        self.pause = None;
    }

    /// An accept failed with `error`: how long to pause before accepting again (`None`:
    /// go on at once).
    fn failed(&mut self, error: &std::io::Error) -> Option<Duration> {
        if !Self::is_shortage(error) {
            return None;
        }
        let pause = self
            .pause
            .map_or(Self::FIRST_PAUSE, |p| (p * 2).min(Self::MAX_PAUSE));
        self.pause = Some(pause);
        Some(pause)
    }

    /// Out of a resource the process or the system may get back (EMFILE, ENFILE, ENOBUFS,
    /// ENOMEM), or an error this loop does not know: both wait. Errors about the one
    /// connection (ECONNABORTED, ECONNRESET, EPROTO, EPERM from a firewall) do not.
    fn is_shortage(error: &std::io::Error) -> bool {
        use std::io::ErrorKind::*;
        let of_one_connection = matches!(
            error.kind(),
            ConnectionAborted | ConnectionReset | PermissionDenied | Interrupted | WouldBlock
        ) || error.raw_os_error() == Some(EPROTO_CODE);
        !of_one_connection
    }
}

/// `EPROTO` on Linux (a protocol error on the connection being accepted).
const EPROTO_CODE: i32 = 71;

/// What `start` made of an accepted connection.
enum Admit<Task> {
    /// Run this connection task.
    Run(Task),
    /// The connection was refused (and is dropped, which closes it).
    Refused,
    /// The node is gone: the loop ends.
    Stop,
}

/// Accepts connections until the task is aborted. `start` registers each with the node and
/// returns its connection task (see [`Admit`]); `launch` runs that task, with the guard that
/// counts it as live for as long as it runs ([`spawn_task`], or a phone group).
///
/// Connections are taken in batches of at most [`ACCEPT_BATCH`]: one wait, then whatever is
/// already queued, then a yield.
async fn accept_loop<F, Fut, Task, L>(
    listener: TcpListener,
    port: &'static str,
    live: Arc<AtomicUsize>,
    mut start: F,
    mut launch: L,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = Admit<Task>>,
    L: FnMut(Task, LiveGuard),
{
    let mut backoff = AcceptBackoff::default();
    loop {
        let mut next = Some(listener.accept().await);
        let mut taken = 0;
        while let Some(result) = next.take() {
            match result {
                Ok((stream, peer)) => {
                    backoff.accepted();
                    let _ = stream.set_nodelay(true);
                    let task = match start(stream, peer).await {
                        Admit::Run(task) => task,
                        Admit::Refused => {
                            taken += 1;
                            if taken < ACCEPT_BATCH {
                                next = listener.accept().now_or_never();
                            }
                            continue;
                        }
                        Admit::Stop => return,
                    };
                    launch(task, LiveGuard::new(&live));
                }
                Err(error) => {
                    if let Some(pause) = backoff.failed(&error) {
                        tracing::warn!(%error, port, pause_ms = pause.as_millis() as u64, "accept failed; pausing");
                        tokio::time::sleep(pause).await;
                        break;
                    }
                    tracing::debug!(%error, port, "accept failed");
                }
            }
            taken += 1;
            if taken < ACCEPT_BATCH {
                next = listener.accept().now_or_never();
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Runs a connection task as a tokio task of its own, counted live until it ends.
fn spawn_task<Task: Future<Output = ()> + Send + 'static>(task: Task, live: LiveGuard) {
    // `map`, not an async block awaiting `task`: an async block would hold the task's future
    // twice (captured and awaited), and 19,000 idle phones hold 19,000 of them.
    tokio::spawn(task.map(move |()| drop(live)));
}

/// What the phones' accept loop checks before a connection reaches the node.
#[derive(Clone)]
struct PhoneDoor {
    addresses: Arc<AddressLimits>,
    counters: Arc<LimitCounters>,
}

impl PhoneDoor {
    /// Takes a per-address slot for a connection from `peer`, or counts the refusal.
    fn admit(&self, peer: std::net::IpAddr) -> Option<crate::limits::AddressSlot> {
        match self.addresses.admit(peer, tokio::time::Instant::now()) {
            Ok(slot) => Some(slot),
            Err(refusal) => {
                self.counters.hit(refusal.limit(), &peer);
                None
            }
        }
    }
}

/// Tells the node a phone (or web client) connection opened; its hand-off queue of at most
/// `max_queued_items`, or `None` when the node is gone.
pub(crate) async fn open_phone(
    node: &NodeHandle,
    conn: ConnId,
    max_queued_items: usize,
) -> Option<Arc<PhoneQueue>> {
    let queue = Arc::new(PhoneQueue::new(max_queued_items));
    let opened = NodeMsg::PhoneOpened {
        conn,
        queue: queue.clone(),
    };
    node.send(opened).await.ok().map(|()| queue)
}

/// What a phone listener's accept loop (plain or TLS) opens each connection with.
#[derive(Clone)]
struct PhonePort {
    node: NodeHandle,
    settings: Arc<PhoneSettings>,
    next_id: Arc<AtomicU64>,
    door: PhoneDoor,
}

/// A phone connection just accepted, before the node has heard of it.
struct Accepted {
    node: NodeHandle,
    settings: Arc<PhoneSettings>,
    conn: ConnId,
}

impl PhonePort {
    /// A connection from `peer`: its slot in its address's limit (`None`: refused, counted)
    /// and what opens it.
    fn accepted(&self, peer: std::net::IpAddr) -> (Option<crate::limits::AddressSlot>, Accepted) {
        let slot = self.door.admit(peer);
        let accepted = Accepted {
            node: self.node.clone(),
            settings: self.settings.clone(),
            conn: ConnId(self.next_id.fetch_add(1, Ordering::Relaxed)),
        };
        (slot, accepted)
    }
}

impl Accepted {
    /// Tells the node the connection opened: the phone's task over `stream`, or `None` when
    /// the node is gone.
    async fn open<S: conn::PhoneStream>(self, stream: S) -> Option<conn::PhoneTask<S>> {
        let Self {
            node,
            settings,
            conn,
        } = self;
        let queue = open_phone(&node, conn, settings.max_queued_items()).await?;
        Some(conn::run_phone(conn, stream, node, queue, settings))
    }
}

/// Phones on the plain connection port, run by phone groups ([`crate::phone_group`]) or, with
/// `net.phone_io = "tasks"` (and in the simulator), a task each.
async fn accept_phones(
    listener: TcpListener,
    phones: PhonePort,
    live: Arc<AtomicUsize>,
    io: crate::config::PhoneIo,
) {
    #[cfg(not(madsim))]
    if io == crate::config::PhoneIo::Groups {
        use crate::phone_group::{GroupPhone, GroupStream, PhoneGroups};
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        match PhoneGroups::start(workers) {
            Ok(groups) => {
                let wrap = |task, door| GroupPhone { task, door };
                let launch = |phone, live| groups.add(phone, live);
                let convert = GroupStream::from_tokio;
                return accept_phones_with(listener, phones, live, convert, wrap, launch).await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot start phone groups; a task per phone instead")
            }
        }
    }
    #[cfg(madsim)]
    let _ = io;
    let wrap = |task: conn::PhoneTask<TcpStream>, slot: crate::limits::AddressSlot| {
        task.map(move |()| drop(slot))
    };
    accept_phones_with(listener, phones, live, Ok, wrap, spawn_task).await;
}

/// The plain port's accept loop: each connection within its address's limit is made a stream
/// of the kind the phones run on (`convert`), taken in by the node, and its
/// [`conn::PhoneTask`] (`wrap`ped with its address slot) `launch`ed.
async fn accept_phones_with<S, C, W, Task, L>(
    listener: TcpListener,
    phones: PhonePort,
    live: Arc<AtomicUsize>,
    convert: C,
    wrap: W,
    launch: L,
) where
    S: conn::PhoneStream,
    C: Fn(TcpStream) -> std::io::Result<S> + Copy,
    W: Fn(conn::PhoneTask<S>, crate::limits::AddressSlot) -> Task + Copy,
    L: FnMut(Task, LiveGuard),
{
    let start = |stream, peer: SocketAddr| {
        let (slot, accepted) = phones.accepted(peer.ip());
        async move {
            let Some(slot) = slot else {
                return Admit::Refused;
            };
            let stream = match convert(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, "accepted socket unusable");
                    return Admit::Refused;
                }
            };
            match accepted.open(stream).await {
                Some(task) => Admit::Run(wrap(task, slot)),
                None => Admit::Stop,
            }
        }
    };
    accept_loop(listener, "connection", live, start, launch).await;
}

/// What the gateway's accept loop checks before a connection reaches the node.
struct GatewayDoor {
    settings: GatewaySettings,
    auth_deadline: Duration,
    /// TLS on the gateway port (`tls.gateway`).
    #[cfg(not(madsim))]
    tls: Option<Arc<crate::tls::TlsFiles>>,
}

async fn accept_gateways(
    listener: TcpListener,
    node: NodeHandle,
    door: GatewayDoor,
    next_id: Arc<AtomicU64>,
    live: Arc<AtomicUsize>,
) {
    let door = Arc::new(door);
    accept_loop(
        listener,
        "gateway",
        live,
        |stream, peer| {
            let node = node.clone();
            let door = door.clone();
            let gw = GatewayId(next_id.fetch_add(1, Ordering::Relaxed));
            async move {
                Admit::Run(async move {
                    #[cfg(not(madsim))]
                    if let Some(tls) = &door.tls {
                        if let Some(stream) = tls.accept(stream, "gateway").await {
                            serve_gateway(gw, stream, peer, node, &door).await;
                        }
                        return;
                    }
                    serve_gateway(gw, stream, peer, node, &door).await
                })
            }
        },
        spawn_task,
    )
    .await;
}

/// Lets a gateway connection in (token, allow-list) and runs it.
async fn serve_gateway<S>(
    gw: GatewayId,
    mut stream: S,
    peer: SocketAddr,
    node: NodeHandle,
    door: &GatewayDoor,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let settings = &door.settings;
    let admission = settings.access.admission(peer.ip());
    let decoder = pushgate_core::frame::FrameDecoder::new(settings.max_body_bytes);
    let inbound = match crate::gateway_auth::admit(
        &mut stream,
        admission,
        &settings.access,
        &decoder,
        door.auth_deadline,
    )
    .await
    {
        Ok(inbound) => inbound,
        Err(refused) => {
            settings
                .counters
                .hit(Limit::GatewayAuth, &format_args!("{peer}: {refused}"));
            return;
        }
    };
    let (tx, rx) = mpsc::unbounded_channel::<GatewayCmd>();
    let outbox = Arc::new(GatewayOutbox::default());
    let opened = NodeMsg::GatewayOpened {
        gw,
        tx,
        outbox: outbox.clone(),
    };
    if node.send(opened).await.is_err() {
        return;
    }
    conn::run_gateway(gw, stream, node, rx, outbox, settings.clone(), inbound).await
}

/// Phones on the TLS connection port: the same limits and protocol as the plain port, the
/// TLS handshake first (in the connection's task, within `tls.handshake_timeout_ms`).
#[cfg(not(madsim))]
async fn accept_tls_phones(
    listener: TcpListener,
    phones: PhonePort,
    live: Arc<AtomicUsize>,
    tls: Arc<crate::tls::TlsFiles>,
) {
    let start = |stream, peer: SocketAddr| {
        let tls = tls.clone();
        let (slot, accepted) = phones.accepted(peer.ip());
        async move {
            let Some(slot) = slot else {
                return Admit::Refused;
            };
            Admit::Run(async move {
                let Some(stream) = tls.accept(stream, "connection").await else {
                    return;
                };
                if let Some(task) = accepted.open(stream).await {
                    task.await;
                }
                drop(slot);
            })
        }
    };
    accept_loop(listener, "connection-tls", live, start, spawn_task).await;
}

impl RunningServer {
    /// A handle to the node task (local pushes, stats, kicks).
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Connection tasks still running.
    pub fn live_connections(&self) -> usize {
        self.live_connections.load(Ordering::Relaxed)
    }

    /// Stops accepting, answers every pending push, closes every connection, and returns once
    /// the connections have flushed or the grace period ran out.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        for task in &self.accept_tasks {
            task.abort();
        }
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        // Leave the registry first: broadcasts stop coming here.
        #[cfg(not(madsim))]
        let _ = tokio::time::timeout(remaining(deadline), self.cluster.leave()).await;
        let (done, rx) = oneshot::channel();
        if self.handle.send(NodeMsg::Shutdown { done }).await.is_ok() {
            let _ = tokio::time::timeout(remaining(deadline), rx).await;
        }
        let _ = tokio::time::timeout(remaining(deadline), self.node_task).await;
        while self.live_connections.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.live_connections.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(
                left,
                "shutdown grace period over with connections still open"
            );
        }
        tracing::info!("pushgate stopped");
        Ok(())
    }
}

/// Time left until `deadline` (zero once it passed).
fn remaining(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}

/// The seed of the node's random generator: the OS's randomness, or the simulator's
/// deterministic one (so a simulated run replays exactly from its seed).
fn node_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    #[cfg(not(madsim))]
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    #[cfg(madsim)]
    {
        use tokio::madsim::rand::Rng;
        tokio::madsim::rand::thread_rng().fill(&mut seed[..]);
    }
    seed
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn shortages_back_off_doubling_and_connection_errors_do_not() {
        let mut backoff = AcceptBackoff::default();
        for kind in [ErrorKind::ConnectionAborted, ErrorKind::ConnectionReset] {
            assert_eq!(backoff.failed(&Error::from(kind)), None);
        }
        assert_eq!(backoff.failed(&Error::from_raw_os_error(EPROTO_CODE)), None);
        let emfile = Error::from_raw_os_error(24);
        let pauses: Vec<u64> = (0..9)
            .map(|_| backoff.failed(&emfile).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.accepted();
        assert_eq!(
            backoff.failed(&Error::from_raw_os_error(23)),
            Some(AcceptBackoff::FIRST_PAUSE),
            "ENFILE after a success starts over"
        );
    }

    #[tokio::test]
    async fn listeners_take_a_burst_in_arrival_order() {
        let listener = listen("127.0.0.1", 0, 1024).await.unwrap();
        let addr = listener.local_addr().unwrap();
        // More connections than tokio's default backlog (128), none accepted yet.
        let mut clients = Vec::new();
        for _ in 0..300 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut accepted = Vec::new();
        while accepted.len() < clients.len() {
            let (_stream, peer) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("every queued connection is accepted")
                .unwrap();
            accepted.push(peer);
        }
        let connected: Vec<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
        assert_eq!(accepted, connected, "the queue is first come, first served");
        assert!(
            listen("127.0.0.1", addr.port(), 16).await.is_err(),
            "a port in use"
        );
    }
}
