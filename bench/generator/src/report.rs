//! The side-by-side report: merges the targets' files of one run, evaluates the issue's
//! targets (pass / fail lines), prints a table with the ratios pushgate / peer, and writes the
//! merged JSON and the plot.
use crate::latency::LatencySummary;
use crate::point::{unix_now_s, Check, Point, RunReport, TargetRun, Workload};
use anyhow::Context;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Generator CPU at or above this means the load generator may be what limits a point.
const GENERATOR_SATURATED_PCT: f64 = 90.0;
/// Other processes using more than this (percent of a core) during a point disturb it.
const OTHERS_BUSY_PCT: f64 = 15.0;
/// The peers, in column order.
const PEERS: [&str; 2] = ["mosquitto", "nats"];

/// Writes `value` as pretty JSON (creating the parent directory).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// `pushgate-bench report`.
pub fn report(
    inputs: &[std::path::PathBuf],
    out: &Path,
    png: Option<&Path>,
    font: Option<&Path>,
    notes: &[String],
    table_out: Option<&Path>,
) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for input in inputs {
        let text = std::fs::read_to_string(input)
            .with_context(|| format!("reading {}", input.display()))?;
        let run: TargetRun = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a pushgate-bench run file", input.display()))?;
        runs.push(run);
    }
    let mut report = RunReport {
        created_unix_s: unix_now_s(),
        machine: machine(),
        notes: notes.to_vec(),
        runs,
        checks: Vec::new(),
    };
    report.checks = checks(&report);
    let table = render(&report);
    print!("{table}");
    if let Some(path) = table_out {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    write_json(out, &report)?;
    eprintln!("pushgate-bench: wrote {}", out.display());
    if let Some(png) = png {
        match crate::plot::find_font(font) {
            Some(font) => {
                crate::plot::plot(&report, png, &font)?;
                eprintln!("pushgate-bench: wrote {}", png.display());
            }
            None => eprintln!(
                "pushgate-bench: no TrueType font found (install fonts-dejavu-core or pass --font): no plot"
            ),
        }
    }
    Ok(())
}

fn machine() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(model) = text.lines().find(|l| l.starts_with("model name")) {
            if let Some((_, name)) = model.split_once(':') {
                out.insert("cpu".into(), name.trim().to_owned());
            }
        }
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    out.insert("cores_available".into(), cores.to_string());
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        out.insert("kernel".into(), release.trim().to_owned());
    }
    out
}

fn find<'a>(report: &'a RunReport, target: &str, key: &str) -> Option<&'a Point> {
    report
        .runs
        .iter()
        .filter(|r| r.target == target)
        .flat_map(|r| r.points.iter())
        .find(|p| p.key == key)
}

/// The point of `target` with the highest achieved rate among keys starting with `prefix`
/// (and not carrying an ack suffix).
fn best<'a>(report: &'a RunReport, target: &str, prefix: &str) -> Option<&'a Point> {
    report
        .runs
        .iter()
        .filter(|r| r.target == target)
        .flat_map(|r| r.points.iter())
        .filter(|p| p.key.starts_with(prefix) && !p.key.ends_with("-ack"))
        .max_by(|a, b| a.achieved_per_s.total_cmp(&b.achieved_per_s))
}

fn kib(point: &Point) -> Option<f64> {
    point.rss_per_connection_bytes.map(|b| b / 1024.0)
}

