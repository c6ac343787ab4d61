//! Redis's own count of the commands it served (`INFO commandstats`), read before and after a
//! point: the store round trips a bind or a push cost, counted by Redis rather than by the
//! clients (nodes and PushClient together).
use anyhow::Context;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Calls per command name (lower case, e.g. `hgetall`, `evalsha`).
pub type Calls = BTreeMap<String, u64>;

/// Reads `INFO commandstats` from the Redis at `addr` (`host:port`).
pub fn snapshot(addr: &str) -> anyhow::Result<Calls> {
    let mut stream =
        TcpStream::connect(addr).with_context(|| format!("--redis-stats: connecting {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"INFO commandstats\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let len: usize = header
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("--redis-stats: unexpected reply {header:?}"))?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(parse(&String::from_utf8_lossy(&body)))
}

/// `cmdstat_hgetall:calls=12,usec=…` lines → calls per command.
fn parse(text: &str) -> Calls {
    let mut out = Calls::new();
    for line in text.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls = fields
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|n| n.parse().ok());
        if let Some(calls) = calls {
            out.insert(name.to_owned(), calls);
        }
    }
    out
}

/// What `after` adds to `before`, without the `INFO` reads themselves; zeros left out.
pub fn diff(before: &Calls, after: &Calls) -> Calls {
    after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, n)| {
            (
                name.clone(),
                n.saturating_sub(*before.get(name).unwrap_or(&0)),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_diffs_commandstats() {
        let before = parse("# Commandstats\r\ncmdstat_hgetall:calls=2,usec=5,usec_per_call=2.5\r\ncmdstat_info:calls=1,usec=1\r\n");
        let after = parse("# Commandstats\r\ncmdstat_hgetall:calls=7,usec=9\r\ncmdstat_evalsha:calls=3,usec=4\r\ncmdstat_info:calls=2,usec=1\r\n");
        let d = diff(&before, &after);
        assert_eq!(d.get("hgetall"), Some(&5));
        assert_eq!(d.get("evalsha"), Some(&3));
        assert!(!d.contains_key("info"));
    }
}
