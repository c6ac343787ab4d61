//! The gateway's door: before a PushClient connection that needs a token reaches the node, its
//! first frame must be [`PUSHGATE_GATEWAY_AUTH`] carrying one of `security.gateway_tokens`.
//! A connection that sends anything else first (MPush's Java PushClient sends a push), a wrong
//! token, or nothing within `limits.gateway_auth_deadline_ms` is refused: when it sent a frame,
//! it gets MPush's ERROR answer to that frame (code 0, a reason saying what to do), which
//! MPush's PushClient reports as a failed push, and the connection is closed. A refused
//! connection never registers with the node.
use crate::access::{GatewayAccess, GatewayAdmission, PUSHGATE_GATEWAY_AUTH};
use bytes::BytesMut;
use pushgate_core::command::Command;
use pushgate_core::frame::{Flags, Frame, FrameDecoder, Packet};
use pushgate_core::message::{Body, ErrorMessage};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest the refusal's ERROR frame waits to be written.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a gateway connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the gateway token was not accepted")]
    WrongToken,
    #[error("no gateway token was sent first")]
    NoToken,
    #[error("the source address is not in security.gateway_allow")]
    NotAllowed,
    #[error("no frame within the deadline")]
    Deadline,
    #[error("the connection closed or sent no valid frame before its token")]
    Closed,
}

impl Refused {
    /// The ERROR reason sent to the PushClient.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::WrongToken => "unauthorized: gateway token not accepted",
            Refused::NoToken => {
                "unauthorized: send a gateway token first (pushgate PushClient --token) or connect from a network in security.gateway_allow"
            }
            Refused::NotAllowed => {
                "unauthorized: source address not in security.gateway_allow"
            }
            Refused::Deadline | Refused::Closed => "unauthorized",
        }
    }
}

/// True when an AUTH frame's token is acceptable on a connection admitted without one: a
/// gateway with tokens checks it, an open one ignores it.
pub fn token_ok(access: &GatewayAccess, token: &[u8]) -> bool {
    access.tokens.is_empty() || access.tokens.accepts(token)
}

/// The ERROR frame refusing `request` (the first frame the peer sent).
pub fn refusal_frame(request: &Packet, refused: &Refused) -> BytesMut {
    let message = ErrorMessage {
        cmd: request.cmd,
        code: 0,
        reason: refused.reason().to_owned(),
        data: String::new(),
    };
    let mut body = BytesMut::new();
    message.encode(&mut body);
    let packet = Packet::new(
        Command::Error.code(),
        Flags(0),
        request.session_id,
        body.freeze(),
    );
    let mut out = BytesMut::with_capacity(packet.encoded_len());
    packet.encode(&mut out);
    out
}

/// Lets the connection in or refuses it. On success returns the bytes read after the token
/// frame (the start of the first push), to be handed on.
pub async fn admit<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    admission: GatewayAdmission,
    access: &GatewayAccess,
    decoder: &FrameDecoder,
    deadline: Duration,
) -> Result<BytesMut, Refused> {
    let mut inbound = BytesMut::new();
    if admission == GatewayAdmission::Open {
        return Ok(inbound);
    }
    let first = tokio::time::timeout(deadline, first_packet(stream, &mut inbound, decoder))
        .await
        .map_err(|_| Refused::Deadline)??;
    let refused = match admission {
        GatewayAdmission::Refused => Refused::NotAllowed,
        _ if first.cmd != PUSHGATE_GATEWAY_AUTH => Refused::NoToken,
        _ if access.tokens.accepts(&first.body) => return Ok(inbound),
        _ => Refused::WrongToken,
    };
    refuse(stream, &first, &refused).await;
    Err(refused)
}