/// The targets, on this run's numbers.
pub fn checks(report: &RunReport) -> Vec<Check> {
    let mut out = Vec::new();
    let pg_idle = find(report, "pushgate", "idle").and_then(kib);
    let mosq_idle = find(report, "mosquitto", "idle").and_then(kib);
    out.push(match pg_idle {
        Some(pg) => Check {
            name: "idle bound connection <= 1.0 KiB server RSS".into(),
            pass: Some(pg <= 1.0),
            detail: format!("pushgate {pg:.2} KiB/conn"),
        },
        None => missing("idle bound connection <= 1.0 KiB server RSS"),
    });
    out.push(match (pg_idle, mosq_idle) {
        (Some(pg), Some(mosq)) => Check {
            name: "idle RSS per connection <= 1.5x mosquitto's".into(),
            pass: Some(pg <= 1.5 * mosq),
            detail: format!(
                "pushgate {pg:.2} KiB vs mosquitto {mosq:.2} KiB ({})",
                ratio_text(pg, mosq)
            ),
        },
        _ => missing("idle RSS per connection <= 1.5x mosquitto's"),
    });
    let pg_single = best(report, "pushgate", "single/closed/");
    let mosq_single = best(report, "mosquitto", "single/closed/");
    out.push(match (pg_single, mosq_single) {
        (Some(pg), Some(mosq)) => Check {
            name: "single-user push throughput >= 3x mosquitto's 1->1 rate".into(),
            pass: Some(pg.achieved_per_s >= 3.0 * mosq.achieved_per_s),
            detail: format!(
                "pushgate {:.0}/s ({}) vs mosquitto {:.0}/s ({}): {}",
                pg.achieved_per_s,
                pg.title,
                mosq.achieved_per_s,
                mosq.title,
                ratio_text(pg.achieved_per_s, mosq.achieved_per_s)
            ),
        },
        _ => missing("single-user push throughput >= 3x mosquitto's 1->1 rate"),
    });
    let at_20k = find(report, "pushgate", "single/open/20000");
    out.push(match at_20k.and_then(|p| p.status.map(|s| (p, s))) {
        Some((point, status)) => {
            let delivery = point.delivery.unwrap_or_default();
            let mut others = String::new();
            for (suffix, name) in [("/auto-ack", "auto-ack"), ("/biz-ack", "biz-ack")] {
                if let Some(s) = find(report, "pushgate", &format!("single/open/20000{suffix}"))
                    .and_then(|p| p.status)
                {
                    let _ = write!(others, "; {name} status p99 {:.2} ms", s.p99_us / 1000.0);
                }
            }
            Check {
                name: "single push p99 < 2 ms at 20k pushes/s (open loop, ack none)".into(),
                pass: Some(status.p99_us < 2000.0 && point.lost == 0),
                detail: format!(
                    "status p99 {:.2} ms, delivery p99 {:.2} ms at {:.0}/s achieved{others}",
                    status.p99_us / 1000.0,
                    delivery.p99_us / 1000.0,
                    point.achieved_per_s
                ),
            }
        }
        None => missing("single push p99 < 2 ms at 20k pushes/s (open loop, ack none)"),
    });
    let pg_fan = best(report, "pushgate", "fanout/10000/");
    let nats_fan = best(report, "nats", "fanout/10000/");
    out.push(match (pg_fan, nats_fan) {
        (Some(pg), Some(nats)) => Check {
            name: "broadcast deliveries/s to 10k phones >= nats-server's".into(),
            pass: Some(pg.achieved_per_s >= nats.achieved_per_s),
            detail: format!(
                "pushgate {:.0}/s vs nats {:.0}/s ({})",
                pg.achieved_per_s,
                nats.achieved_per_s,
                ratio_text(pg.achieved_per_s, nats.achieved_per_s)
            ),
        },
        _ => missing("broadcast deliveries/s to 10k phones >= nats-server's"),
    });
    let storm_check =
        "reconnect storm: p99 time to bind <= 1 s, no failed connect, no listen overflow";
    out.push(
        match find(report, "pushgate", "storm").and_then(|p| p.connect_to_bind.map(|b| (p, b))) {
            Some((point, bind)) => {
                let overflows = point.kernel.get("TcpExtListenOverflows").copied();
                let drops = point.kernel.get("TcpExtListenDrops").copied();
                Check {
                    name: storm_check.into(),
                    pass: Some(
                        bind.p99_us <= 1_000_000.0
                            && point.errors == 0
                            && overflows == Some(0)
                            && drops == Some(0),
                    ),
                    detail: format!(
                        "{}: p99 {:.0} ms (max {:.0} ms), {} failed, listen overflows {}, drops {}, SYN retransmissions {}",
                        point.title,
                        bind.p99_us / 1000.0,
                        bind.max_us / 1000.0,
                        point.errors,
                        overflows.map_or("unknown".to_owned(), |n| n.to_string()),
                        drops.map_or("unknown".to_owned(), |n| n.to_string()),
                        point
                            .kernel
                            .get("TcpExtTCPSynRetrans")
                            .map_or("unknown".to_owned(), |n| n.to_string()),
                    ),
                }
            }
            None => missing(storm_check),
        },
    );
    let connect_check =
        "connect + handshake + bind >= 4,900/s and >= mosquitto's connect rate (idle point)";
    out.push(
        match (
            find(report, "pushgate", "idle"),
            find(report, "mosquitto", "idle"),
        ) {
            (Some(pg), mosq) => Check {
                name: connect_check.into(),
                pass: Some(
                    pg.achieved_per_s >= 4_900.0
                        && mosq.is_none_or(|m| pg.achieved_per_s >= m.achieved_per_s),
                ),
                detail: match mosq {
                    Some(m) => format!(
                        "pushgate {:.0}/s vs mosquitto {:.0}/s ({})",
                        pg.achieved_per_s,
                        m.achieved_per_s,
                        ratio_text(pg.achieved_per_s, m.achieved_per_s)
                    ),
                    None => format!(
                        "pushgate {:.0}/s (mosquitto not measured)",
                        pg.achieved_per_s
                    ),
                },
            },
            _ => missing(connect_check),
        },
    );
    let cpu_check = "server CPU per delivered push (ack none, 20k/s) <= mosquitto's and nats'";
    let cpu_at = |target| find(report, target, "single/open/20000").and_then(server_cpu_us_per_op);
    out.push(match cpu_at("pushgate") {
        Some(pg) => {
            let peers: Vec<(&str, f64)> = PEERS
                .iter()
                .filter_map(|peer| cpu_at(peer).map(|us| (*peer, us)))
                .collect();
            Check {
                name: cpu_check.into(),
                pass: (!peers.is_empty()).then(|| peers.iter().all(|(_, us)| pg <= *us)),
                detail: std::iter::once(format!("pushgate {pg:.2} us"))
                    .chain(
                        peers.iter().map(|(peer, us)| {
                            format!("{peer} {us:.2} us ({})", ratio_text(pg, *us))
                        }),
                    )
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        }
        None => missing(cpu_check),
    });
    let whole_ms = |s: Option<LatencySummary>| {
        s.map_or_else(
            || "none".to_owned(),
            |s| {
                format!(
                    "p99 {:.0} ms, p99.9 {:.0} ms, max {:.0} ms",
                    s.p99_us / 1000.0,
                    s.p999_us / 1000.0,
                    s.max_us / 1000.0
                )
            },
        )
    };
    let interference_check =
        "single-push status beside back-to-back broadcasts: max <= 10 ms, p99.9 <= 2 ms";
    let interference = report
        .runs
        .iter()
        .filter(|r| r.target == "pushgate")
        .flat_map(|r| r.points.iter())
        .find(|p| p.workload == Some(Workload::Interference));
    out.push(match interference.and_then(|p| p.status.map(|s| (p, s))) {
        Some((point, status)) => Check {
            name: interference_check.into(),
            pass: Some(status.max_us <= 10_000.0 && status.p999_us <= 2_000.0 && point.lost == 0),
            detail: format!(
                "{}: status p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (from the status time lines in whole ms: the node's own share {}; from the push handed to the PushClient to the node taking it in {}; from the node's answer to the status read {}); {} broadcasts completed beside ({:.0} deliveries/s)",
                point.title,
                status.p99_us / 1000.0,
                status.p999_us / 1000.0,
                status.max_us / 1000.0,
                whole_ms(point.server_status),
                whole_ms(point.before_server),
                whole_ms(point.after_server),
                point.background_broadcasts.unwrap_or(0),
                point.background_deliveries_per_s.unwrap_or(0.0)
            ),
        },
        None => missing(interference_check),
    });
    // The cluster point: binds/s on Redis against binds/s on the embedded store, same run.
    for run in store_runs(report) {
        let redis = find(report, &run.target, "idle");
        let embedded = find(report, "pushgate", "idle");
        out.push(match (embedded, redis) {
            (Some(e), Some(r)) => {
                let ratio = r.achieved_per_s / e.achieved_per_s.max(1e-9);
                Check {
                    name: format!("binds/s with {} >= 50% of the embedded store's", run.target),
                    pass: Some(ratio >= 0.5),
                    detail: format!(
                        "{} {:.0}/s vs pushgate {:.0}/s ({:.0}%)",
                        run.target,
                        r.achieved_per_s,
                        e.achieved_per_s,
                        ratio * 100.0
                    ),
                }
            }
            _ => missing(&format!(
                "binds/s with {} >= 50% of the embedded store's",
                run.target
            )),
        });
    }
    // Not a throughput target but the one that must never fail: every push answered.
    let pushgate_points: Vec<&Point> = report
        .runs
        .iter()
        .filter(|r| r.target == "pushgate" || r.target.starts_with("pushgate+"))
        .flat_map(|r| r.points.iter())
        .filter(|p| matches!(p.workload, Some(Workload::Single | Workload::Interference)))
        .collect();
    if !pushgate_points.is_empty() {
        let sent: u64 = pushgate_points.iter().map(|p| p.sent).sum();
        let answered: u64 = pushgate_points
            .iter()
            .map(|p| p.statuses.values().sum::<u64>())
            .sum();
        let failed: u64 = pushgate_points.iter().map(|p| p.errors).sum();
        let lost: u64 = pushgate_points.iter().map(|p| p.lost).sum();
        out.push(Check {
            name: "every single push answered with success, none lost (all ack modes)".into(),
            pass: Some(answered == sent && failed == 0 && lost == 0),
            detail: format!(
                "{sent} sent, {answered} statuses, {failed} not success, {lost} never delivered"
            ),
        });
    }
    out
}

fn missing(name: &str) -> Check {
    Check {
        name: name.into(),
        pass: None,
        detail: "not measured in this run".into(),
    }
}

fn ratio_text(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

/// One cell of the table: its text, and the number a ratio pushgate / peer is taken of.
struct Cell {
    text: String,
    ratio_of: Option<f64>,
}

/// One table row's metric of a point (`None`: not applicable to that point).
struct Metric {
    name: &'static str,
    cell: fn(&Point) -> Option<Cell>,
    /// Rows whose cells are all "0" are left out (lost messages: shown only when some are).
    hide_zero: bool,
}

/// A latency in ms with as many decimals as it deserves.
fn fmt_ms(us: f64) -> String {
    let ms = us / 1000.0;
    if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 100.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.0}")
    }
}

