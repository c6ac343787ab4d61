//! `pushgate-bench`: the load generator of the side-by-side benchmark. It drives pushgate (MPush's
//! phone and gateway protocols), mosquitto (MQTT 3.1.1) and nats-server (NATS core) with the
//! same workloads and the same client-side effort per message.
//!
//! - `pushgate-bench run --target T ...` runs the workloads against one running server and
//!   writes that target's points as JSON (`bench/run.sh` starts and stops the servers).
//! - `pushgate-bench report RUN.json...` merges targets' files into one report: a side-by-side
//!   table with ratios and the targets as pass/fail lines, the merged JSON, and a PNG
//!   of p99 latency against achieved throughput.
//!
//! The generator gets one core of its own: the measured path (sender, statuses, single-push
//! phones) on the main thread's tokio runtime, the fan-out receivers on a second thread at the
//! lowest priority ([`bulk_thread`], [`priority`]).
#[cfg(test)]
mod broker_check;
mod bulk_thread;
mod churn;
mod latency;
mod loopback_source;
mod mqtt;
mod nats;
mod pacer;
mod payload;
mod plot;
mod point;
mod priority;
mod pushgate_target;
mod report;
mod resources;
mod store_stats;
mod targets;
mod tracker;
mod workload;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pushgate_core::push::AckMode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;
use targets::{Endpoints, TargetKind};

#[derive(Debug, Parser)]
#[command(
    name = "pushgate-bench",
    about = "Load generator: pushgate vs mosquitto vs NATS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run workloads against one running server and write its points as JSON.
    Run(Box<RunArgs>),
    /// Merge target files into one report: table, JSON, PNG plot.
    Report(ReportArgs),
    /// The churn soak against one running pushgate (bench/soak.sh).
    Churn(Box<churn::ChurnArgs>),
}

/// A workload name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum WorkloadName {
    Idle,
    Storm,
    Single,
    Fanout,
    Interference,
}

/// An ack mode name (pushgate only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AckName {
    None,
    Auto,
    Biz,
}

