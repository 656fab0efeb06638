//! The `redis` section: where the shared Redis is (one server, a cluster,
//! or a master found through sentinels) and how each call is bounded.
//! Every key is read at start: a reload keeps the running store.

use std::time::Duration;

use serde::{Serialize, Serializer};

use super::reader::{config_words, Problems, Table};
use super::{as_duration, positive, Env};

/// Shared Redis for revocations, rate-limit windows and the cache.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedisConfig {
    /// Where Redis is: `mode` and its addresses.
    #[serde(flatten)]
    pub topology: RedisTopology,
    /// Connections kept (default 16); in cluster mode each one reaches
    /// every master.
    pub pool_size: u32,
    /// Bound on each Redis call, so a slow Redis costs milliseconds (default 50ms).
    #[serde(serialize_with = "as_duration")]
    pub timeout: Duration,
}

impl RedisConfig {
    /// One Redis at `url`, with the default pool and timeout (the
    /// `REDIS_URL` environment variable alone).
    pub fn standalone(url: String) -> Self {
        RedisConfig {
            topology: RedisTopology::Standalone { url },
            pool_size: 16,
            timeout: Duration::from_millis(50),
        }
    }
}

/// How the sidecar reaches Redis (`redis.mode`). A password in any URL is
/// never shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum RedisTopology {
    /// One server at `url` (`redis://host:port/db`, env `REDIS_URL`).
    Standalone {
        /// The server.
        #[serde(serialize_with = "redacted_url")]
        url: String,
    },
    /// A Redis Cluster: the client learns the slot map from any of the
    /// seed `urls` and follows MOVED, ASK and topology changes.
    Cluster {
        /// Seed nodes; one reachable node is enough to start.
        #[serde(serialize_with = "redacted_urls")]
        urls: Vec<String>,
    },
    /// A master found by asking sentinels, followed through failovers.
    Sentinel {
        /// The sentinels and the name they know the master by.
        sentinel: SentinelConfig,
    },
}

/// `redis.sentinel`: the sentinels to ask and the master's name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the master under.
    pub master_name: String,
    /// The sentinels (`redis://host:26379`); the first that answers is used.
    #[serde(serialize_with = "redacted_urls")]
    pub urls: Vec<String>,
}

/// `redis.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Standalone,
    Cluster,
    Sentinel,
}

config_words!(Mode {
    Standalone => "standalone",
    Cluster => "cluster",
    Sentinel => "sentinel",
});

/// Reads `redis`; `REDIS_URL` overrides the URL of a standalone Redis.
pub(super) fn read_redis(
    t: &mut Table,
    env: Env<'_>,
    problems: &mut Problems,
) -> Option<RedisConfig> {
    let mode = t.get("mode", problems);
    // Every address key is read whatever the mode, so none is "unknown":
    // one that does not belong to the mode is refused by name below.
    let url = t.get::<String>("url", problems);
    let urls = t.list::<String>("urls", problems);
    let sentinel = t.section("sentinel", &None, problems, |t, _, problems| {
        Some(read_sentinel(t, problems))
    });
    let timeout = t.get_or("timeout", Duration::from_millis(50), problems);
    positive(timeout, &t.path_of("timeout"), problems);
    let pool_size = t.get_or("pool_size", 16, problems);
    let mode = mode.unwrap_or(Mode::Standalone);
    if mode != Mode::Cluster && urls.is_some() {
        problems.add(
            &t.path_of("urls"),
            "lists cluster seed nodes: set mode: cluster, or use url for one server",
        );
    }
    if mode != Mode::Sentinel && sentinel.is_some() {
        problems.add(
            &t.path_of("sentinel"),
            "is read with mode: sentinel only: set it, or remove the section",
        );
    }
    if mode != Mode::Standalone && url.is_some() {
        let instead = match mode {
            Mode::Cluster => "list the seed nodes under urls",
            _ => "list the sentinels under sentinel.urls",
        };
        problems.add(
            &t.path_of("url"),
            format!(
                "names one server, which mode {} does not use: {instead}",
                mode.as_str()
            ),
        );
    }
    let topology = match mode {
        Mode::Standalone => {
            let url = env("REDIS_URL").or(url);
            let url = match url {
                Some(url) => checked_url(url, &t.path_of("url"), problems),
                None => {
                    problems.add(
                        &t.path_of("url"),
                        "required when redis is configured (or set REDIS_URL)",
                    );
                    None
                }
            };
            RedisTopology::Standalone { url: url? }
        }
        Mode::Cluster => RedisTopology::Cluster {
            urls: checked_urls(urls, &t.path_of("urls"), "the seed nodes", problems)?,
        },
        Mode::Sentinel => match sentinel {
            Some(sentinel) => RedisTopology::Sentinel {
                sentinel: sentinel?,
            },
            None => {
                problems.add(
                    &t.path_of("sentinel"),
                    "required with mode: sentinel: { master_name, urls }",
                );
                return None;
            }
        },
    };
    Some(RedisConfig {
        topology,
        pool_size,
        timeout,
    })
}

/// Reads `redis.sentinel`; `None` (with the problems recorded) when a part is missing or bad.
fn read_sentinel(t: &mut Table, problems: &mut Problems) -> Option<SentinelConfig> {
    let master_name = match t.get::<String>("master_name", problems) {
        Some(name) if !name.is_empty() => Some(name),
        Some(_) => {
            problems.add(&t.path_of("master_name"), "must not be empty");
            None
        }
        None => {
            problems.add(
                &t.path_of("master_name"),
                "required: the name the sentinels monitor the master under",
            );
            None
        }
    };
    let urls = t.list::<String>("urls", problems);
    let urls = checked_urls(urls, &t.path_of("urls"), "the sentinels", problems);
    Some(SentinelConfig {
        master_name: master_name?,
        urls: urls?,
    })
}