/// "p50/p99/p999" in ms; the ratio is taken of p99.
fn percentiles(s: Option<LatencySummary>, with_p999: bool) -> Option<Cell> {
    let s = s.filter(|s| s.count > 0)?;
    let mut text = format!("{}/{}", fmt_ms(s.p50_us), fmt_ms(s.p99_us));
    if with_p999 {
        text += &format!("/{}", fmt_ms(s.p999_us));
    }
    Some(Cell {
        text,
        ratio_of: Some(s.p99_us),
    })
}

fn number(value: f64, decimals: usize) -> Option<Cell> {
    Some(Cell {
        text: format!("{value:.decimals$}"),
        ratio_of: Some(value),
    })
}

fn cpu(p: &Point) -> Option<Cell> {
    Some(Cell {
        text: format!(
            "{:.0}/{:.0}/{:.0}",
            p.cpu.server_pct, p.cpu.generator_pct, p.cpu.other_pct
        ),
        ratio_of: None,
    })
}

/// Server CPU time per operation of the point (delivered message, connection opened or bound
/// phone), in µs: its CPU share over the measurement divided by the achieved rate.
fn server_cpu_us_per_op(p: &Point) -> Option<f64> {
    (p.achieved_per_s > 0.0 && p.cpu.server_pct > 0.0)
        .then(|| p.cpu.server_pct / 100.0 * 1e6 / p.achieved_per_s)
}

