//! Smoke test of the load generator (`pushgate-bench`, see bench/README.md): it runs every
//! workload with tiny sizes against a real pushgate server, and the JSON it writes must account
//! for every message — all pushes delivered, every status a success, every broadcast reaching
//! every phone. Correctness only: no figure is asserted, so the test cannot flake on a busy
//! machine, but the tool cannot silently rot either.
#![cfg(not(madsim))]

use pushgate_tests::{bounded, build_workspace_bin, CliProcess, ScratchDir, TestServer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
const USERS: usize = 40;
const FANOUT_PHONES: usize = 50;
const MESSAGES: u64 = 500;
const BROADCASTS: u64 = 20;

/// The `pushgate-bench` binary of this workspace, built once (a no-op when up to date).
fn bench_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        build_workspace_bin("pushgate-bench", "pushgate-bench")
            .unwrap_or_else(|e| panic!("cannot build the pushgate-bench binary: {e:#}"))
    })
}

fn bench_command(args: &[String]) -> Command {
    let mut command = Command::new(bench_bin());
    command.args(args).stdin(Stdio::null());
    command
}

fn points(run: &Value) -> Vec<Value> {
    run["points"].as_array().cloned().unwrap_or_default()
}

fn u(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a count: {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_every_workload_and_accounts_for_every_message() {
    bench_bin();
    bounded(LIMIT, async {
        let server = TestServer::start_toml(
            "[flow]\nglobal_limit_per_second = 0\nbroadcast_limit_per_second = 0\n\
             broadcast_max_total = 0\n[log]\nfilter = \"warn\"\n",
        )
        .await;
        let dir = ScratchDir::new("bench");
        let run_json = dir.path().join("pushgate.json");
        let args: Vec<String> = [
            "run",
            "--target",
            "pushgate",
            "--connect",
            &server.connect.to_string(),
            "--gateway",
            &server.gateway.to_string(),
            "--server-pid",
            &server.pid().to_string(),
            "--out",
            &run_json.display().to_string(),
            "--workloads",
            "idle,storm,single,fanout",
            "--idle-connections",
            "30",
            "--storm-phones",
            "40",
            "--storm-in-flight",
            "20",
            "--users",
            &USERS.to_string(),
            "--windows",
            "64",
            "--rates-per-s",
            "5000",
            "--ack-modes",
            "none,auto,biz",
            "--fanout-sizes",
            &FANOUT_PHONES.to_string(),
            "--fanout-windows",
            "2",
            "--warmup-ms",
            "0",
            "--measure-ms",
            "5000",
            "--drain-ms",
            "5000",
            "--max-messages",
            &MESSAGES.to_string(),
            "--max-broadcasts",
            &BROADCASTS.to_string(),
            "--settle-ms",
            "200",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut bench = CliProcess::spawn_command(bench_command(&args));
        let status = bench.finish(Duration::from_secs(45)).await;
        assert!(status.success(), "{}", bench.transcript());

        let run: Value = serde_json::from_str(&std::fs::read_to_string(&run_json).unwrap())
            .unwrap_or_else(|e| panic!("run JSON: {e}\n{}", bench.transcript()));
        assert_eq!(run["target"], "pushgate");
        let all = points(&run);
        // idle; storm; closed + open loop in each of three ack modes; one fan-out point.
        assert_eq!(all.len(), 1 + 1 + 2 * 3 + 1, "{run:#}");

        let idle = &all[0];
        assert_eq!(idle["workload"], "idle");
        assert_eq!(u(&idle["connections"]), 30);
        assert!(idle["achieved_per_s"].as_f64().unwrap() > 0.0);
        assert!(idle["rss_per_connection_bytes"].is_f64(), "{idle:#}");

        let storm = &all[1];
        assert_eq!(storm["workload"], "storm");
        assert_eq!(u(&storm["connections"]), 40);
        assert_eq!(u(&storm["errors"]), 0, "{storm:#}");
        assert_eq!(u(&storm["connect_to_bind"]["count"]), 40, "{storm:#}");
        assert!(
            storm["kernel"]["TcpExtListenOverflows"].is_u64(),
            "{storm:#}"
        );

        for point in all.iter().filter(|p| p["workload"] == "single") {
            let title = point["title"].as_str().unwrap();
            assert_eq!(u(&point["sent"]), MESSAGES, "{title}");
            assert_eq!(
                u(&point["delivered"]),
                MESSAGES,
                "{title}: every push delivered"
            );
            assert_eq!(u(&point["lost"]), 0, "{title}");
            assert_eq!(u(&point["unexpected"]), 0, "{title}");
            let expected = if point["ack"] == "none" {
                "success"
            } else {
                "ack-success"
            };
            let statuses = point["statuses"].as_object().unwrap();
            assert_eq!(statuses.len(), 1, "{title}: {statuses:?}");
            assert_eq!(u(&statuses[expected]), MESSAGES, "{title}: {statuses:?}");
            assert_eq!(u(&point["delivery"]["count"]), MESSAGES, "{title}");
            assert_eq!(u(&point["status"]["count"]), MESSAGES, "{title}");
            assert!(point["achieved_per_s"].as_f64().unwrap() > 0.0, "{title}");
        }

        let fanout = all.last().unwrap();
        assert_eq!(fanout["workload"], "fanout");
        let broadcasts = u(&fanout["sent"]);
        assert_eq!(broadcasts, BROADCASTS);
        assert_eq!(
            u(&fanout["delivered"]),
            broadcasts * FANOUT_PHONES as u64,
            "every broadcast reached every phone: {fanout:#}"
        );
        assert_eq!(u(&fanout["lost"]), 0);
        assert_eq!(u(&fanout["statuses"]["success"]), broadcasts);
        assert_eq!(u(&fanout["last_delivery"]["count"]), broadcasts);

        // The report merges it, prints the table and the target lines.
        let report_json = dir.path().join("report.json");
        let report_args: Vec<String> = vec![
            "report".into(),
            run_json.display().to_string(),
            "--out".into(),
            report_json.display().to_string(),
            "--png".into(),
            dir.path().join("plot.png").display().to_string(),
            "--note".into(),
            "smoke test".into(),
        ];
        let mut report = CliProcess::spawn_command(bench_command(&report_args));
        let status = report.finish(Duration::from_secs(20)).await;
        assert!(status.success(), "{}", report.transcript());
        let table = report.stdout.text();
        assert!(table.contains("Targets:"), "{table}");
        assert!(table.contains("fan-out to 50"), "{table}");
        let merged: Value =
            serde_json::from_str(&std::fs::read_to_string(&report_json).unwrap()).unwrap();
        assert_eq!(merged["runs"].as_array().unwrap().len(), 1);
        let checks = merged["checks"].as_array().unwrap();
        let answered = checks
            .iter()
            .find(|c| c["name"].as_str().unwrap().starts_with("every single push"))
            .expect("the every-push-answered check");
        assert_eq!(answered["pass"], true, "{answered}");
        drop(server);
    })
    .await;
}
