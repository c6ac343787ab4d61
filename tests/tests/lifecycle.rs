//! The binary as an operator uses it: SIGTERM with pushes in flight, the `push` and `device`
//! subcommands, `serve --print-config`, and `keygen`.
#![cfg(not(madsim))]

use pushgate::client::{ClientError, DeviceClient, DeviceOptions, SinglePushRequest};
use pushgate::config::Config;
use pushgate_core::crypto::ClientRsaKey;
use pushgate_core::push::AckMode;
use pushgate_core::PushStatus;
use pushgate_tests::{
    bounded, eventually, expect_closed, expect_push, http, CliProcess, TestServer,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(5);

fn json_lines(process: &CliProcess) -> Vec<Value> {
    process
        .stdout
        .all()
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("not a JSON line ({e}): {line}\n{}", process.transcript())
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_push_in_flight_and_exits_zero() {
    bounded(LIMIT, async {
        let mut server = TestServer::start_toml("[net]\nshutdown_grace_ms = 3000\n").await;
        let device = server.silent_device("device-t", "user-t").await;
        let lively = server.bound_device("device-l", "user-l", &[]).await;
        let pusher = std::sync::Arc::new(server.push_client().await);

        let mut pushes = Vec::new();
        for i in 0..5 {
            let pusher = pusher.clone();
            pushes.push(tokio::spawn(async move {
                let request = SinglePushRequest {
                    ack: AckMode::Biz,
                    timeout_ms: 20_000,
                    ..SinglePushRequest::new("user-t", format!("in flight {i}").into_bytes())
                };
                pusher.push(request).await
            }));
        }
        // An HTTP push waiting for an ACK as well.
        let admin = server.admin;
        let http_push = tokio::spawn(async move {
            http::post_json(admin, "/v1/push", &json!({"userId": "user-t", "content": "http in flight", "ack": "biz", "timeoutMs": 20_000})).await
        });
        for _ in 0..6 {
            expect_push(&device, WAIT).await;
        }
        let stats = eventually(WAIT, "six pushes waiting for their ACK", || async {
            let s = server.stats().await;
            (s["inFlight"] == 6).then_some(s)
        })
        .await;
        assert_eq!(stats["pendingPushes"], 6, "{stats}");

        let signalled = Instant::now();
        server.sigterm();
        for push in pushes {
            let result = push.await.unwrap().expect("the PushClient gets an answer, not a dropped link");
            assert_eq!(result.status, PushStatus::Failure, "{result:?}");
            assert_eq!(result.reason.as_deref(), Some("server shutting down"), "{result:?}");
            assert!(result.raw_reply.is_some(), "answered by the gateway");
        }
        let answered = signalled.elapsed();
        assert!(answered < Duration::from_secs(2), "answers took {answered:?}");
        let status = server.wait_exit(Duration::from_secs(5)).await.expect("exits within the grace time");
        assert!(status.success(), "exit status {status}\n{}", server.logs());
        assert!(signalled.elapsed() < Duration::from_millis(3000 + 1000), "exited after {:?}", signalled.elapsed());
        expect_closed(&device, WAIT).await;
        expect_closed(&lively, WAIT).await;
        let logs = server.logs();
        assert!(logs.contains("shutdown requested"), "{logs}");

        let response = http_push.await.unwrap().expect("the HTTP push in flight gets a response");
        assert_eq!(response.status, 200, "{}", response.text());
        let body = response.json();
        assert_eq!((&body["status"], &body["reason"]), (&json!("failure"), &json!("server shutting down")), "{body}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_an_idle_server_exits_zero_at_once() {
    bounded(LIMIT, async {
        let mut server = TestServer::start().await;
        let device = server.bound_device("device-i", "user-i", &[]).await;
        let signalled = Instant::now();
        server.sigterm();
        let status = server
            .wait_exit(Duration::from_secs(6))
            .await
            .expect("exits");
        assert!(status.success(), "exit status {status}\n{}", server.logs());
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "exited after {:?}",
            signalled.elapsed()
        );
        expect_closed(&device, WAIT).await;
        // Nothing listens any more.
        assert!(
            DeviceClient::connect(server.connect, server.device_options("late"))
                .await
                .is_err()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_push_and_device_talk_through_the_server() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let connect = server.connect.to_string();
        let gateway = server.gateway.to_string();
        let mut device = CliProcess::spawn(&[
            "device",
            "--server",
            &connect,
            "--user",
            "cli-user",
            "--device-id",
            "cli-device",
            "--count",
            "1",
        ]);
        device
            .stderr
            .wait_for(WAIT, |l| l.contains("bound user"))
            .await
            .unwrap_or_else(|| panic!("the device did not bind\n{}", device.transcript()));

        let mut push = CliProcess::spawn(&[
            "push",
            "--gateway",
            &gateway,
            "--user",
            "cli-user",
            "--content",
            "hello from the cli",
        ]);
        let status = push.finish(WAIT).await;
        assert!(status.success(), "{status}\n{}", push.transcript());
        let lines = json_lines(&push);
        assert_eq!(lines.len(), 1, "one JSON line\n{}", push.transcript());
        assert_eq!(
            (&lines[0]["status"], &lines[0]["userId"]),
            (&json!("success"), &json!("cli-user")),
            "{}",
            lines[0]
        );
        assert!(
            lines[0]["timePoints"]
                .as_array()
                .is_some_and(|p| !p.is_empty()),
            "{}",
            lines[0]
        );

        let status = device.finish(WAIT).await;
        assert!(status.success(), "{status}\n{}", device.transcript());
        let lines = json_lines(&device);
        assert_eq!(lines.len(), 1, "{}", device.transcript());
        assert_eq!(
            (&lines[0]["content"], &lines[0]["ack"]),
            (&json!("hello from the cli"), &json!("none")),
            "{}",
            lines[0]
        );

        // Ack modes: a device acking business pushes too (runs until killed).
        let device = CliProcess::spawn(&[
            "device",
            "--server",
            &connect,
            "--user",
            "cli-acker",
            "--ack",
            "biz",
        ]);
        device
            .stderr
            .wait_for(WAIT, |l| l.contains("bound user"))
            .await
            .expect("bound");
        for ack in ["auto", "biz"] {
            let mut push = CliProcess::spawn(&[
                "push",
                "--gateway",
                &gateway,
                "--user",
                "cli-acker",
                "--content",
                ack,
                "--ack",
                ack,
            ]);
            let status = push.finish(WAIT).await;
            assert!(status.success(), "{status}\n{}", push.transcript());
            assert_eq!(
                json_lines(&push)[0]["status"],
                "ack-success",
                "{}",
                push.transcript()
            );
        }
        device
            .stdout
            .wait_for(WAIT, |l| l.contains("\"content\":\"biz\""))
            .await
            .expect("both pushes printed");
        let acks: Vec<Value> = json_lines(&device)
            .iter()
            .map(|l| l["ack"].clone())
            .collect();
        assert_eq!(
            acks,
            [json!("auto"), json!("biz")],
            "{}",
            device.transcript()
        );
        drop(device);

        // An unknown user: exit status 1 and the status in the line.
        let mut push = CliProcess::spawn(&[
            "push",
            "--gateway",
            &gateway,
            "--user",
            "nobody",
            "--content",
            "x",
        ]);
        let status = push.finish(WAIT).await;
        assert_eq!(status.code(), Some(1), "{}", push.transcript());
        let lines = json_lines(&push);
        assert_eq!(lines.len(), 1, "{}", push.transcript());
        assert_eq!(lines[0]["status"], "offline", "{}", push.transcript());
        assert!(push.stdout.text().contains("offline"));

        // A device that never acks: the push times out (exit status 1); Ctrl-C ends the device
        // cleanly.
        let mut deaf = CliProcess::spawn(&[
            "device", "--server", &connect, "--user", "cli-deaf", "--ack", "none",
        ]);
        deaf.stderr
            .wait_for(WAIT, |l| l.contains("bound user"))
            .await
            .expect("bound");
        let mut push = CliProcess::spawn(&[
            "push",
            "--gateway",
            &gateway,
            "--user",
            "cli-deaf",
            "--content",
            "hello?",
            "--ack",
            "auto",
            "--timeout-ms",
            "800",
        ]);
        assert_eq!(
            push.finish(WAIT).await.code(),
            Some(1),
            "{}",
            push.transcript()
        );
        assert_eq!(
            json_lines(&push)[0]["status"],
            "timeout",
            "{}",
            push.transcript()
        );
        deaf.stdout
            .wait_for(WAIT, |l| l.contains("hello?"))
            .await
            .expect("printed");
        let status = std::process::Command::new("kill")
            .arg("-INT")
            .arg(deaf.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            deaf.finish(WAIT).await.code(),
            Some(0),
            "{}",
            deaf.transcript()
        );
        // --count 0: bind and leave.
        let mut once = CliProcess::spawn(&[
            "device", "--server", &connect, "--user", "cli-once", "--count", "0",
        ]);
        assert_eq!(
            once.finish(WAIT).await.code(),
            Some(0),
            "{}",
            once.transcript()
        );

        // No gateway there at all: an error, not a status.
        let closed_port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let mut push = CliProcess::spawn(&[
            "push",
            "--gateway",
            &closed_port,
            "--user",
            "u",
            "--content",
            "x",
        ]);
        let status = push.finish(WAIT).await;
        assert!(!status.success(), "{}", push.transcript());
        assert!(push.stdout.all().is_empty(), "{}", push.transcript());
        assert!(
            push.stderr.text().contains("connecting to the gateway"),
            "{}",
            push.transcript()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_device_with_count_acks_its_last_push_before_exiting() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let connect = server.connect.to_string();
        let gateway = server.gateway.to_string();
        // The race is lost a good part of the time; ten rounds make it show.
        for round in 0..10 {
            let user = format!("cli-count-{round}");
            let mut device = CliProcess::spawn(&["device", "--server", &connect, "--user", &user, "--count", "1"]);
            device.stderr.wait_for(WAIT, |l| l.contains("bound user")).await.expect("bound");
            let mut push = CliProcess::spawn(&["push", "--gateway", &gateway, "--user", &user, "--content", "last one", "--ack", "auto"]);
            let status = push.finish(WAIT).await;
            assert!(device.finish(WAIT).await.success(), "{}", device.transcript());
            assert!(status.success(), "round {round}: the device printed the push and exited, but the push is not acked\n{}", push.transcript());
            assert_eq!(json_lines(&push)[0]["status"], "ack-success", "{}", push.transcript());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_config_shows_the_defaults_and_the_layers() {
    bounded(LIMIT, async {
        let mut plain = CliProcess::spawn(&["serve", "--print-config"]);
        assert!(plain.finish(WAIT).await.success(), "{}", plain.transcript());
        let text = plain.stdout.text();
        assert_eq!(text.trim_end(), Config::default().to_toml().trim_end(), "the defaults, as TOML");
        let parsed: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("not TOML ({e}):\n{text}"));
        assert_eq!(parsed["net"]["connect_port"].as_integer(), Some(3000));
        assert_eq!(parsed["net"]["gateway_port"].as_integer(), Some(3001));
        assert_eq!(parsed["net"]["admin_port"].as_integer(), Some(3002));
        assert_eq!(parsed["core"]["min_heartbeat_ms"].as_integer(), Some(180_000));
        assert_eq!(parsed["core"]["max_heartbeat_ms"].as_integer(), Some(180_000));
        assert_eq!(parsed["core"]["max_packet_bytes"].as_integer(), Some(10_240));
        assert_eq!(parsed["flow"]["global_limit_per_second"].as_integer(), Some(5000));
        for section in ["net", "core", "flow", "security", "log"] {
            assert!(parsed.contains_key(section), "[{section}] missing:\n{text}");
        }

        // File < environment < flags.
        let dir = pushgate_tests::ScratchDir::new("print-config");
        let file = dir.path().join("pushgate.toml");
        std::fs::write(&file, "[core]\nmin_heartbeat_ms = 10000\nmax_heartbeat_ms = 60000\n[net]\nconnect_port = 4000\ngateway_port = 4001\n").unwrap();
        let mut command = pushgate_tests::pushgate_command();
        command.env("PUSHGATE_NET__GATEWAY_PORT", "5001").env("PUSHGATE_CORE__MAX_HEARTBEAT_MS", "90000");
        command.args(["serve", "--print-config", "--config"]).arg(&file).args(["--max-heartbeat-ms", "120000"]);
        let mut layered = CliProcess::spawn_command(command);
        assert!(layered.finish(WAIT).await.success(), "{}", layered.transcript());
        let parsed: toml::Table = toml::from_str(&layered.stdout.text()).unwrap();
        assert_eq!(parsed["core"]["min_heartbeat_ms"].as_integer(), Some(10_000), "from the file");
        assert_eq!(parsed["net"]["connect_port"].as_integer(), Some(4000), "from the file");
        assert_eq!(parsed["net"]["gateway_port"].as_integer(), Some(5001), "environment over file");
        assert_eq!(parsed["core"]["max_heartbeat_ms"].as_integer(), Some(120_000), "flag over environment");

        // Invalid configuration: an error naming the key, exit status 2.
        std::fs::write(&file, "[core]\nmin_heartbeat_ms = 0\n").unwrap();
        let mut command = pushgate_tests::pushgate_command();
        command.args(["serve", "--print-config", "--config"]).arg(&file);
        let mut bad = CliProcess::spawn_command(command);
        assert_eq!(bad.finish(WAIT).await.code(), Some(2), "{}", bad.transcript());
        assert!(bad.stderr.text().contains("min_heartbeat_ms"), "{}", bad.transcript());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_section_is_accepted_by_the_server() {
    bounded(LIMIT, async {
        let mut keygen = CliProcess::spawn(&["keygen"]);
        assert!(
            keygen.finish(Duration::from_secs(20)).await.success(),
            "{}",
            keygen.transcript()
        );
        let text = keygen.stdout.text();
        let parsed: toml::Table =
            toml::from_str(&text).unwrap_or_else(|e| panic!("not TOML ({e}):\n{text}"));
        let section = parsed["security"]
            .as_table()
            .unwrap_or_else(|| panic!("no [security] section:\n{text}"));
        let public = section["public_key"]
            .as_str()
            .expect("public_key")
            .to_owned();
        assert!(!section["private_key"]
            .as_str()
            .expect("private_key")
            .is_empty());
        let client_key = ClientRsaKey::from_x509_base64(&public).expect("the public key parses");
        assert_eq!(client_key.modulus_bytes(), 128, "1024 bits by default");

        let server = TestServer::start_toml(&text).await;
        let served = server.http_get("/v1/public-key").await.json();
        assert_eq!(served["publicKey"], public.as_str());
        assert!(
            !server.logs().contains("DEFAULT RSA KEY"),
            "{}",
            server.logs()
        );

        let options = DeviceOptions {
            public_key: client_key,
            ..server.device_options("device-k")
        };
        let device = server.bound_device_with(options, "user-k", &[]).await;
        let result = server
            .push_client()
            .await
            .push(SinglePushRequest::new(
                "user-k",
                b"with the new key".to_vec(),
            ))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Success, "{result:?}");
        assert_eq!(
            &expect_push(&device, WAIT).await.content[..],
            b"with the new key"
        );

        // A client that still embeds the published default key cannot handshake.
        match DeviceClient::connect(server.connect, server.device_options("device-old")).await {
            Err(
                ClientError::Rejected {
                    cmd: 2, code: 100, ..
                }
                | ClientError::Closed
                | ClientError::Io(_),
            ) => {}
            other => panic!("a handshake under the wrong key must fail, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_flags_override_the_config_file() {
    bounded(LIMIT, async {
        let other_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = pushgate_tests::ServerOptions {
            toml:
                "[core]\nmin_heartbeat_ms = 50000\nmax_heartbeat_ms = 60000\n[log]\njson = true\n"
                    .into(),
            args: [
                "--connect-port",
                &other_port.to_string(),
                "--min-heartbeat-ms",
                "1000",
                "--max-heartbeat-ms",
                "2000",
            ]
            .map(String::from)
            .to_vec(),
        };
        let server = TestServer::start_with(options).await;
        // The config file's connection port is not served; the flag's is.
        assert!(
            DeviceClient::connect(server.connect, server.device_options("d0"))
                .await
                .is_err()
        );
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], other_port));
        let device = DeviceClient::connect(addr, server.device_options("d1"))
            .await
            .expect("the flag's port");
        assert_eq!(
            device.heartbeat_ms(),
            2000,
            "max(1000, min(240000, 2000)) from the flags"
        );
        // log.json: every log line is a JSON object.
        let logs = server.logs();
        let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty());
        for line in lines {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            assert!(value.get("level").is_some(), "{line}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_server_like_sigterm() {
    bounded(LIMIT, async {
        let mut server = TestServer::start().await;
        let status = std::process::Command::new("kill")
            .arg("-INT")
            .arg(server.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let status = server
            .wait_exit(Duration::from_secs(6))
            .await
            .expect("exits");
        assert!(status.success(), "exit status {status}\n{}", server.logs());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_device_reports_kicks_broadcasts_and_the_server_going_away() {
    bounded(LIMIT, async {
        let mut server = TestServer::start().await;
        let connect = server.connect.to_string();
        let gateway = server.gateway.to_string();
        let spawn_device = |id: &str, extra: &[&str]| {
            let mut args = vec![
                "device",
                "--server",
                &connect,
                "--user",
                "cli-k",
                "--device-id",
                id,
            ];
            args.extend_from_slice(extra);
            CliProcess::spawn(&args)
        };
        let first = spawn_device("cli-k1", &["--tags", "red,blue"]);
        first
            .stderr
            .wait_for(WAIT, |l| l.contains("bound user"))
            .await
            .unwrap_or_else(|| panic!("{}", first.transcript()));
        let pc = spawn_device(
            "cli-pc",
            &["--os", "windows", "--tags", "green", "--count", "5"],
        );
        pc.stderr
            .wait_for(WAIT, |l| l.contains("bound user"))
            .await
            .unwrap_or_else(|| panic!("{}", pc.transcript()));

        // A broadcast to one tag, from the CLI.
        let mut push = CliProcess::spawn(&[
            "push",
            "--gateway",
            &gateway,
            "--broadcast",
            "--tags",
            "blue",
            "--content",
            "to blue",
        ]);
        assert!(push.finish(WAIT).await.success(), "{}", push.transcript());
        assert_eq!(
            json_lines(&push),
            [json!({"status": "success", "broadcast": true})],
            "{}",
            push.transcript()
        );
        first
            .stdout
            .wait_for(WAIT, |l| l.contains("to blue"))
            .await
            .unwrap_or_else(|| panic!("{}", first.transcript()));

        // A second mobile device of the same user: the first prints the kick.
        let second = spawn_device("cli-k2", &[]);
        second
            .stderr
            .wait_for(WAIT, |l| l.contains("bound user"))
            .await
            .unwrap_or_else(|| panic!("{}", second.transcript()));
        let kick = first
            .stdout
            .wait_for(WAIT, |l| l.contains("kick"))
            .await
            .unwrap_or_else(|| panic!("{}", first.transcript()));
        assert_eq!(
            serde_json::from_str::<Value>(&kick).unwrap(),
            json!({"kick": {"deviceId": "cli-k1", "userId": "cli-k"}})
        );

        // --client-type picks the PC route.
        let mut push = CliProcess::spawn(&[
            "push",
            "--gateway",
            &gateway,
            "--user",
            "cli-k",
            "--client-type",
            "2",
            "--content",
            "to the pc",
        ]);
        assert!(push.finish(WAIT).await.success(), "{}", push.transcript());
        assert_eq!(
            json_lines(&push)[0]["clientType"],
            2,
            "{}",
            push.transcript()
        );
        pc.stdout
            .wait_for(WAIT, |l| l.contains("to the pc"))
            .await
            .unwrap_or_else(|| panic!("{}", pc.transcript()));

        // The server goes away: a device without --count exits 0, one short of its --count 1.
        let mut devices = [first, second, pc];
        server.sigterm();
        assert!(server.wait_exit(WAIT).await.is_some_and(|s| s.success()));
        let [first, second, pc] = &mut devices;
        assert_eq!(
            first.finish(WAIT).await.code(),
            Some(0),
            "{}",
            first.transcript()
        );
        assert_eq!(
            second.finish(WAIT).await.code(),
            Some(0),
            "{}",
            second.transcript()
        );
        assert_eq!(pc.finish(WAIT).await.code(), Some(1), "{}", pc.transcript());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_writes_a_file_and_rejects_weak_sizes() {
    bounded(LIMIT, async {
        let dir = pushgate_tests::ScratchDir::new("keygen");
        let file = dir.path().join("security.toml");
        let mut keygen = CliProcess::spawn(&[
            std::ffi::OsStr::new("keygen"),
            "--out".as_ref(),
            file.as_os_str(),
        ]);
        assert!(
            keygen.finish(Duration::from_secs(20)).await.success(),
            "{}",
            keygen.transcript()
        );
        assert!(keygen.stdout.all().is_empty(), "{}", keygen.transcript());
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert!(
            parsed["security"]["private_key"]
                .as_str()
                .is_some_and(|k| !k.is_empty()),
            "{text}"
        );
        let mut weak = CliProcess::spawn(&["keygen", "--bits", "512"]);
        assert_eq!(
            weak.finish(WAIT).await.code(),
            Some(2),
            "{}",
            weak.transcript()
        );
        assert!(weak.stdout.all().is_empty(), "{}", weak.transcript());
    })
    .await;
}
