//! MPush's alloc answer (reference §17): the client SDKs ask an alloc URL where to connect and
//! get `text/plain` `host:port,host:port,…`, the connection servers ordered by online users,
//! least loaded first; they try the addresses in that order. pushgate answers it from its node
//! registry ([`crate::cluster::ClusterNode::alloc`]), on the admin API and, with
//! `net.alloc_port`, on a port of its own (`GET /`, as MPush's alloc service), so a team can
//! drop that service. An answer is reused for [`crate::cluster::ALLOC_REUSE`] (1 s).
use serde::Serialize;

/// One connection server and its load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllocEntry {
    /// `host:port` phones dial.
    pub addr: String,
    /// Users online there (bound routes for pushgate nodes, `ZCARD mp:oul:{host}` for others).
    pub online: u64,
}

/// MPush's alloc text: the addresses, least loaded first (ties by address), without
/// duplicates, joined by commas.
pub fn format(mut entries: Vec<AllocEntry>) -> String {
    entries.sort_by(|a, b| (a.online, &a.addr).cmp(&(b.online, &b.addr)));
    let mut seen = std::collections::HashSet::new();
    entries
        .into_iter()
        .filter(|e| seen.insert(e.addr.clone()))
        .map(|e| e.addr)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: &str, online: u64) -> AllocEntry {
        AllocEntry {
            addr: addr.into(),
            online,
        }
    }

    #[test]
    fn least_loaded_first_in_mpush_text() {
        let text = format(vec![
            entry("10.0.0.1:3000", 7),
            entry("10.0.0.2:3000", 0),
            entry("10.0.0.3:3000", 3),
            entry("10.0.0.0:3000", 3),
            entry("10.0.0.2:3000", 9),
        ]);
        assert_eq!(
            text,
            "10.0.0.2:3000,10.0.0.0:3000,10.0.0.3:3000,10.0.0.1:3000"
        );
        assert_eq!(format(Vec::new()), "");
    }
}
