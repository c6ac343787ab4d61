//! Who may use the business ports: the admin API's bearer tokens, the gateway's tokens (sent by
//! pushgate's PushClient as its first frame, [`PUSHGATE_GATEWAY_AUTH`]) and the gateway's
//! allow-list of source networks (for MPush's Java PushClient, which sends no token), and the
//! check that refuses to expose a business port beyond loopback without them.
//!
//! Tokens are compared in constant time: each candidate and each configured token is hashed
//! with SHA-256 and the digests compared with `subtle`, so neither the content nor the length
//! of a configured token shows in the time an answer takes. Several tokens may be configured at
//! once, so a new one can be rolled out before the old one is removed.
pub use pushgate_core::command::PUSHGATE_GATEWAY_AUTH;

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use subtle::ConstantTimeEq;

/// Longest token accepted (a longer one is refused without comparing).
pub const MAX_TOKEN_BYTES: usize = 512;

/// Shortest token a configuration may set: shorter ones are guessable.
pub const MIN_TOKEN_BYTES: usize = 16;

/// A set of accepted tokens, kept as SHA-256 digests.
#[derive(Clone, Default)]
pub struct TokenSet {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens)", self.digests.len())
    }
}

impl TokenSet {
    /// The set of `tokens` (blank entries are ignored).
    pub fn new<S: AsRef<str>>(tokens: &[S]) -> Self {
        Self {
            digests: tokens
                .iter()
                .map(|t| t.as_ref().trim())
                .filter(|t| !t.is_empty())
                .map(|t| digest(t.as_bytes()))
                .collect(),
        }
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// True when `candidate` is one of the tokens. Every configured token is compared (no early
    /// exit), each in constant time.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        if candidate.len() > MAX_TOKEN_BYTES {
            return false;
        }
        let candidate = digest(candidate);
        let mut found = subtle::Choice::from(0);
        for token in &self.digests {
            found |= token.ct_eq(&candidate);
        }
        found.into()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Source networks admitted to the gateway without a token.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    nets: Vec<IpNet>,
}

impl AllowList {
    /// Parses CIDR networks (`10.0.0.0/8`, `::1/128`) or single addresses (`192.0.2.7`).
    pub fn parse<S: AsRef<str>>(entries: &[S], key: &str) -> anyhow::Result<Self> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let text = entry.as_ref().trim();
            if text.is_empty() {
                continue;
            }
            let net = match text.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => anyhow::bail!(
                        "{key}: {text:?} is neither a network (10.0.0.0/8) nor an address"
                    ),
                },
            };
            nets.push(net.trunc());
        }
        Ok(Self { nets })
    }

    /// True when no network is listed.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// True when `ip` is in one of the networks (an IPv4-mapped IPv6 address counts as its
    /// IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// How a gateway connection from some address is let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayAdmission {
    /// Admitted as it is (open gateway, or an allow-listed source). A token frame it sends
    /// anyway must still be valid.
    Open,
    /// Its first frame must be [`PUSHGATE_GATEWAY_AUTH`] with a valid token.
    TokenFirst,
    /// Refused: the gateway has an allow-list and no tokens, and the source is not listed.
    Refused,
}

/// The gateway's access rules.
#[derive(Debug, Clone, Default)]
pub struct GatewayAccess {
    pub tokens: TokenSet,
    pub allow: AllowList,
}

impl GatewayAccess {
    /// How a connection from `peer` is let in.
    pub fn admission(&self, peer: IpAddr) -> GatewayAdmission {
        if self.tokens.is_empty() && self.allow.is_empty() {
            return GatewayAdmission::Open;
        }
        if self.allow.contains(peer) {
            return GatewayAdmission::Open;
        }
        if self.tokens.is_empty() {
            GatewayAdmission::Refused
        } else {
            GatewayAdmission::TokenFirst
        }
    }

    /// True when some rule guards the gateway.
    pub fn is_guarded(&self) -> bool {
        !self.tokens.is_empty() || !self.allow.is_empty()
    }
}

/// True when a listener bound on `host` is reachable from loopback only (`127.0.0.0/8`, `::1`,
/// `localhost`). Any other name counts as reachable from beyond.
pub fn is_loopback_bind(host: &str) -> bool {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>()
        .map(|ip| canonical(ip).is_loopback())
        .unwrap_or(false)
}

/// The bearer token of an `Authorization` header value (`Bearer <token>`, scheme matched
/// case-insensitively).
pub fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().as_bytes())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_accept_each_configured_token_and_nothing_else() {
        let set = TokenSet::new(&["old-token-0123456789", " new-token-0123456789 ", ""]);
        assert!(set.accepts(b"old-token-0123456789"));
        assert!(
            set.accepts(b"new-token-0123456789"),
            "trimmed when configured"
        );
        assert!(!set.accepts(b"old-token-012345678"));
        assert!(!set.accepts(b""));
        assert!(!set.accepts(&[b'x'; MAX_TOKEN_BYTES + 1]));
        assert!(TokenSet::new::<&str>(&[]).is_empty());
        assert_eq!(format!("{set:?}"), "TokenSet(2 tokens)", "never printed");
    }

    #[test]
    fn allow_lists_take_networks_and_addresses() {
        let allow = AllowList::parse(&["10.1.0.0/16", "192.0.2.7", "::1"], "k").unwrap();
        assert!(allow.contains("10.1.200.3".parse().unwrap()));
        assert!(!allow.contains("10.2.0.1".parse().unwrap()));
        assert!(allow.contains("192.0.2.7".parse().unwrap()));
        assert!(allow.contains("::ffff:192.0.2.7".parse().unwrap()));
        assert!(allow.contains("::1".parse().unwrap()));
        let error = AllowList::parse(&["10.0.0.0/33"], "security.gateway_allow").unwrap_err();
        assert!(
            error.to_string().contains("security.gateway_allow"),
            "{error}"
        );
    }

    #[test]
    fn gateway_admission_follows_tokens_and_allow_list() {
        let open = GatewayAccess::default();
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let listed: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(open.admission(peer), GatewayAdmission::Open);
        let allow = AllowList::parse(&["10.0.0.0/8"], "k").unwrap();
        let only_allow = GatewayAccess {
            tokens: TokenSet::default(),
            allow: allow.clone(),
        };
        assert_eq!(only_allow.admission(listed), GatewayAdmission::Open);
        assert_eq!(only_allow.admission(peer), GatewayAdmission::Refused);
        let both = GatewayAccess {
            tokens: TokenSet::new(&["a-long-enough-token"]),
            allow,
        };
        assert_eq!(both.admission(listed), GatewayAdmission::Open);
        assert_eq!(both.admission(peer), GatewayAdmission::TokenFirst);
    }

    #[test]
    fn loopback_binds_and_bearer_headers() {
        for host in ["127.0.0.1", "127.3.0.1", "::1", "[::1]", "localhost"] {
            assert!(is_loopback_bind(host), "{host}");
        }
        for host in ["0.0.0.0", "::", "10.0.0.1", "example.com"] {
            assert!(!is_loopback_bind(host), "{host}");
        }
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
    }
}