fn metrics(workload: Workload) -> Vec<Metric> {
    let cpu_row = Metric {
        name: "CPU srv/gen/other %",
        cell: cpu,
        hide_zero: false,
    };
    let cpu_per_op = |name| Metric {
        name,
        cell: |p| server_cpu_us_per_op(p).and_then(|us| number(us, 2)),
        hide_zero: false,
    };
    match workload {
        Workload::Idle => vec![
            Metric {
                name: "RSS KiB/conn",
                cell: |p| kib(p).and_then(|k| number(k, 2)),
                hide_zero: false,
            },
            Metric {
                name: "connects/s",
                cell: |p| number(p.achieved_per_s, 0),
                hide_zero: false,
            },
            cpu_per_op("srv CPU us/connect"),
            cpu_row,
        ],
        Workload::Storm => vec![
            Metric {
                name: "binds/s",
                cell: |p| number(p.achieved_per_s, 0),
                hide_zero: false,
            },
            Metric {
                name: "to bind p50/p99/max ms",
                cell: |p| {
                    let s = p.connect_to_bind.filter(|s| s.count > 0)?;
                    Some(Cell {
                        text: format!(
                            "{}/{}/{}",
                            fmt_ms(s.p50_us),
                            fmt_ms(s.p99_us),
                            fmt_ms(s.max_us)
                        ),
                        ratio_of: Some(s.p99_us),
                    })
                },
                hide_zero: false,
            },
            Metric {
                name: "failed connects",
                cell: |p| {
                    Some(Cell {
                        text: p.errors.to_string(),
                        ratio_of: None,
                    })
                },
                hide_zero: false,
            },
            Metric {
                name: "listen ovfl/drop/SYN rtx",
                cell: |p| {
                    let get =
                        |name: &str| p.kernel.get(name).map_or("-".to_owned(), |n| n.to_string());
                    Some(Cell {
                        text: format!(
                            "{}/{}/{}",
                            get("TcpExtListenOverflows"),
                            get("TcpExtListenDrops"),
                            get("TcpExtTCPSynRetrans")
                        ),
                        ratio_of: None,
                    })
                },
                hide_zero: false,
            },
            cpu_per_op("srv CPU us/bind"),
            cpu_row,
        ],
        Workload::Single => vec![
            Metric {
                name: "msgs/s",
                cell: |p| number(p.achieved_per_s, 0),
                hide_zero: false,
            },
            Metric {
                name: "deliv p50/p99/p999 ms",
                cell: |p| percentiles(p.delivery, true),
                hide_zero: false,
            },
            Metric {
                name: "status p50/p99/p999",
                cell: |p| percentiles(p.status, true),
                hide_zero: false,
            },
            Metric {
                name: "gen. send lag p99/p999",
                cell: |p| {
                    let s = p.send_lag.filter(|s| s.count > 0)?;
                    Some(Cell {
                        text: format!("{}/{}", fmt_ms(s.p99_us), fmt_ms(s.p999_us)),
                        ratio_of: None,
                    })
                },
                hide_zero: false,
            },
            Metric {
                name: "lost/not sent",
                cell: |p| {
                    Some(Cell {
                        text: if p.lost + p.not_sent == 0 {
                            "0".into()
                        } else {
                            format!("{}/{}", p.lost, p.not_sent)
                        },
                        ratio_of: None,
                    })
                },
                hide_zero: true,
            },
            cpu_per_op("srv CPU us/delivery"),
            cpu_row,
        ],
        Workload::Fanout => vec![
            Metric {
                name: "deliveries/s",
                cell: |p| number(p.achieved_per_s, 0),
                hide_zero: false,
            },
            Metric {
                name: "deliv p50/p99/p999 ms",
                cell: |p| percentiles(p.delivery, true),
                hide_zero: false,
            },
            Metric {
                name: "last phone p50/p99",
                cell: |p| percentiles(p.last_delivery, false),
                hide_zero: false,
            },
            Metric {
                name: "status p50/p99",
                cell: |p| percentiles(p.status, false),
                hide_zero: false,
            },
            Metric {
                name: "lost",
                cell: |p| {
                    number(p.lost as f64, 0).map(|c| Cell {
                        ratio_of: None,
                        ..c
                    })
                },
                hide_zero: true,
            },
            cpu_per_op("srv CPU us/delivery"),
            cpu_row,
        ],
        Workload::Interference => vec![
            Metric {
                name: "msgs/s",
                cell: |p| number(p.achieved_per_s, 0),
                hide_zero: false,
            },
            Metric {
                name: "status p50/p99/p999",
                cell: |p| percentiles(p.status, true),
                hide_zero: false,
            },
            Metric {
                name: "deliv p50/p99/p999 ms",
                cell: |p| percentiles(p.delivery, true),
                hide_zero: false,
            },
            Metric {
                name: "status/deliv max ms",
                cell: |p| {
                    let max = p.status.or(p.delivery).filter(|s| s.count > 0)?.max_us;
                    Some(Cell {
                        text: fmt_ms(max),
                        ratio_of: Some(max),
                    })
                },
                hide_zero: false,
            },
            Metric {
                name: "broadcasts beside",
                cell: |p| {
                    p.background_broadcasts.map(|n| Cell {
                        text: n.to_string(),
                        ratio_of: Some(n as f64),
                    })
                },
                hide_zero: false,
            },
            Metric {
                name: "bcast deliveries/s",
                cell: |p| p.background_deliveries_per_s.and_then(|r| number(r, 0)),
                hide_zero: false,
            },
            Metric {
                name: "lost",
                cell: |p| {
                    number(p.lost as f64, 0).map(|c| Cell {
                        ratio_of: None,
                        ..c
                    })
                },
                hide_zero: true,
            },
            cpu_row,
        ],
    }
}

