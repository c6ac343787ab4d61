//! Which Redis deployment the store talks to, parsed from `store.redis_url`.
//!
//! Three URL forms (passwords go in the user-info part, as in `redis://:secret@host:6379`):
//! - `redis://HOST:PORT[/DB]` — one Redis server (standalone);
//! - `redis+sentinel://SENTINEL:PORT[,SENTINEL:PORT…]/SERVICE[/DB]` — the master that the
//!   Sentinels name for SERVICE, found again after every reconnect (so a failover is followed);
//!   the user info is used for the master, not for the Sentinels;
//! - `redis+cluster://NODE:PORT[,NODE:PORT…]` — a Redis Cluster, reached through any of the
//!   seed nodes.
//!
//! The URL is checked when the configuration is loaded: a bad one is a configuration error,
//! never a panic at run time.
use std::fmt;

/// A parsed `store.redis_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: the URL as the `redis` crate takes it.
    Standalone { url: String },
    /// Sentinels (as `redis://HOST:PORT` URLs), the service name, and a `redis://` URL carrying
    /// the master's user info and database (its host part is a placeholder).
    Sentinel {
        sentinels: Vec<String>,
        service: String,
        master_settings: String,
    },
    /// Cluster seed nodes as `redis://[USERINFO@]HOST:PORT` URLs.
    Cluster { nodes: Vec<String> },
}

/// Why a Redis URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store.redis_url {url:?}: {reason} (forms: redis://HOST:PORT[/DB], redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB], redis+cluster://HOST:PORT[,HOST:PORT…])")]
pub struct BadRedisUrl {
    /// The URL with any password replaced by `***`.
    pub url: String,
    pub reason: String,
}

impl RedisTarget {
    /// Parses one of the three URL forms.
    pub fn parse(url: &str) -> Result<Self, BadRedisUrl> {
        let url = url.trim();
        let bad = |reason: &str| BadRedisUrl {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad("no scheme (expected redis://, redis+sentinel:// or redis+cluster://)")
        })?;
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let nodes = split_nodes(hosts).map_err(|reason| bad(&reason))?;
        let node_url = |node: &str, db: &str| -> Result<String, BadRedisUrl> {
            let text = match userinfo {
                Some(userinfo) => format!("redis://{userinfo}@{node}{db}"),
                None => format!("redis://{node}{db}"),
            };
            check_url(&text).map_err(|reason| bad(&reason))?;
            Ok(text)
        };
        match scheme {
            "redis" => {
                if nodes.len() != 1 {
                    return Err(bad(
                        "redis:// names one server (use redis+cluster:// or redis+sentinel:// for several)",
                    ));
                }
                check_url(url).map_err(|reason| bad(&reason))?;
                Ok(RedisTarget::Standalone {
                    url: url.to_owned(),
                })
            }
            "redis+cluster" => {
                if !path.is_empty() {
                    return Err(bad("a Redis Cluster has no database number"));
                }
                let nodes = nodes
                    .iter()
                    .map(|node| node_url(node, ""))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RedisTarget::Cluster { nodes })
            }
            "redis+sentinel" => {
                let (service, db) = match path.split_once('/') {
                    Some((service, db)) => (service, db),
                    None => (path, ""),
                };
                if service.is_empty() {
                    return Err(bad("the Sentinel service name is missing (…/SERVICE)"));
                }
                if !db.is_empty() && db.parse::<u32>().is_err() {
                    return Err(bad("the database must be a number"));
                }
                let sentinels = nodes
                    .iter()
                    .map(|node| {
                        let text = format!("redis://{node}");
                        check_url(&text).map_err(|reason| bad(&reason))?;
                        Ok(text)
                    })
                    .collect::<Result<Vec<_>, BadRedisUrl>>()?;
                let db = if db.is_empty() {
                    String::new()
                } else {
                    format!("/{db}")
                };
                let master_settings = node_url("127.0.0.1:6379", &db)?;
                Ok(RedisTarget::Sentinel {
                    sentinels,
                    service: service.to_owned(),
                    master_settings,
                })
            }
            other => Err(bad(&format!("unknown scheme {other:?}"))),
        }
    }
}

impl fmt::Display for RedisTarget {
    /// The target without passwords, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Standalone { url } => write!(f, "{}", redact(url)),
            RedisTarget::Sentinel {
                sentinels, service, ..
            } => write!(f, "sentinel {} service {service}", sentinels.join(",")),
            RedisTarget::Cluster { nodes } => {
                let nodes: Vec<String> = nodes.iter().map(|n| redact(n)).collect();
                write!(f, "cluster {}", nodes.join(","))
            }
        }
    }
}

/// `HOST:PORT[,HOST:PORT…]`, each with a port.
fn split_nodes(hosts: &str) -> Result<Vec<&str>, String> {
    if hosts.is_empty() {
        return Err("no host".into());
    }
    hosts
        .split(',')
        .map(|node| {
            let (host, port) = node
                .rsplit_once(':')
                .ok_or_else(|| format!("{node:?} has no port"))?;
            if host.is_empty() {
                return Err(format!("{node:?} has no host"));
            }
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{node:?}: bad port"))?;
            Ok(node)
        })
        .collect()
}

/// Whether the `redis` crate accepts `url`.
fn check_url(url: &str) -> Result<(), String> {
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `url` with the password of its user info replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{hosts}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_parse() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379").unwrap(),
            RedisTarget::Standalone {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001").unwrap(),
            RedisTarget::Cluster {
                nodes: vec![
                    "redis://:pw@10.0.0.1:7000".into(),
                    "redis://:pw@10.0.0.2:7001".into()
                ]
            }
        );
        assert_eq!(
            RedisTarget::parse("redis+sentinel://h1:26379,h2:26380/mymaster/2").unwrap(),
            RedisTarget::Sentinel {
                sentinels: vec!["redis://h1:26379".into(), "redis://h2:26380".into()],
                service: "mymaster".into(),
                master_settings: "redis://127.0.0.1:6379/2".into(),
            }
        );
    }

    #[test]
    fn bad_urls_are_errors_that_hide_the_password() {
        for url in [
            "",
            "127.0.0.1:6379",
            "http://127.0.0.1:6379",
            "redis://",
            "redis://host",
            "redis://host:0",
            "redis://host:99999",
            "redis://a:1,b:2",
            "redis+cluster://a:1/3",
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/master/x",
        ] {
            assert!(RedisTarget::parse(url).is_err(), "{url:?} must be refused");
        }
        let error = RedisTarget::parse("redis://:secret@host").unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
        assert_eq!(
            RedisTarget::parse("redis://:secret@h:1")
                .unwrap()
                .to_string(),
            "redis://:***@h:1"
        );
    }
}
