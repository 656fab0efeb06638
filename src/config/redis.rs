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
    /// CA certificates (PEM) a `rediss://` server's certificate must lead
    /// to; the system's roots when `None`.
    pub ca_file: Option<String>,
    /// The environment variable the data nodes' password was read from
    /// (`redis.password_env`); the password itself is never shown.
    pub password_env: Option<String>,
    /// That variable's value, for every data node (the server, each
    /// cluster node, the master found through sentinels); it replaces a
    /// password written in a URL.
    #[serde(skip)]
    pub password: Option<Secret>,
}

impl RedisConfig {
    /// One Redis at `url`, with the default pool and timeout (the
    /// `REDIS_URL` environment variable alone).
    pub fn standalone(url: String) -> Self {
        RedisConfig {
            topology: RedisTopology::Standalone { url },
            pool_size: 16,
            timeout: Duration::from_millis(50),
            ca_file: None,
            password_env: None,
            password: None,
        }
    }

    /// Whether the servers are reached over TLS (`rediss://`; the reader
    /// refuses a mix of schemes in one list).
    pub fn tls(&self) -> bool {
        let first = match &self.topology {
            RedisTopology::Standalone { url } => Some(url),
            RedisTopology::Cluster { urls } => urls.first(),
            RedisTopology::Sentinel { sentinel } => sentinel.urls.first(),
        };
        first.is_some_and(|url| url.starts_with("rediss://"))
    }
}

/// A password read from the environment: compared, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The password, to send to Redis.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
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
    /// The sentinels (`redis://host:26379`); the first that answers is
    /// used. They are asked with the credentials of the first URL that
    /// carries some, and over TLS when they are `rediss://`, as is the
    /// master then.
    #[serde(serialize_with = "redacted_urls")]
    pub urls: Vec<String>,
    /// The environment variable the sentinels' own password was read from
    /// (`redis.sentinel.password_env`); none by default, as Redis ships
    /// sentinels. Name the same variable as `redis.password_env` when the
    /// sentinels share the data nodes' password.
    pub password_env: Option<String>,
    /// That variable's value; it replaces a password in the URLs.
    #[serde(skip)]
    pub password: Option<Secret>,
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
        Some(read_sentinel(t, env, problems))
    });
    let timeout = t.get_or("timeout", Duration::from_millis(50), problems);
    positive(timeout, &t.path_of("timeout"), problems);
    let pool_size = t.get_or("pool_size", 16, problems);
    let ca_file = t.get::<String>("ca_file", problems);
    let (password_env, password) = read_password(t, env, problems);
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
    let config = RedisConfig {
        topology,
        pool_size,
        timeout,
        ca_file,
        password_env,
        password,
    };
    check_tls(&config, t, problems);
    Some(config)
}

/// Reads `password_env` of `t`: the variable's name and its value, which
/// must be set and not empty.
fn read_password(
    t: &mut Table,
    env: Env<'_>,
    problems: &mut Problems,
) -> (Option<String>, Option<Secret>) {
    let Some(name) = t.get::<String>("password_env", problems) else {
        return (None, None);
    };
    let password = match env(&name) {
        Some(value) if !value.is_empty() => Some(Secret(value)),
        Some(_) => {
            problems.add(
                &t.path_of("password_env"),
                format!("the environment variable {name} is empty"),
            );
            None
        }
        None => {
            problems.add(
                &t.path_of("password_env"),
                format!("the environment variable {name} is not set"),
            );
            None
        }
    };
    (Some(name), password)
}

