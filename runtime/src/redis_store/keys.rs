//! MPush's Redis key and channel names (reference §12.1, §12.4, §12.5), in one place so every
//! command of the Redis store and every test names them the same way.
//!
//! - `mp:ur:{userId}`: hash of a user's routes, field = client type as decimal text;
//! - `mp:rs:{sessionId}`: a reusable session in MPush's text form, with a TTL;
//! - `mp:oul:{publicIp}`: sorted set of the users online on a node's host;
//! - `mp:pt{taskId}` (no colon): a broadcast task's control hash (`q`, `c`, `sc`);
//! - `{taskId}:sui`: list of the users a task reached (no prefix);
//! - `/mpush/kick/{host}:{port}`: a node's kick channel; `/mpush/online/`, `/mpush/offline/`:
//!   user status events.
use pushgate_core::route::ClientType;
use pushgate_core::NodeAddr;

/// The hash of a user's routes.
pub fn user_routes(user_id: &str) -> String {
    format!("mp:ur:{user_id}")
}

/// The field of a client type in [`user_routes`]: MPush's code as decimal text.
pub fn client_type_field(client_type: ClientType) -> String {
    client_type.code().to_string()
}

/// A reusable session.
pub fn session(session_id: &str) -> String {
    format!("mp:rs:{session_id}")
}

/// The users online on a host.
pub fn online_users(host: &str) -> String {
    format!("mp:oul:{host}")
}

/// A broadcast task's control hash.
pub fn task(task_id: &str) -> String {
    format!("mp:pt{task_id}")
}

/// The users a broadcast task reached.
pub fn task_users(task_id: &str) -> String {
    format!("{task_id}:sui")
}

/// Fields of [`task`].
pub const TASK_QPS: &str = "q";
pub const TASK_CANCEL: &str = "c";
pub const TASK_SENT: &str = "sc";

/// The kick channel of a node (its gateway host and port).
pub fn kick_channel(node: &NodeAddr) -> String {
    format!("/mpush/kick/{}:{}", node.host, node.port)
}

/// Where a user id is published when one of its routes comes online.
pub const ONLINE_CHANNEL: &str = "/mpush/online/";
/// Where a user id is published when one of its routes goes offline.
pub const OFFLINE_CHANNEL: &str = "/mpush/offline/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_mpush() {
        assert_eq!(user_routes("user-1"), "mp:ur:user-1");
        assert_eq!(client_type_field(ClientType::Mobile), "1");
        assert_eq!(client_type_field(ClientType::Unknown), "-1");
        assert_eq!(
            session("9995d445b631fc0465c369408c80dd4e"),
            "mp:rs:9995d445b631fc0465c369408c80dd4e"
        );
        assert_eq!(online_users("127.0.0.1"), "mp:oul:127.0.0.1");
        assert_eq!(task("task-1"), "mp:pttask-1");
        assert_eq!(task_users("task-1"), "task-1:sui");
        assert_eq!(
            kick_channel(&NodeAddr::new("127.0.0.1", 26001)),
            "/mpush/kick/127.0.0.1:26001"
        );
    }
}
