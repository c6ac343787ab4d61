//! MPush command codes (reference §4): the `cmd` byte of every packet header.
//!
//! The frame layer keeps the raw byte, because a server must be able to answer
//! `ERROR(cmd, 101 "unsupported command")` for a code it does not know; [`Command::try_from`]
//! turns it into this enum or an [`UnknownCommand`] error.

/// A known command code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Command {
    Heartbeat = 1,
    Handshake = 2,
    Login = 3,
    Logout = 4,
    Bind = 5,
    Unbind = 6,
    FastConnect = 7,
    Pause = 8,
    Resume = 9,
    Error = 10,
    Ok = 11,
    HttpProxy = 12,
    Kick = 13,
    GatewayKick = 14,
    Push = 15,
    GatewayPush = 16,
    Notification = 17,
    GatewayNotification = 18,
    Chat = 19,
    GatewayChat = 20,
    Group = 21,
    GatewayGroup = 22,
    Ack = 23,
    Nack = 24,
}

/// pushgate's gateway extension: the token a PushClient sends as its first frame on a gateway
/// connection, before any push (body: the token's UTF-8 bytes, sessionId 0, no flags). MPush
/// has no such command, so MPush's Java PushClient never sends it (the gateway admits it by its
/// source address instead), and MPush's gateway answers it with ERROR 101 and goes on.
pub const PUSHGATE_GATEWAY_AUTH: u8 = 0x70;

/// A `cmd` byte that names no MPush command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown command code {0}")]
pub struct UnknownCommand(pub u8);

impl Command {
    /// Every command, in code order.
    pub const ALL: [Command; 24] = [
        Command::Heartbeat,
        Command::Handshake,
        Command::Login,
        Command::Logout,
        Command::Bind,
        Command::Unbind,
        Command::FastConnect,
        Command::Pause,
        Command::Resume,
        Command::Error,
        Command::Ok,
        Command::HttpProxy,
        Command::Kick,
        Command::GatewayKick,
        Command::Push,
        Command::GatewayPush,
        Command::Notification,
        Command::GatewayNotification,
        Command::Chat,
        Command::GatewayChat,
        Command::Group,
        Command::GatewayGroup,
        Command::Ack,
        Command::Nack,
    ];

    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// MPush's upper-case name, as logs and the reference spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Command::Heartbeat => "HEARTBEAT",
            Command::Handshake => "HANDSHAKE",
            Command::Login => "LOGIN",
            Command::Logout => "LOGOUT",
            Command::Bind => "BIND",
            Command::Unbind => "UNBIND",
            Command::FastConnect => "FAST_CONNECT",
            Command::Pause => "PAUSE",
            Command::Resume => "RESUME",
            Command::Error => "ERROR",
            Command::Ok => "OK",
            Command::HttpProxy => "HTTP_PROXY",
            Command::Kick => "KICK",
            Command::GatewayKick => "GATEWAY_KICK",
            Command::Push => "PUSH",
            Command::GatewayPush => "GATEWAY_PUSH",
            Command::Notification => "NOTIFICATION",
            Command::GatewayNotification => "GATEWAY_NOTIFICATION",
            Command::Chat => "CHAT",
            Command::GatewayChat => "GATEWAY_CHAT",
            Command::Group => "GROUP",
            Command::GatewayGroup => "GATEWAY_GROUP",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
        }
    }
}

impl TryFrom<u8> for Command {
    type Error = UnknownCommand;

    fn try_from(code: u8) -> Result<Self, UnknownCommand> {
        match code {
            1..=24 => Ok(Command::ALL[usize::from(code) - 1]),
            other => Err(UnknownCommand(other)),
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknowns_are_errors() {
        for (i, cmd) in Command::ALL.iter().enumerate() {
            assert_eq!(usize::from(cmd.code()), i + 1);
            assert_eq!(Command::try_from(cmd.code()), Ok(*cmd));
        }
        assert_eq!(Command::try_from(0), Err(UnknownCommand(0)));
        assert_eq!(Command::try_from(25), Err(UnknownCommand(25)));
        assert_eq!(Command::try_from(0xDF), Err(UnknownCommand(0xDF)));
        assert!(
            Command::try_from(PUSHGATE_GATEWAY_AUTH).is_err(),
            "not an MPush code"
        );
    }
}