#[derive(Debug, clap::Args, serde::Serialize)]
struct RunArgs {
    /// The server under test.
    #[arg(long, value_enum)]
    target: TargetKind,
    /// Where phones / subscribers connect (pushgate: its connection port).
    #[arg(long)]
    connect: SocketAddr,
    /// pushgate's gateway port (PushClient); the peers' publisher uses --connect.
    #[arg(long)]
    gateway: Option<SocketAddr>,
    /// pushgate cluster: the other nodes' connection ports; phone n connects to node
    /// n % (1 + count), --connect being node 0.
    #[arg(long, value_delimiter = ',')]
    connect_more: Vec<SocketAddr>,
    /// pushgate cluster: push through the cluster PushClient reading routes from this Redis
    /// (with a route cache) instead of a PushClient on --gateway.
    #[arg(long)]
    cluster_redis: Option<String>,
    /// `host:port` of a Redis whose `INFO commandstats` is read before and after every point
    /// (the store round trips per bind / push, counted by Redis).
    #[arg(long)]
    redis_stats: Option<String>,
    /// The name this run carries in the report (default: the target's), e.g. `pushgate+redis`.
    #[arg(long)]
    label: Option<String>,
    /// The server's pid: its RSS and CPU time are read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Where to write this target's points (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Workloads to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "idle,single,fanout"
    )]
    #[serde(skip)]
    workloads: Vec<WorkloadName>,
    /// Idle workload: connections to open.
    #[arg(long, default_value_t = 19_000)]
    idle_connections: usize,
    /// Storm workload: phones that connect (each once).
    #[arg(long, default_value_t = 10_000)]
    storm_phones: usize,
    /// Storm workload: connects under way at once.
    #[arg(long, default_value_t = 1_000)]
    storm_in_flight: usize,
    /// Single workload: distinct users (receivers).
    #[arg(long, default_value_t = 1_000)]
    users: usize,
    /// Single workload, closed loop: messages in flight (one point each).
    #[arg(long, value_delimiter = ',', default_value = "1000,64")]
    windows: Vec<usize>,
    /// Single workload, open loop: offered rates in messages/s (one point each).
    #[arg(long, value_delimiter = ',', default_value = "20000,50000")]
    rates_per_s: Vec<f64>,
    /// pushgate's ack modes to run the single workload in.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "none,auto,biz"
    )]
    #[serde(skip)]
    ack_modes: Vec<AckName>,
    /// Fan-out workload: receivers (one set of points each).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    fanout_sizes: Vec<usize>,
    /// Fan-out workload: broadcasts in flight (one point each).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    fanout_windows: Vec<usize>,
    /// Interference workload: offered single pushes per second while broadcasts to the
    /// largest fan-out size run back to back.
    #[arg(long, default_value_t = 5_000.0)]
    interference_rate_per_s: f64,
    /// Warm-up before each measurement (ms).
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// Measurement time of each point (ms).
    #[arg(long, default_value_t = 3_000)]
    measure_ms: u64,
    /// Longest wait for in-flight messages after each point (ms).
    #[arg(long, default_value_t = 5_000)]
    drain_ms: u64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Pause after opening or closing many connections (ms): the idle workload reads the
    /// server's RSS after it.
    #[arg(long, default_value_t = 1_000)]
    settle_ms: u64,
    /// Stop each single-push point after this many messages (0: only the time limit).
    #[arg(long, default_value_t = 0)]
    max_messages: u64,
    /// Stop each fan-out point after this many broadcasts (0: only the time limit).
    #[arg(long, default_value_t = 0)]
    max_broadcasts: u64,
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// Target files written by `run`.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The merged report (JSON).
    #[arg(long)]
    out: PathBuf,
    /// The latency-vs-throughput plot (PNG); needs a TrueType font (--font, or DejaVu Sans /
    /// Liberation Sans where Debian installs them).
    #[arg(long)]
    png: Option<PathBuf>,
    #[arg(long)]
    font: Option<PathBuf>,
    /// A note to keep in the report (repeatable), e.g. how the servers were configured.
    #[arg(long = "note")]
    notes: Vec<String>,
    /// Write the table here too (text).
    #[arg(long)]
    table: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Churn(args) => churn::run(*args),
        Command::Report(args) => report::report(
            &args.inputs,
            &args.out,
            args.png.as_deref(),
            args.font.as_deref(),
            &args.notes,
            args.table.as_deref(),
        ),
    };
    if let Err(error) = result {
        eprintln!("pushgate-bench: {error:#}");
        std::process::exit(1);
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.measure_ms > 0, "--measure-ms must be > 0");
    anyhow::ensure!(args.users > 0, "--users must be > 0");
    anyhow::ensure!(
        args.windows.iter().all(|w| *w > 0) && args.fanout_windows.iter().all(|w| *w > 0),
        "windows must be > 0"
    );
    anyhow::ensure!(
        args.rates_per_s.iter().all(|r| r.is_finite() && *r > 0.0),
        "--rates-per-s must be positive numbers"
    );
    anyhow::ensure!(
        args.interference_rate_per_s.is_finite() && args.interference_rate_per_s > 0.0,
        "--interference-rate-per-s must be a positive number"
    );
    anyhow::ensure!(
        !args.workloads.contains(&WorkloadName::Interference) || !args.fanout_sizes.is_empty(),
        "the interference workload broadcasts to the largest --fanout-sizes: give one"
    );
    let send = match (args.target, args.gateway) {
        (TargetKind::Pushgate, Some(gateway)) => gateway,
        (TargetKind::Pushgate, None) => anyhow::bail!("--gateway is required for pushgate"),
        (_, _) => args.connect,
    };
    let has = |w| args.workloads.contains(&w);
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| args.target.name().to_owned());
    let plan = workload::Plan {
        ends: Endpoints {
            kind: args.target,
            connect: args.connect,
            send,
            connect_more: Vec::leak(args.connect_more.clone()),
            cluster_redis: args.cluster_redis.clone().map(|url| &*String::leak(url)),
        },
        server_pid: args.server_pid,
        idle_connections: args.idle_connections,
        storm_phones: args.storm_phones,
        storm_in_flight: args.storm_in_flight,
        users: args.users,
        windows: args.windows.clone(),
        rates_per_s: args.rates_per_s.clone(),
        ack_modes: args
            .ack_modes
            .iter()
            .map(|a| match a {
                AckName::None => AckMode::None,
                AckName::Auto => AckMode::Auto,
                AckName::Biz => AckMode::Biz,
            })
            .collect(),
        fanout_sizes: args.fanout_sizes.clone(),
        fanout_windows: args.fanout_windows.clone(),
        interference_rate_per_s: args.interference_rate_per_s,
        warmup_ms: args.warmup_ms,
        measure_ms: args.measure_ms,
        drain_ms: args.drain_ms,
        connect_concurrency: args.connect_concurrency,
        settle_ms: args.settle_ms,
        max_messages: args.max_messages,
        max_broadcasts: args.max_broadcasts,
        idle: has(WorkloadName::Idle),
        storm: has(WorkloadName::Storm),
        single: has(WorkloadName::Single),
        fanout: has(WorkloadName::Fanout),
        interference: has(WorkloadName::Interference),
        redis_stats: args.redis_stats.clone(),
        label: label.clone(),
        fan_runtime: None,
    };
    if let Some(pid) = args.server_pid {
        resources::rss_bytes(pid).with_context(|| format!("--server-pid {pid}"))?;
    }
    let fans = bulk_thread::BulkThread::start()?;
    let plan = workload::Plan {
        fan_runtime: Some(fans.handle().clone()),
        ..plan
    };
    // The measured path runs on this thread, raised while the fan-out receivers run.
    let measured_path_policy = priority::check();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    payload::epoch();
    let started = Instant::now();
    let points = runtime.block_on(workload::run(&plan))?;
    let mut parameters = serde_json::to_value(&args)?;
    if let Some(map) = parameters.as_object_mut() {
        let workloads: Vec<String> = args
            .workloads
            .iter()
            .map(|w| format!("{w:?}").to_lowercase())
            .collect();
        map.insert("workloads".into(), serde_json::json!(workloads));
        let acks: Vec<String> = args
            .ack_modes
            .iter()
            .map(|a| format!("{a:?}").to_lowercase())
            .collect();
        map.insert("ack_modes".into(), serde_json::json!(acks));
        map.insert(
            "measured_path_policy".into(),
            serde_json::json!(measured_path_policy),
        );
    }
    let run = point::TargetRun {
        target: label,
        server_pid: args.server_pid,
        started_unix_s: point::unix_now_s(),
        duration_s: started.elapsed().as_secs_f64(),
        parameters,
        points,
    };
    report::write_json(&args.out, &run)?;
    // Connections still open are dropped with the runtimes.
    drop(runtime);
    drop(fans);
    Ok(())
}
