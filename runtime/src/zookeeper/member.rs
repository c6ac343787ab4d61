//! This node's membership in MPush's ZooKeeper registry: it registers its connection server
//! and its gateway server as ephemeral znodes under `/{namespace}/cluster/cs/` and
//! `/{namespace}/cluster/gs/` (named by one random UUID per process, as MPush names them),
//! and it keeps the lists of every connection and gateway server registered there — Java
//! MPush nodes included — for cluster-wide broadcasts and alloc.
//!
//! As MPush (Curator with `authorization("digest", digest)` and creator-all ACLs): the session
//! authenticates with the `digest` scheme and the bare credential (`mpush`), and every znode it
//! creates, the persistent parents included, carries the ACL "all permissions for its creator"
//! (`digest:mpush:IoF5XrL443rOdy6w434vrj+58TQ=` for `mpush`).
//!
//! One task owns the session. It connects (retrying with a doubling pause up to
//! [`MAX_RETRY_PAUSE`]), registers, then watches the two directories (one-shot child watches,
//! renewed after each change) and the session's state. A disconnection is the client's to
//! heal (the session and its ephemeral znodes survive it); a session that expired (the node
//! was away longer than the session timeout, and ZooKeeper deleted its znodes) or failed is
//! replaced by a new one, and the node registers again under the same names.
use super::znode::{
    self, ConnectServerNode, GatewayServerNode, CONNECT_DIR, GATEWAY_DIR, MAX_CHILDREN,
};
use crate::metrics::names;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

/// Longest pause between two attempts to open a session.
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(10);
/// First pause after a failed attempt.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longest one ZooKeeper request (or a directory read) waits.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before a failed directory read is tried again.
const REREAD_PAUSE: Duration = Duration::from_secs(1);

/// How to reach ZooKeeper and what to register.
#[derive(Debug, Clone)]
pub struct ZkOptions {
    /// `host:port,host:port…` (a ZooKeeper connect string; a `/chroot` suffix is allowed).
    pub servers: String,
    /// MPush's `mp.zk.namespace` (`mpush`).
    pub namespace: String,
    /// MPush's `mp.zk.digest` (`mpush`); empty = no authentication, open ACLs.
    pub digest: String,
    pub session_timeout: Duration,
}

/// What this node registers.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The znode name (a UUID, kept for the life of the process).
    pub node_id: String,
    pub connect: ConnectServerNode,
    pub gateway: GatewayServerNode,
}

impl Registration {
    /// This node's znodes: a new random UUID, the connection server at `public_host:connect_port`
    /// (weight 1) and the gateway server at `gateway_host:gateway_port`.
    pub fn new(
        public_host: &str,
        connect_port: u16,
        gateway_host: &str,
        gateway_port: u16,
    ) -> Self {
        Self {
            node_id: uuid::Uuid::new_v4().to_string(),
            connect: ConnectServerNode::new(public_host, connect_port),
            gateway: GatewayServerNode {
                host: gateway_host.to_owned(),
                port: gateway_port,
            },
        }
    }
}

/// One znode seen in a watched directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen<T> {
    /// The znode's name (MPush: the node's UUID).
    pub name: String,
    pub node: T,
}

/// What the registry holds, as last read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ZkView {
    /// Registered here now (false while the session is being replaced).
    pub registered: bool,
    /// The gateway directory was read at least once in this process.
    pub read: bool,
    pub connect_servers: Vec<Seen<ConnectServerNode>>,
    pub gateway_servers: Vec<Seen<GatewayServerNode>>,
}

/// The membership: started by [`ZkMember::start`], ended by [`ZkMember::leave`].
#[derive(Debug)]
pub struct ZkMember {
    view: watch::Receiver<ZkView>,
    task: JoinHandle<()>,
    /// The live session, to delete this node's znodes on a clean shutdown.
    session: Arc<Mutex<Option<zk::Client>>>,
    options: ZkOptions,
    registration: Option<Registration>,
}

impl ZkMember {
    /// Starts the session task (it connects in the background). Without a registration the
    /// member only watches (a PushClient looking for gateways).
    pub fn start(options: ZkOptions, registration: Option<Registration>) -> Self {
        let (tx, view) = watch::channel(ZkView::default());
        let session = Arc::new(Mutex::new(None));
        let task = tokio::spawn(run(
            options.clone(),
            registration.clone(),
            tx,
            session.clone(),
        ));
        Self {
            view,
            task,
            session,
            options,
            registration,
        }
    }

