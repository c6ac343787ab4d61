//! The generator's client sockets, spread over loopback source addresses.
//!
//! Tens of thousands of clients connecting from 127.0.0.1 to one server port make the kernel
//! search the ephemeral port range for a free 4-tuple on every connect (`__inet_hash_connect`,
//! `__inet_check_established`: over a third of the generator's CPU in the idle point once
//! earlier runs' TIME_WAIT sockets fill the range). Phones come from many addresses; here each
//! new client takes the next of [`SOURCE_ADDRESSES`] addresses of 127.0.0.0/8 in turn, so each
//! address holds a small share of the connections. The same for every target.
use anyhow::Context;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::net::{TcpSocket, TcpStream};

/// How many loopback source addresses the clients take in turn (127.0.0.2 and up).
pub const SOURCE_ADDRESSES: u32 = 64;

/// The source address for the `n`th client (127.0.0.2 ..= 127.0.0.65).
fn source_for(n: u32) -> Ipv4Addr {
    let host = 2 + n % SOURCE_ADDRESSES;
    Ipv4Addr::new(127, 0, 0, host as u8)
}

/// Connects to `server` from the next loopback source address (a plain connect when `server`
/// is not on loopback), with TCP_NODELAY.
pub async fn connect(server: SocketAddr) -> anyhow::Result<TcpStream> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let stream = match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            let socket = TcpSocket::new_v4().context("a TCP socket")?;
            let source = source_for(NEXT.fetch_add(1, Ordering::Relaxed));
            socket
                .bind(SocketAddr::new(IpAddr::V4(source), 0))
                .with_context(|| format!("binding the client socket to {source}"))?;
            socket
                .connect(server)
                .await
                .with_context(|| format!("TCP connect to {server} from {source}"))?
        }
        _ => TcpStream::connect(server)
            .await
            .with_context(|| format!("TCP connect to {server}"))?,
    };
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_take_the_source_addresses_in_turn() {
        assert_eq!(source_for(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(
            source_for(SOURCE_ADDRESSES - 1),
            Ipv4Addr::new(127, 0, 0, 65)
        );
        assert_eq!(source_for(SOURCE_ADDRESSES), source_for(0));
    }

    #[tokio::test]
    async fn a_loopback_connect_comes_from_another_loopback_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let client = connect(server).await.unwrap();
        let (_accepted, from) = listener.accept().await.unwrap();
        assert_eq!(client.local_addr().unwrap(), from);
        assert_ne!(from.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(from.ip().is_loopback());
    }
}