/// The whole text: table, checks, warnings, notes.
pub fn render(report: &RunReport) -> String {
    // Rows in the order the points were run, pushgate's first.
    let mut keys: Vec<(String, String, Workload)> = Vec::new();
    let mut ordered: Vec<&TargetRun> = report.runs.iter().collect();
    ordered.sort_by_key(|r| (r.target != "pushgate", r.target.clone()));
    for run in &ordered {
        for point in &run.points {
            let Some(workload) = point.workload else {
                continue;
            };
            if !keys.iter().any(|(k, _, _)| *k == point.key) {
                // The peers' titles name qos0; the row names what both mean.
                let title = point
                    .title
                    .replace(", ack none", "")
                    .replace(", ack qos0", "");
                keys.push((point.key.clone(), title, workload));
            }
        }
    }
    let mut out = String::new();
    let header = format!(
        "{:<46} {:<23} {:>19} {:>19} {:>19} {:>8} {:>8}",
        "point", "metric", "pushgate", "mosquitto", "nats", "pg/mosq", "pg/nats"
    );
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.len()));
    for (key, title, workload) in &keys {
        let by_target = |target: &str| find(report, target, key);
        let targets = [
            by_target("pushgate"),
            by_target(PEERS[0]),
            by_target(PEERS[1]),
        ];
        let mut first = true;
        for metric in metrics(*workload) {
            let cells: Vec<Option<Cell>> = targets
                .iter()
                .map(|p| p.and_then(|p| (metric.cell)(p)))
                .collect();
            if cells.iter().all(Option::is_none)
                || (metric.hide_zero && cells.iter().flatten().all(|c| c.text == "0"))
            {
                continue;
            }
            let text = |c: &Option<Cell>| c.as_ref().map_or("-".to_owned(), |c| c.text.clone());
            let ratio = |peer: &Option<Cell>| match (
                cells[0].as_ref().and_then(|c| c.ratio_of),
                peer.as_ref().and_then(|c| c.ratio_of),
            ) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => String::new(),
            };
            let label = if first { title.as_str() } else { "" };
            first = false;
            let _ = writeln!(
                out,
                "{:<46} {:<23} {:>19} {:>19} {:>19} {:>8} {:>8}",
                truncate(label, 46),
                metric.name,
                text(&cells[0]),
                text(&cells[1]),
                text(&cells[2]),
                ratio(&cells[1]),
                ratio(&cells[2])
            );
        }
    }
    let _ = writeln!(
        out,
        "(latency cells: ms; ratios of latencies are of p99; CPU: server / load generator / everything else, % of one core)"
    );
    render_store_runs(report, &mut out);
    let _ = writeln!(out);
    let _ = writeln!(out, "Targets:");
    for check in &report.checks {
        let verdict = match check.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "n/a ",
        };
        let _ = writeln!(out, "  [{verdict}] {}: {}", check.name, check.detail);
    }
    let saturated: Vec<String> = report
        .runs
        .iter()
        .flat_map(|r| r.points.iter())
        .filter(|p| p.cpu.generator_pct >= GENERATOR_SATURATED_PCT)
        .map(|p| format!("{} / {}", p.target, p.title))
        .collect();
    if !saturated.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Load generator at >= {GENERATOR_SATURATED_PCT:.0}% of its core (these figures may be the generator's limit, not the server's):"
        );
        for line in saturated {
            let _ = writeln!(out, "  - {line}");
        }
    }
    let disturbed: Vec<String> = report
        .runs
        .iter()
        .flat_map(|r| r.points.iter())
        .filter(|p| p.cpu.other_pct >= OTHERS_BUSY_PCT)
        .map(|p| format!("{} / {} ({:.0}%)", p.target, p.title, p.cpu.other_pct))
        .collect();
    if !disturbed.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Other processes used >= {OTHERS_BUSY_PCT:.0}% of a core during (these figures are disturbed; run again on a quiet machine):"
        );
        for line in disturbed {
            let _ = writeln!(out, "  - {line}");
        }
    }
    if !report.notes.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Notes:");
        for note in &report.notes {
            let _ = writeln!(out, "  - {note}");
        }
    }
    out
}