    /// The registry as last read.
    pub fn view(&self) -> ZkView {
        self.view.borrow().clone()
    }

    /// A receiver of every new view.
    pub fn subscribe(&self) -> watch::Receiver<ZkView> {
        self.view.clone()
    }

    /// This node's registration.
    pub fn registration(&self) -> Option<&Registration> {
        self.registration.as_ref()
    }

    /// Waits (at most `limit`) until the gateway directory was read once; false when it was
    /// not by then.
    pub async fn wait_read(&self, limit: std::time::Duration) -> bool {
        let mut view = self.view.clone();
        tokio::time::timeout(limit, view.wait_for(|v| v.read))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops the task and deletes this node's znodes (within [`REQUEST_TIMEOUT`]); the session
    /// closes when its client is dropped.
    pub async fn leave(&self) {
        self.task.abort();
        let client = lock(&self.session).take();
        let (Some(client), Some(registration)) = (client, &self.registration) else {
            return;
        };
        let paths = own_paths(&self.options.namespace, &registration.node_id);
        let deletes = paths.iter().map(|path| client.delete(path, None));
        match tokio::time::timeout(REQUEST_TIMEOUT, futures_util::future::join_all(deletes)).await
        {
            Ok(_) => tracing::info!("left the ZooKeeper registry"),
            Err(_) => tracing::warn!(
                "ZooKeeper did not answer the deregistration in time (the znodes go with the session)"
            ),
        }
    }
}

impl Drop for ZkMember {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This node's two znodes.
fn own_paths(namespace: &str, node_id: &str) -> [String; 2] {
    [
        format!("{}/{node_id}", znode::dir_path(namespace, CONNECT_DIR)),
        format!("{}/{node_id}", znode::dir_path(namespace, GATEWAY_DIR)),
    ]
}

/// The session task: connect, register, watch; again after a session ends.
async fn run(
    options: ZkOptions,
    registration: Option<Registration>,
    view: watch::Sender<ZkView>,
    session: Arc<Mutex<Option<zk::Client>>>,
) {
    let mut pause = FIRST_RETRY_PAUSE;
    let mut failing = false;
    let mut sessions = 0u64;
    loop {
        let attempt = async {
            let client = connect(&options).await?;
            if let Some(registration) = &registration {
                register(&client, &options, registration).await?;
            }
            Ok::<_, zk::Error>(client)
        };
        let client = match attempt.await {
            Ok(client) => client,
            Err(error) => {
                if !failing {
                    tracing::warn!(servers = %options.servers, %error, "cannot register in ZooKeeper; retrying");
                    failing = true;
                } else {
                    tracing::debug!(%error, "ZooKeeper registration failed again");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
                continue;
            }
        };
        pause = FIRST_RETRY_PAUSE;
        failing = false;
        sessions += 1;
        if registration.is_some() {
            metrics::counter!(names::ZOOKEEPER_SESSIONS).increment(1);
            metrics::gauge!(names::ZOOKEEPER_REGISTERED).set(1.0);
        }
        match &registration {
            Some(registration) => tracing::info!(
                servers = %options.servers,
                node_id = %registration.node_id,
                session = sessions,
                "registered in ZooKeeper"
            ),
            None => tracing::debug!(servers = %options.servers, "watching ZooKeeper"),
        }
        *lock(&session) = Some(client.clone());
        view.send_modify(|v| v.registered = registration.is_some());
        let ended = serve(&client, &options, &view).await;
        view.send_modify(|v| v.registered = false);
        metrics::gauge!(names::ZOOKEEPER_REGISTERED).set(0.0);
        *lock(&session) = None;
        tracing::warn!(state = ?ended, "ZooKeeper session ended; registering again with a new session");
    }
}

/// Opens an authenticated session.
async fn connect(options: &ZkOptions) -> Result<zk::Client, zk::Error> {
    let mut connector = zk::Client::connector()
        .with_session_timeout(options.session_timeout)
        .with_fail_eagerly();
    if !options.digest.is_empty() {
        connector = connector.with_auth("digest", options.digest.as_bytes());
    }
    match tokio::time::timeout(
        options.session_timeout + REQUEST_TIMEOUT,
        connector.connect(&options.servers),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(zk::Error::Timeout),
    }
}

/// The ACL of every znode created: all permissions for the creator (its digest identity), or
/// open when no digest is configured.
fn acls(options: &ZkOptions) -> zk::Acls<'static> {
    if options.digest.is_empty() {
        zk::Acls::anyone_all()
    } else {
        zk::Acls::creator_all()
    }
}

/// Creates the parents (persistent) and this node's two ephemeral znodes. A znode of the same
/// name left by an older session (not yet expired) is replaced.
async fn register(
    client: &zk::Client,
    options: &ZkOptions,
    registration: &Registration,
) -> Result<(), zk::Error> {
    let acls = acls(options);
    let dirs = zk::CreateMode::Persistent.with_acls(acls);
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(acls);
    let [cs_path, gs_path] = own_paths(&options.namespace, &registration.node_id);
    let values = [
        (cs_path, znode::encode(&registration.connect)),
        (gs_path, znode::encode(&registration.gateway)),
    ];
    for (path, data) in &values {
        let dir = &path[..path.rfind('/').unwrap_or(0)];
        bounded(client.mkdir(dir, &dirs)).await?;
        match bounded(client.create(path, data, &ephemeral)).await {
            Ok(_) => {}
            Err(zk::Error::NodeExists) => {
                match bounded(client.delete(path, None)).await {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(error) => return Err(error),
                }
                bounded(client.create(path, data, &ephemeral)).await?;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// `request` cut at [`REQUEST_TIMEOUT`].
async fn bounded<T>(
    request: impl std::future::Future<Output = Result<T, zk::Error>>,
) -> Result<T, zk::Error> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .unwrap_or(Err(zk::Error::Timeout))
}

/// Watches both directories until the session ends; returns its final state.
async fn serve(
    client: &zk::Client,
    options: &ZkOptions,
    view: &watch::Sender<ZkView>,
) -> zk::SessionState {
    let mut state = client.state_watcher();
    let connect_dir = znode::dir_path(&options.namespace, CONNECT_DIR);
    let gateway_dir = znode::dir_path(&options.namespace, GATEWAY_DIR);
    let connects = watch_dir(
        client,
        &connect_dir,
        |nodes: Vec<Seen<ConnectServerNode>>| view.send_modify(|v| v.connect_servers = nodes),
    );
    let gateways = watch_dir(
        client,
        &gateway_dir,
        |nodes: Vec<Seen<GatewayServerNode>>| {
            view.send_modify(|v| {
                v.gateway_servers = nodes;
                v.read = true;
            })
        },
    );
    let session = async {
        loop {
            let now = state.changed().await;
            if now.is_terminated() {
                return now;
            }
            tracing::info!(state = ?now, "ZooKeeper session state");
        }
    };
    tokio::select! {
        ended = session => ended,
        () = connects => client.state(),
        () = gateways => client.state(),
    }
}

/// Lists `dir`'s children and their values, hands them to `publish`, and again after every
/// change, until the session ends.
async fn watch_dir<T, F>(client: &zk::Client, dir: &str, mut publish: F)
where
    T: for<'de> serde::Deserialize<'de>,
    F: FnMut(Vec<Seen<T>>),
{
    loop {
        if client.state().is_terminated() {
            return;
        }
        let listed =
            tokio::time::timeout(REQUEST_TIMEOUT, client.list_and_watch_children(dir)).await;
        let (mut names, watcher) = match listed {
            Ok(Ok(listed)) => listed,
            Ok(Err(
                zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::AuthFailed,
            )) => return,
            Ok(Err(zk::Error::NoNode)) => {
                // Nobody registered yet: nothing there; look again shortly.
                publish(Vec::new());
                tokio::time::sleep(REREAD_PAUSE).await;
                continue;
            }
            Ok(Err(error)) => {
                tracing::debug!(%dir, %error, "cannot list a ZooKeeper directory; retrying");
                tokio::time::sleep(REREAD_PAUSE).await;
                continue;
            }
            Err(_) => continue,
        };
        names.sort();
        names.truncate(MAX_CHILDREN);
        let reads = names.into_iter().map(|name| async move {
            let path = format!("{dir}/{name}");
            let read = tokio::time::timeout(REQUEST_TIMEOUT, client.get_data(&path)).await;
            match read {
                Ok(Ok((bytes, _))) => znode::decode::<T>(&bytes).map(|node| Seen { name, node }),
                _ => None,
            }
        });
        let nodes: Vec<Seen<T>> = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .collect();
        publish(nodes);
        let event = watcher.changed().await;
        if event.session_state.is_terminated() {
            return;
        }
    }
}
