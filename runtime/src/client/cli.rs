//! The `pushgate push` and `pushgate device` subcommands.
//!
//! Both print machine-readable JSON lines to stdout (one per result / received message) and
//! human-oriented status lines to stderr.
//!
//! - `push`: exit 0 for success / ack-success, 1 for any other status; connection and usage
//!   errors are returned as `Err` (the binary exits 2).
//! - `device`: exit 0 after `--count` pushes, on Ctrl-C, or when the server closes the
//!   connection without `--count`; 1 when it closes before `--count` pushes arrived.
use super::device::{random_device_id, AckPolicy, DeviceClient, DeviceEvent, DeviceOptions};
use super::push::{BroadcastRequest, PushClient, PushResult, SinglePushRequest};
use anyhow::Context as _;
use pushgate_core::push::AckMode;
use serde_json::{json, Value};
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

/// The ack mode a push asks for.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckArg {
    /// Success once the push is written to the phone.
    #[default]
    None,
    /// The phone's SDK acknowledges on delivery (AUTO_ACK).
    Auto,
    /// The phone's application acknowledges (BIZ_ACK).
    Biz,
}

impl From<AckArg> for AckMode {
    fn from(ack: AckArg) -> AckMode {
        match ack {
            AckArg::None => AckMode::None,
            AckArg::Auto => AckMode::Auto,
            AckArg::Biz => AckMode::Biz,
        }
    }
}

/// `pushgate push`: one push (or broadcast) through a gateway, like MPush's PushClient.
#[derive(clap::Args, Debug, Clone)]
pub struct PushArgs {
    /// The gateway (PushClient) port of a node.
    #[arg(long, default_value = "127.0.0.1:3001")]
    pub gateway: SocketAddr,
    /// The user to push to (required unless --broadcast).
    #[arg(
        long,
        required_unless_present = "broadcast",
        conflicts_with = "broadcast"
    )]
    pub user: Option<String>,
    /// The content (sent as UTF-8 bytes).
    #[arg(long)]
    pub content: String,
    /// Acknowledgement mode of a single push.
    #[arg(long, value_enum, default_value_t = AckArg::None)]
    pub ack: AckArg,
    /// How long to wait for the outcome (the gateway gets 500 ms less).
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Only the user's connection of this client type (1 mobile, 2 PC, 3 web, -1 unknown).
    #[arg(long, allow_negative_numbers = true)]
    pub client_type: Option<i32>,
    /// Push to every bound connection of the node (filtered by --tags / --condition).
    #[arg(long)]
    pub broadcast: bool,
    /// Broadcast: only connections bound with one of these tags.
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Broadcast: a condition over userId, tags, clientVersion, osName, osVersion.
    #[arg(long)]
    pub condition: Option<String>,
    /// Broadcast: a task id (flow control and progress from the store; returns once sent).
    #[arg(long)]
    pub task_id: Option<String>,
    /// Find the user's nodes in this Redis (the cluster's store.redis_url) instead of pushing
    /// through --gateway: one push per route to the node holding it, router changes followed;
    /// a broadcast goes to every node of the node registry.
    #[arg(long)]
    pub redis: Option<String>,
    /// The gateway token (one of the nodes' security.gateway_tokens), sent first on every
    /// gateway connection. Also read from PUSHGATE_GATEWAY_TOKEN (kept out of the process list).
    #[arg(long, env = "PUSHGATE_GATEWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The gateways serve TLS (--gateway-tls): trust the CAs in this PEM file.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// With --tls-ca: the name the gateway's certificate must carry (default: the address
    /// connected to, or the host a route names).
    #[arg(long, requires = "tls_ca", value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// With --redis and --broadcast: also broadcast to the gateways registered in this
    /// ZooKeeper in MPush's layout (MPush's Java nodes), `host:port[,host:port…]`; the
    /// namespace and digest are MPush's defaults (`mpush`).
    #[arg(long, requires = "redis", value_name = "HOSTS")]
    pub zookeeper: Option<String>,
}

impl PushArgs {
    /// TLS to the gateways, with `--tls-ca`.
    fn gateway_tls(&self) -> anyhow::Result<Option<std::sync::Arc<super::GatewayTls>>> {
        self.tls_ca
            .as_deref()
            .map(|ca| super::GatewayTls::from_ca_file(ca, self.tls_server_name.as_deref()))
            .transpose()
            .context("--tls-ca")
    }

