//! The server starts on free ports, answers a PushClient over TCP, and shuts down.
use bytes::BytesMut;
use pushgate::config::Config;
use pushgate::core::command::Command;
use pushgate::core::frame::{Flags, Frame, FrameDecoder};
use pushgate::core::message::{Body, ErrorMessage, GatewayPush};
use pushgate::core::pipeline::raw_packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn test_config() -> Config {
    let mut config = Config::default();
    config.net.connect_bind = "127.0.0.1".into();
    config.net.connect_port = 0;
    config.net.gateway_port = 0;
    config.net.admin_port = 0;
    config
}

#[tokio::test]
async fn gateway_push_to_an_unknown_user_is_offline() {
    let server = pushgate::server::start(&test_config()).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(server.gateway_addr)
        .await
        .unwrap();
    let push = GatewayPush {
        user_id: "nobody".into(),
        client_type: 1,
        timeout_ms: 1000,
        content: "hi".into(),
        ..Default::default()
    };
    let packet = raw_packet(Command::GatewayPush.code(), Flags::NONE, 42, &push);
    stream.write_all(&packet.to_bytes()).await.unwrap();
    let mut buf = BytesMut::with_capacity(1024);
    let decoder = FrameDecoder::default();
    let reply = loop {
        if let Some(Frame::Packet(p)) = decoder.decode(&mut buf).unwrap() {
            break p;
        }
        assert!(
            stream.read_buf(&mut buf).await.unwrap() > 0,
            "closed before replying"
        );
    };
    assert_eq!((reply.cmd, reply.session_id), (Command::Error.code(), 42));
    let error = ErrorMessage::decode(&reply.body).unwrap();
    assert_eq!(
        (error.cmd, error.code, error.reason.as_str()),
        (16, 1, "user offline")
    );
    assert!(
        error.data.contains(r#""userId":"nobody""#),
        "{}",
        error.data
    );
    let stats = server.handle().stats().await.unwrap();
    assert_eq!(stats.gateway_connections, 1);
    server.shutdown().await.unwrap();
}