/// `url` when it is a Redis URL.
fn checked_url(url: String, path: &str, problems: &mut Problems) -> Option<String> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Some(url);
    }
    problems.add(
        path,
        format!("expected redis://host:port/db, got \"{}\"", Redacted(&url)),
    );
    None
}

/// `urls` when the list is there, not empty, and every item is a Redis URL.
fn checked_urls(
    urls: Option<Vec<String>>,
    path: &str,
    what: &str,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    let urls = match urls {
        Some(urls) if !urls.is_empty() => urls,
        _ => {
            problems.add(
                path,
                format!("required: a list of {what} (redis://host:port)"),
            );
            return None;
        }
    };
    let count = urls.len();
    let checked: Vec<String> = urls
        .into_iter()
        .enumerate()
        .filter_map(|(i, url)| checked_url(url, &format!("{path}[{i}]"), problems))
        .collect();
    (checked.len() == count).then_some(checked)
}

/// A URL with the credentials before its last `@` hidden.
struct Redacted<'a>(&'a str);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The last `@`: a password may hold one, a host never does.
        match self.0.rsplit_once('@') {
            Some((credentials, rest)) => {
                let scheme = credentials.split("//").next().unwrap_or("redis:");
                write!(f, "{scheme}//<redacted>@{rest}")
            }
            None => f.write_str(self.0),
        }
    }
}

fn redacted_url<S: Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&Redacted(url))
}

fn redacted_urls<S: Serializer>(urls: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(urls.iter().map(|url| Redacted(url).to_string()))
}

#[cfg(test)]
mod tests {
    use super::{RedisTopology, SentinelConfig};
    use crate::config::tests::load;

    #[test]
    fn the_three_modes_read_with_passwords_redacted() {
        let config =
            load("redis: { url: \"redis://:p@ss@127.0.0.1:6379/0\" }", &[]).expect("valid");
        let redis = config.redis.expect("redis");
        assert_eq!(
            redis.topology,
            RedisTopology::Standalone {
                url: "redis://:p@ss@127.0.0.1:6379/0".to_string()
            }
        );
        let shown = serde_json::to_string(&redis).expect("json");
        assert!(
            shown.contains("\"mode\":\"standalone\"")
                && shown.contains("redis://<redacted>@127.0.0.1:6379/0")
                && !shown.contains("ss@"),
            "{shown}"
        );

        let config = load(
            "redis: { mode: cluster, urls: [\"redis://:pw@10.0.0.1:7000\", \"redis://10.0.0.2:7000\"] }",
            &[("REDIS_URL", "redis://ignored:6379")],
        )
        .expect("valid");
        let redis = config.redis.expect("redis");
        assert!(matches!(&redis.topology, RedisTopology::Cluster { urls } if urls.len() == 2));
        let shown = serde_json::to_string(&redis).expect("json");
        assert!(
            shown.contains(
                "\"urls\":[\"redis://<redacted>@10.0.0.1:7000\",\"redis://10.0.0.2:7000\"]"
            ),
            "{shown}"
        );

        let config = load(
            "redis: { mode: sentinel, sentinel: { master_name: mymaster, urls: [\"redis://10.0.0.5:26379\"] } }",
            &[],
        )
        .expect("valid");
        assert_eq!(
            config.redis.expect("redis").topology,
            RedisTopology::Sentinel {
                sentinel: SentinelConfig {
                    master_name: "mymaster".to_string(),
                    urls: vec!["redis://10.0.0.5:26379".to_string()],
                }
            }
        );
    }

    #[test]
    fn mistakes_name_their_key_path() {
        let errors = |text: &str| load(text, &[]).unwrap_err();
        assert_eq!(
            errors("redis: { mode: sharded, url: \"redis://a:1\" }"),
            vec!["redis.mode: expected one of standalone, cluster, sentinel, got \"sharded\""]
        );
        assert_eq!(
            errors("redis: { mode: cluster, url: \"redis://a:1\" }"),
            vec![
                "redis.url: names one server, which mode cluster does not use: list the seed nodes under urls",
                "redis.urls: required: a list of the seed nodes (redis://host:port)",
            ]
        );
        assert_eq!(
            errors("redis: { mode: cluster, urls: [\"redis://a:1\", \"http://:secret@b:2\"] }"),
            vec!["redis.urls[1]: expected redis://host:port/db, got \"http://<redacted>@b:2\""]
        );
        assert_eq!(
            errors("redis: { urls: [\"redis://a:1\"], sentinel: { master_name: m } }"),
            vec![
                "redis.sentinel.urls: required: a list of the sentinels (redis://host:port)",
                "redis.urls: lists cluster seed nodes: set mode: cluster, or use url for one server",
                "redis.sentinel: is read with mode: sentinel only: set it, or remove the section",
                "redis.url: required when redis is configured (or set REDIS_URL)",
            ]
        );
        assert_eq!(
            errors("redis: { mode: sentinel }"),
            vec!["redis.sentinel: required with mode: sentinel: { master_name, urls }"]
        );
        assert_eq!(
            errors("redis: { mode: sentinel, sentinel: { master_name: \"\", urls: [] } }"),
            vec![
                "redis.sentinel.master_name: must not be empty",
                "redis.sentinel.urls: required: a list of the sentinels (redis://host:port)",
            ]
        );
    }
}