    /// Rejects broadcast-only options on a single push.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.broadcast {
            anyhow::ensure!(
                self.tags.is_empty() && self.condition.is_none() && self.task_id.is_none(),
                "--tags, --condition and --task-id need --broadcast"
            );
            anyhow::ensure!(self.user.is_some(), "--user is required unless --broadcast");
        }
        Ok(())
    }
}

/// `pushgate device`: a phone that connects, binds and prints what it receives.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// The connection (phone) port of a node.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub server: SocketAddr,
    /// The user to bind.
    #[arg(long)]
    pub user: String,
    /// The device id (default: "device-" and 16 random hex digits).
    #[arg(long)]
    pub device_id: Option<String>,
    /// The OS name sent in the handshake; decides the client type.
    #[arg(long, default_value = "android")]
    pub os: String,
    /// Tags to bind with.
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Which pushes to acknowledge: auto (AUTO_ACK ones, like the SDK), biz (BIZ_ACK ones
    /// too), none.
    #[arg(long, value_enum, default_value_t = DeviceAckArg::Auto)]
    pub ack: DeviceAckArg,
    /// Exit 0 after this many pushes (default: run until Ctrl-C or the connection closes).
    #[arg(long)]
    pub count: Option<u64>,
}

/// `pushgate device --ack`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceAckArg {
    #[default]
    Auto,
    Biz,
    None,
}

impl From<DeviceAckArg> for AckPolicy {
    fn from(ack: DeviceAckArg) -> AckPolicy {
        match ack {
            DeviceAckArg::Auto => AckPolicy::Auto,
            DeviceAckArg::Biz => AckPolicy::Biz,
            DeviceAckArg::None => AckPolicy::None,
        }
    }
}