/// The runs of pushgate on a shared store (labelled `pushgate+…`, e.g. `pushgate+redis`).
fn store_runs(report: &RunReport) -> impl Iterator<Item = &TargetRun> {
    report
        .runs
        .iter()
        .filter(|r| r.target.starts_with("pushgate+"))
}

/// The cluster point: each store run's points beside the embedded store's, with the ratio and
/// the Redis commands per operation.
fn render_store_runs(report: &RunReport, out: &mut String) {
    for run in store_runs(report) {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Cluster point: {} vs pushgate (embedded store); rate = connects+binds/s (idle), deliveries/s (single, fan-out)",
            run.target
        );
        let header = format!(
            "{:<46} {:>12} {:>12} {:>7} {:>10} {:>9}  {}",
            "point", "embedded", &run.target, "ratio", "p99 ms", "redis/op", "redis commands"
        );
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "{}", "-".repeat(header.len()));
        for point in &run.points {
            let embedded = find(report, "pushgate", &point.key);
            let ratio = embedded
                .filter(|e| e.achieved_per_s > 0.0)
                .map_or(String::new(), |e| {
                    format!("{:.2}", point.achieved_per_s / e.achieved_per_s)
                });
            let p99 = point
                .status
                .or(point.delivery)
                .or(point.connect_to_bind)
                .filter(|_| point.workload != Some(Workload::Idle))
                .map_or("-".to_owned(), |s| fmt_ms(s.p99_us));
            let calls: Vec<String> = point
                .store_calls
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "{:<46} {:>12} {:>12.0} {:>7} {:>10} {:>9}  {}",
                truncate(&point.title, 46),
                embedded.map_or("-".to_owned(), |e| format!("{:.0}", e.achieved_per_s)),
                point.achieved_per_s,
                ratio,
                p99,
                point
                    .store_calls_per_op
                    .map_or("-".to_owned(), |n| format!("{n:.3}")),
                calls.join(", ")
            );
        }
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_owned()
    } else {
        text.chars().take(max_chars - 1).collect::<String>() + "~"
    }
}
