//! Two nodes sharing one store node, in process over loopback: a push through the wrong node
//! is a router change, the right node delivers, and a second device on the other node kicks
//! the first through the store's kick notices.
use pushgate::client::{DeviceClient, DeviceEvent, DeviceOptions, PushClient, SinglePushRequest};
use pushgate::config::Config;
use pushgate::core::PushStatus;
use std::time::Duration;

fn node_config(store: std::net::SocketAddr) -> Config {
    let mut config = Config::default();
    config.net.connect_bind = "127.0.0.1".into();
    config.net.connect_port = 0;
    config.net.gateway_port = 0;
    config.net.admin_port = 0;
    config.store.address = store.to_string();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_routes_and_kick_through_the_store() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store_addr = listener.local_addr().unwrap();
    tokio::spawn(pushgate::store_net::serve_store(listener));
    let a = pushgate::server::start(&node_config(store_addr))
        .await
        .unwrap();
    let b = pushgate::server::start(&node_config(store_addr))
        .await
        .unwrap();
    // The store links connect in the background; a route written before its link is up is
    // written again when it comes up. The pause only keeps this test's steps in order.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let phone = DeviceClient::connect(a.connect_addr, DeviceOptions::new("dev-1"))
        .await
        .unwrap();
    phone.bind("carol", &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let via_b = PushClient::connect(b.gateway_addr).await.unwrap();
    let result = via_b
        .push(SinglePushRequest::new("carol", "hello"))
        .await
        .unwrap();
    assert_eq!(result.status, PushStatus::RouterChange, "{result:?}");
    let via_a = PushClient::connect(a.gateway_addr).await.unwrap();
    let result = via_a
        .push(SinglePushRequest::new("carol", "hello"))
        .await
        .unwrap();
    assert_eq!(result.status, PushStatus::Success, "{result:?}");
    match phone
        .next_event_within(Duration::from_secs(2))
        .await
        .unwrap()
    {
        DeviceEvent::Push { content, .. } => assert_eq!(&content[..], b"hello"),
        other => panic!("expected the push, got {other:?}"),
    }

    // The same user on a second phone of the same type, on node B: node A kicks the first.
    let second = DeviceClient::connect(b.connect_addr, DeviceOptions::new("dev-2"))
        .await
        .unwrap();
    second.bind("carol", &[]).await.unwrap();
    match phone
        .next_event_within(Duration::from_secs(2))
        .await
        .unwrap()
    {
        DeviceEvent::Kick { device_id, user_id } => {
            assert_eq!((device_id.as_str(), user_id.as_str()), ("dev-1", "carol"))
        }
        other => panic!("expected a kick, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let result = via_a
        .push(SinglePushRequest::new("carol", "where?"))
        .await
        .unwrap();
    assert_eq!(
        result.status,
        PushStatus::RouterChange,
        "A no longer holds carol: {result:?}"
    );
    let result = via_b
        .push(SinglePushRequest::new("carol", "here"))
        .await
        .unwrap();
    assert_eq!(result.status, PushStatus::Success, "{result:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
