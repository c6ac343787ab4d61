//! A tiny client of the store node (the same frames the nodes use): route look-ups for the
//! PushClients' router changes, and reading the final store state for the liveness check.
use bytes::BytesMut;
use pushgate::store_net::{decode_frame, encode_frame, FromStore, ToStore};
use pushgate_core::route::ClientType;
use pushgate_core::store::{RouteRecord, StoreOp, StoreReply};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection to the store.
pub struct StoreClient {
    stream: TcpStream,
    inbound: BytesMut,
    next_id: u64,
}

impl StoreClient {
    pub async fn connect(addr: SocketAddr, within: Duration) -> Result<Self, String> {
        let stream = tokio::time::timeout(within, TcpStream::connect(addr))
            .await
            .map_err(|_| "store connect timed out".to_owned())?
            .map_err(|e| format!("store connect: {e}"))?;
        Ok(Self {
            stream,
            inbound: BytesMut::new(),
            next_id: 1,
        })
    }

    /// Performs one operation.
    pub async fn call(&mut self, op: StoreOp, within: Duration) -> Result<StoreReply, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = BytesMut::new();
        encode_frame(&ToStore::Request { id, op, link: 0 }, &mut out);
        let exchange = async {
            self.stream
                .write_all(&out)
                .await
                .map_err(|e| e.to_string())?;
            self.stream.flush().await.map_err(|e| e.to_string())?;
            loop {
                match decode_frame::<FromStore>(&mut self.inbound)? {
                    Some(FromStore::Reply { id: got, result }) if got == id => {
                        return result.map_err(|e| e.to_string())
                    }
                    Some(_) => continue,
                    None => {}
                }
                self.inbound.reserve(4096);
                if self
                    .stream
                    .read_buf(&mut self.inbound)
                    .await
                    .map_err(|e| e.to_string())?
                    == 0
                {
                    return Err("store closed the connection".to_owned());
                }
            }
        };
        tokio::time::timeout(within, exchange)
            .await
            .map_err(|_| "store request timed out".to_owned())?
    }

    /// The route of (user, type), or the user's best route with no type.
    pub async fn get_route(
        &mut self,
        user: &str,
        client_type: Option<ClientType>,
        within: Duration,
    ) -> Result<Option<(ClientType, RouteRecord)>, String> {
        match self
            .call(
                StoreOp::GetRoute {
                    user_id: user.to_owned(),
                    client_type,
                    asker: None,
                },
                within,
            )
            .await?
        {
            StoreReply::Route(route) => Ok(route),
            other => Err(format!("unexpected store reply {other:?}")),
        }
    }
}

/// One look-up on a fresh connection.
pub async fn lookup(
    addr: SocketAddr,
    user: &str,
    client_type: Option<ClientType>,
    within: Duration,
) -> Result<Option<(ClientType, RouteRecord)>, String> {
    let mut client = StoreClient::connect(addr, within).await?;
    client.get_route(user, client_type, within).await
}