/// Runs `pushgate push`.
pub async fn push_command(args: PushArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    #[cfg(not(madsim))]
    if let Some(url) = args.redis.clone() {
        return cluster_push_command(args, &url).await;
    }
    #[cfg(madsim)]
    anyhow::ensure!(
        args.redis.is_none(),
        "--redis is not available in the simulator"
    );
    let options = super::PushClientOptions {
        token: args.token.clone(),
        ..Default::default()
    };
    let tls = args.gateway_tls()?;
    let client = PushClient::connect_with_tls(args.gateway, options, tls)
        .await
        .with_context(|| format!("connecting to the gateway {}", args.gateway))?;
    let (line, success) = if args.broadcast {
        let result = client
            .broadcast(broadcast_request(args))
            .await
            .context("broadcast")?;
        (broadcast_line(&result), result.status.is_success())
    } else {
        let result = client.push(single_request(args)?).await.context("push")?;
        (single_line(&result), result.status.is_success())
    };
    print_line(&line)?;
    client.close();
    Ok(if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The broadcast `pushgate push --broadcast` asks for.
fn broadcast_request(args: PushArgs) -> BroadcastRequest {
    BroadcastRequest {
        content: args.content.into_bytes().into(),
        tags: args.tags,
        condition: args.condition,
        task_id: args.task_id,
        timeout_ms: args.timeout_ms,
    }
}

/// The single push `pushgate push --user U` asks for.
fn single_request(args: PushArgs) -> anyhow::Result<SinglePushRequest> {
    Ok(SinglePushRequest {
        user_id: args.user.context("--user is required unless --broadcast")?,
        client_type: args.client_type,
        content: args.content.into_bytes().into(),
        ack: args.ack.into(),
        timeout_ms: args.timeout_ms,
    })
}

/// `pushgate push --redis URL`: through the cluster PushClient.
#[cfg(not(madsim))]
async fn cluster_push_command(args: PushArgs, url: &str) -> anyhow::Result<ExitCode> {
    use super::cluster::ClusterPushClient;
    let mut client = ClusterPushClient::new(url)
        .context("--redis")?
        .with_gateway_token(args.token.clone())
        .with_gateway_tls(args.gateway_tls()?);
    let mut member = None;
    if let (Some(servers), true) = (&args.zookeeper, args.broadcast) {
        let options = crate::zookeeper::ZkOptions {
            servers: servers.clone(),
            namespace: "mpush".into(),
            digest: "mpush".into(),
            session_timeout: std::time::Duration::from_secs(5),
        };
        let watcher = crate::zookeeper::ZkMember::start(options, None);
        anyhow::ensure!(
            watcher.wait_read(std::time::Duration::from_secs(5)).await,
            "--zookeeper {servers}: the gateway list could not be read within 5 s"
        );
        client = client.with_zookeeper(watcher.subscribe());
        member = Some(watcher);
    }
    let (line, success) = if args.broadcast {
        let result = client.broadcast(broadcast_request(args)).await;
        let mut line = json!({
            "status": result.status.name(),
            "broadcast": true,
            "nodes": result.nodes,
        });
        if let Some(reason) = &result.reason {
            line["reason"] = Value::from(reason.as_str());
        }
        (line, result.status.is_success())
    } else {
        let result = client.push(single_request(args)?).await;
        let routes: Vec<Value> = result
            .routes
            .iter()
            .map(|route| {
                let mut line = single_line(&route.result);
                line["gateway"] = Value::from(route.gateway.as_str());
                line["routeClientType"] = Value::from(route.client_type);
                line["rereads"] = Value::from(route.rereads);
                line
            })
            .collect();
        let line = json!({
            "status": result.status.name(),
            "userId": result.user_id,
            "reason": result.reason,
            "routes": routes,
        });
        (line, result.status.is_success())
    };
    print_line(&line)?;
    client.close();
    drop(member);
    Ok(if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The JSON line of a single push.
pub fn single_line(result: &PushResult) -> Value {
    let time_points: Vec<Value> = result
        .time_points
        .iter()
        .flat_map(|(name, at)| [Value::from(name.as_str()), Value::from(*at)])
        .collect();
    json!({
        "status": result.status.name(),
        "userId": result.user_id,
        "clientType": result.client_type,
        "timePoints": time_points,
        "reason": result.reason,
    })
}

/// The JSON line of a broadcast.
pub fn broadcast_line(result: &PushResult) -> Value {
    let mut line = json!({
        "status": result.status.name(),
        "broadcast": true,
    });
    if let Some(reason) = &result.reason {
        line["reason"] = Value::from(reason.as_str());
    }
    line
}

/// The JSON line of a received push.
pub fn push_event_line(session_id: i32, flags: u8, content: &[u8]) -> Value {
    let ack = match AckMode::from_flags(pushgate_core::frame::Flags(flags)) {
        AckMode::None => "none",
        AckMode::Auto => "auto",
        AckMode::Biz => "biz",
    };
    json!({
        "sessionId": session_id,
        "flags": flags,
        "ack": ack,
        "content": String::from_utf8_lossy(content),
    })
}

/// The JSON line of a received kick.
pub fn kick_event_line(device_id: &str, user_id: &str) -> Value {
    json!({ "kick": { "deviceId": device_id, "userId": user_id } })
}

fn print_line(line: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Runs `pushgate device`.
pub async fn device_command(args: DeviceArgs) -> anyhow::Result<ExitCode> {
    let device_id = args
        .device_id
        .unwrap_or_else(|| random_device_id(&mut rand::rngs::OsRng));
    let options = DeviceOptions {
        os_name: args.os,
        ack_policy: args.ack.into(),
        ..DeviceOptions::new(device_id)
    };
    let device = DeviceClient::connect(args.server, options)
        .await
        .with_context(|| format!("connecting to {}", args.server))?;
    eprintln!(
        "pushgate device: connected to {} as {} (heartbeat {} ms)",
        args.server,
        device.device_id(),
        device.heartbeat_ms()
    );
    let tags: Vec<&str> = args.tags.iter().map(String::as_str).collect();
    device
        .bind(&args.user, &tags)
        .await
        .with_context(|| format!("binding user {}", args.user))?;
    eprintln!(
        "pushgate device: bound user {} (tags {:?})",
        args.user, args.tags
    );
    if args.count == Some(0) {
        device.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    let mut events = device
        .take_events()
        .await
        .context("event receiver already taken")?;
    let mut received = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = &mut ctrl_c => {
                eprintln!("pushgate device: interrupted after {received} pushes");
                device.close().await;
                return Ok(ExitCode::SUCCESS);
            }
        };
        match event {
            Some(DeviceEvent::Push {
                session_id,
                flags,
                content,
            }) => {
                print_line(&push_event_line(session_id, flags.0, &content))?;
                received += 1;
                if args.count.is_some_and(|n| received >= n) {
                    device.close().await;
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Some(DeviceEvent::Kick { device_id, user_id }) => {
                print_line(&kick_event_line(&device_id, &user_id))?;
            }
            Some(DeviceEvent::Error(error)) => {
                eprintln!("pushgate device: {error}");
            }
            Some(DeviceEvent::Closed) | None => {
                eprintln!("pushgate device: connection closed after {received} pushes");
                return Ok(if args.count.is_some() {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use pushgate_core::status::PushStatus;

    #[derive(Parser, Debug)]
    enum Cmd {
        Push(PushArgs),
        Device(DeviceArgs),
    }

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cmd::try_parse_from(std::iter::once("pushgate").chain(args.iter().copied()))
    }

    #[test]
    fn push_arguments() {
        let Cmd::Push(args) = parse(&["push", "--user", "u1", "--content", "hi"]).unwrap() else {
            panic!()
        };
        assert_eq!(args.gateway, "127.0.0.1:3001".parse().unwrap());
        assert_eq!(
            (args.ack, args.timeout_ms, args.client_type, args.broadcast),
            (AckArg::None, 3000, None, false)
        );
        let Cmd::Push(args) = parse(&[
            "push",
            "--user",
            "u1",
            "--content",
            "hi",
            "--ack",
            "biz",
            "--client-type",
            "-1",
            "--timeout-ms",
            "500",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (args.ack, args.client_type, args.timeout_ms),
            (AckArg::Biz, Some(-1), 500)
        );
        let Cmd::Push(args) = parse(&[
            "push",
            "--broadcast",
            "--content",
            "x",
            "--tags",
            "a,b",
            "--condition",
            "userId == 'u'",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(args.tags, vec!["a", "b"]);
        assert_eq!(args.condition.as_deref(), Some("userId == 'u'"));
        assert!(
            parse(&["push", "--content", "x"]).is_err(),
            "no user, no broadcast"
        );
        let Cmd::Push(args) =
            parse(&["push", "--user", "u", "--content", "x", "--tags", "a"]).unwrap()
        else {
            panic!()
        };
        assert!(args.validate().is_err(), "tags only for broadcasts");
    }

    #[test]
    fn device_arguments() {
        let Cmd::Device(args) = parse(&["device", "--user", "u1"]).unwrap() else {
            panic!()
        };
        assert_eq!(args.server, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(
            (args.os.as_str(), args.ack, args.count, args.device_id),
            ("android", DeviceAckArg::Auto, None, None)
        );
        let Cmd::Device(args) = parse(&[
            "device", "--user", "u1", "--ack", "none", "--count", "3", "--tags", "x,y",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(AckPolicy::from(args.ack), AckPolicy::None);
        assert_eq!((args.count, args.tags.len()), (Some(3), 2));
    }

    #[test]
    fn output_lines() {
        let result = PushResult {
            status: PushStatus::AckSuccess,
            reason: None,
            user_id: "u1".into(),
            client_type: Some(1),
            time_points: vec![("push-center-begin".into(), 5), ("success-end".into(), 7)],
            raw_reply: None,
        };
        let parsed = |text: &str| serde_json::from_str::<Value>(text).unwrap();
        assert_eq!(
            single_line(&result),
            parsed(
                r#"{"status":"ack-success","userId":"u1","clientType":1,"timePoints":["push-center-begin",5,"success-end",7],"reason":null}"#
            )
        );
        let broadcast = PushResult {
            status: PushStatus::Success,
            user_id: String::new(),
            client_type: None,
            time_points: vec![],
            ..result
        };
        assert_eq!(
            broadcast_line(&broadcast),
            parsed(r#"{"status":"success","broadcast":true}"#)
        );
        assert_eq!(
            push_event_line(3, 0x0D, b"hi"),
            parsed(r#"{"sessionId":3,"flags":13,"ack":"biz","content":"hi"}"#)
        );
        assert_eq!(
            kick_event_line("d", "u"),
            parsed(r#"{"kick":{"deviceId":"d","userId":"u"}}"#)
        );
    }
}