/// Answers `request` with the refusal's ERROR and closes the connection. What the peer sent
/// meanwhile is read and dropped (at most [`MAX_DRAIN_BYTES`], within
/// [`REFUSAL_WRITE_TIMEOUT`]) before the socket closes: closing with unread bytes would reset
/// the connection, and the reset could destroy the ERROR before the peer reads it.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &Packet,
    refused: &Refused,
) {
    let out = refusal_frame(request, refused);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        stream.shutdown().await?;
        let mut drained = 0;
        let mut buf = [0u8; 4096];
        while drained < MAX_DRAIN_BYTES {
            match stream.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// Most bytes read and dropped from a refused connection before it is closed.
const MAX_DRAIN_BYTES: usize = 256 * 1024;

/// Reads until the first packet (heartbeat bytes skipped).
async fn first_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    inbound: &mut BytesMut,
    decoder: &FrameDecoder,
) -> Result<Packet, Refused> {
    loop {
        match decoder.decode(inbound) {
            Ok(Some(Frame::Packet(packet))) => return Ok(packet),
            Ok(Some(Frame::Heartbeat)) => continue,
            Ok(None) => {}
            Err(_) => return Err(Refused::Closed),
        }
        inbound.reserve(4096);
        match stream.read_buf(inbound).await {
            Ok(n) if n > 0 => {}
            _ => return Err(Refused::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{AllowList, TokenSet};

    fn access() -> GatewayAccess {
        GatewayAccess {
            tokens: TokenSet::new(&["the-right-token-0123"]),
            allow: AllowList::default(),
        }
    }

    fn frame(cmd: u8, sid: i32, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        Packet::new(cmd, Flags(0), sid, bytes::Bytes::copy_from_slice(body)).encode(&mut out);
        out.to_vec()
    }

    async fn run(
        admission: GatewayAdmission,
        sent: Vec<u8>,
    ) -> (Result<BytesMut, Refused>, Vec<u8>) {
        let (mut server, mut client) = tokio::io::duplex(64 * 1024);
        client.write_all(&sent).await.unwrap();
        let decoder = FrameDecoder::new(10 * 1024);
        let result = admit(
            &mut server,
            admission,
            &access(),
            &decoder,
            Duration::from_millis(200),
        )
        .await;
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        (result, answer)
    }

    fn error_of(answer: &[u8]) -> (i32, ErrorMessage) {
        let mut buf = BytesMut::from(answer);
        let Some(Frame::Packet(packet)) = FrameDecoder::new(1 << 20).decode(&mut buf).unwrap()
        else {
            panic!("an ERROR frame expected, got {answer:?}")
        };
        assert_eq!(packet.cmd, Command::Error.code());
        (
            packet.session_id,
            ErrorMessage::decode(&packet.body).unwrap(),
        )
    }

    #[tokio::test]
    async fn a_right_token_lets_the_following_bytes_through() {
        let mut sent = frame(PUSHGATE_GATEWAY_AUTH, 0, b"the-right-token-0123");
        let push = frame(Command::GatewayPush.code(), 1, b"xyz");
        sent.extend_from_slice(&push);
        let (result, answer) = run(GatewayAdmission::TokenFirst, sent).await;
        assert_eq!(&result.unwrap()[..], &push[..], "the push is handed on");
        assert!(answer.is_empty());
    }

    #[tokio::test]
    async fn a_wrong_or_missing_token_gets_an_error_for_its_first_frame() {
        let (result, answer) = run(
            GatewayAdmission::TokenFirst,
            frame(PUSHGATE_GATEWAY_AUTH, 0, b"a-wrong-token-012345"),
        )
        .await;
        assert_eq!(result.unwrap_err(), Refused::WrongToken);
        let (sid, error) = error_of(&answer);
        assert_eq!((sid, error.cmd, error.code), (0, PUSHGATE_GATEWAY_AUTH, 0));
        assert!(error.reason.contains("not accepted"), "{}", error.reason);

        let (result, answer) = run(
            GatewayAdmission::TokenFirst,
            frame(Command::GatewayPush.code(), 7, b"push"),
        )
        .await;
        assert_eq!(result.unwrap_err(), Refused::NoToken);
        let (sid, error) = error_of(&answer);
        assert_eq!((sid, error.cmd), (7, Command::GatewayPush.code()));
        assert!(error.reason.contains("gateway_allow"), "{}", error.reason);

        let (result, _) = run(
            GatewayAdmission::Refused,
            frame(PUSHGATE_GATEWAY_AUTH, 0, b"the-right-token-0123"),
        )
        .await;
        assert_eq!(result.unwrap_err(), Refused::NotAllowed);
    }

    #[tokio::test]
    async fn silence_and_garbage_are_refused_without_an_answer() {
        let (result, answer) = run(GatewayAdmission::TokenFirst, Vec::new()).await;
        assert!(matches!(
            result.unwrap_err(),
            Refused::Closed | Refused::Deadline
        ));
        assert!(answer.is_empty());
        let (result, _) = run(
            GatewayAdmission::TokenFirst,
            vec![0x7f, 0xff, 0xff, 0xff, 1],
        )
        .await;
        assert_eq!(result.unwrap_err(), Refused::Closed);
    }
}