/// Refuses a TLS setting that cannot be what was meant: URLs of one list
/// that mix `redis://` and `rediss://`, a `ca_file` with no `rediss://`
/// URL to use it, an unusable `ca_file`, and `#insecure` (no certificate
/// check), which the sidecar does not offer.
fn check_tls(config: &RedisConfig, t: &Table, problems: &mut Problems) {
    let (key, urls): (&str, &[String]) = match &config.topology {
        RedisTopology::Standalone { url } => ("url", std::slice::from_ref(url)),
        RedisTopology::Cluster { urls } => ("urls", urls),
        RedisTopology::Sentinel { sentinel } => ("sentinel.urls", &sentinel.urls),
    };
    let tls = config.tls();
    if urls.iter().any(|url| url.starts_with("rediss://") != tls) {
        problems.add(
            &t.path_of(key),
            "mixes redis:// and rediss://: every node is reached the same way",
        );
    }
    if urls.iter().any(|url| url.contains('#')) {
        problems.add(
            &t.path_of(key),
            "has a #fragment (such as #insecure): certificates are always checked, against ca_file",
        );
    }
    match &config.ca_file {
        Some(_) if !tls => problems.add(
            &t.path_of("ca_file"),
            "is used for rediss:// URLs only, and none is one",
        ),
        Some(path) => {
            if let Err(why) = crate::tls::ca_pem(path) {
                problems.add(&t.path_of("ca_file"), why);
            }
        }
        None => {}
    }
}

/// Reads `redis.sentinel`; `None` (with the problems recorded) when a part is missing or bad.
fn read_sentinel(t: &mut Table, env: Env<'_>, problems: &mut Problems) -> Option<SentinelConfig> {
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
    let (password_env, password) = read_password(t, env, problems);
    Some(SentinelConfig {
        master_name: master_name?,
        urls: urls?,
        password_env,
        password,
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
    use super::{RedisTopology, Secret, SentinelConfig};
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
                    password_env: None,
                    password: None,
                }
            }
        );
    }

    #[test]
    fn passwords_come_from_the_environment_and_are_never_shown() {
        let config = load(
            "redis: { mode: sentinel, password_env: DATA_PW, sentinel: { master_name: m, urls: [\"rediss://10.0.0.5:26379\"], password_env: SENTINEL_PW } }",
            &[("DATA_PW", "data-secret"), ("SENTINEL_PW", "sentinel-secret")],
        )
        .expect("valid");
        let redis = config.redis.expect("redis");
        assert!(redis.tls());
        assert_eq!(
            redis.password.as_ref().map(Secret::expose),
            Some("data-secret")
        );
        let RedisTopology::Sentinel { sentinel } = &redis.topology else {
            panic!("sentinel mode: {:?}", redis.topology);
        };
        assert_eq!(
            sentinel.password.as_ref().map(Secret::expose),
            Some("sentinel-secret")
        );
        let shown = format!("{} {redis:?}", serde_json::to_string(&redis).expect("json"));
        assert!(
            shown.contains("\"password_env\":\"DATA_PW\"")
                && !shown.contains("data-secret")
                && !shown.contains("sentinel-secret"),
            "{shown}"
        );
    }

    #[test]
    fn tls_and_password_mistakes_name_their_key_path() {
        let errors = |text: &str, env: &[(&str, &str)]| load(text, env).unwrap_err();
        assert_eq!(
            errors("redis: { url: \"rediss://a:1\", password_env: NOPE }", &[]),
            vec!["redis.password_env: the environment variable NOPE is not set"]
        );
        assert_eq!(
            errors(
                "redis: { url: \"rediss://a:1\", password_env: EMPTY }",
                &[("EMPTY", "")]
            ),
            vec!["redis.password_env: the environment variable EMPTY is empty"]
        );
        assert_eq!(
            errors("redis: { url: \"redis://a:1\", ca_file: /etc/ca.pem }", &[]),
            vec!["redis.ca_file: is used for rediss:// URLs only, and none is one"]
        );
        let missing = errors(
            "redis: { url: \"rediss://a:1\", ca_file: /nonexistent/ca.pem }",
            &[],
        );
        assert!(
            missing.len() == 1
                && missing[0].starts_with("redis.ca_file: cannot read /nonexistent/ca.pem"),
            "{missing:?}"
        );
        assert_eq!(
            errors(
                "redis: { mode: cluster, urls: [\"rediss://a:1\", \"redis://b:2\"] }",
                &[]
            ),
            vec!["redis.urls: mixes redis:// and rediss://: every node is reached the same way"]
        );
        assert_eq!(
            errors("redis: { url: \"rediss://a:1/#insecure\" }", &[]),
            vec!["redis.url: has a #fragment (such as #insecure): certificates are always checked, against ca_file"]
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
