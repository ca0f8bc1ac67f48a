//! The fleet store on Redis, Valkey or Redis Cluster: connecting (password, TLS), and every
//! operation on it, each checked on the way back in (the store is a trust boundary).
//!
//! Decisions that must be the same for the whole fleet are Lua scripts on one group's keys
//! (one hash slot), so they are atomic on a single server and on a cluster alike: [`MERGE`]
//! folds what a node learned into the group, [`CLAIM`] decides whether a value a node found
//! new is new for the fleet. The index and the log live on keys of their own and are written
//! beside the scripts, not inside them: they are how nodes find groups and follow changes, and
//! a node that misses a log entry catches up from the groups themselves.

use super::keys::{self, GroupName, Keys};
use crate::state::{Settings, Sighting};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach the fleet store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `redis://[user[:password]@]host:port[/db]` or `rediss://...` (TLS).
    pub url: String,
    /// A file holding the password (the first line), instead of one in the URL.
    pub password_file: Option<PathBuf>,
    /// A PEM file of the CA certificates to trust for `rediss://` instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The cluster's key prefix (keys.rs).
    pub prefix: String,
    /// Longest wait for one answer of the store.
    pub timeout: Duration,
    /// Most values kept per group in the store.
    pub max_values_per_group: usize,
    /// Most groups kept in the store's index.
    pub max_groups: usize,
}

/// Default bound on values per group in the store.
pub const DEFAULT_MAX_VALUES_PER_GROUP: usize = 4096;
/// Default bound on groups in the store.
pub const DEFAULT_MAX_GROUPS: usize = 1 << 20;
/// Entries kept in the log (approximately: Redis trims by whole nodes of the stream).
const LOG_LENGTH: usize = 100_000;

/// A connection to a single server or to a cluster; both reconnect by themselves.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Folds sightings into a group: its learning start becomes the earliest anywhere, each value
/// is added (within the per-group bound) or its last sighting moved forward.
/// KEYS: meta, values. ARGV: rule, state, group, started, max values, then (value, first
/// seen, last seen)... Returns {group created, values added, values refused because the group
/// was full}.
const MERGE: &str = r#"
local t = redis.call('HGET', KEYS[1], 't')
local created = 0
if not t then
  redis.call('HSET', KEYS[1], 'r', ARGV[1], 's', ARGV[2], 'n', ARGV[3], 't', ARGV[4])
  created = 1
elseif ARGV[4] < t then
  redis.call('HSET', KEYS[1], 't', ARGV[4])
end
local max = tonumber(ARGV[5])
local added, full = 0, 0
for i = 6, #ARGV, 3 do
  local value, first, last = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', KEYS[2], value)
  if old and string.len(old) == 33 then
    local old_first, old_last = string.sub(old, 1, 16), string.sub(old, 18)
    if first < old_first or last > old_last then
      if old_first < first then first = old_first end
      if old_last > last then last = old_last end
      redis.call('HSET', KEYS[2], value, first .. ':' .. last)
    end
  elseif old or redis.call('HLEN', KEYS[2]) < max then
    redis.call('HSET', KEYS[2], value, first .. ':' .. last)
    added = added + 1
  else
    full = full + 1
  end
end
return {created, added, full}
"#;

/// Decides, for the whole fleet and atomically, whether a value one node found new is new:
/// learning if the group's fleet-wide learning window holds the event, known if a node saw it
/// within forget-after, else new (and learned, so that every other node hears "known").
/// KEYS: meta, values. ARGV: rule, state, group, started (this node's), value, ts,
/// ts - learning period, ts - forget after, max values.
/// Returns {verdict, the group's learning start} with verdict 0 new, 1 known, 2 learning,
/// 3 new but not stored (the group is full).
const CLAIM: &str = r#"
local t = redis.call('HGET', KEYS[1], 't')
if not t then
  redis.call('HSET', KEYS[1], 'r', ARGV[1], 's', ARGV[2], 'n', ARGV[3], 't', ARGV[4])
  t = ARGV[4]
elseif ARGV[4] < t then
  redis.call('HSET', KEYS[1], 't', ARGV[4])
  t = ARGV[4]
end
local value, ts = ARGV[5], ARGV[6]
local old = redis.call('HGET', KEYS[2], value)
-- What no agent writes is not a sighting: judged as unseen, and replaced.
if old and string.len(old) ~= 33 then old = nil end
local learning = t <= ts and ARGV[7] < t
if old then
  local last = string.sub(old, 18)
  if learning or ARGV[8] <= last then
    if ts > last then
      redis.call('HSET', KEYS[2], value, string.sub(old, 1, 17) .. ts)
    end
    if learning then return {2, t} end
    return {1, t}
  end
  redis.call('HSET', KEYS[2], value, ts .. ':' .. ts)
  return {0, t}
end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[9]) and redis.call('HEXISTS', KEYS[2], value) == 0 then
  if learning then return {2, t} end
  return {3, t}
end
redis.call('HSET', KEYS[2], value, ts .. ':' .. ts)
if learning then return {2, t} end
return {0, t}
"#;

/// The fleet's answer to a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// New for the whole fleet: the signal stands.
    New,
    /// Another node knew it: no signal.
    Known,
    /// The group is still learning, fleet-wide: no signal.
    Learning,
}

/// A change learned from the store, checked, for a node to apply to its own state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// The group exists, learning since `started_ns`; with a value, that value was seen at
    /// `seen_ns` (first seen at `first_ns`).
    Seen {
        /// Rule, state, group.
        name: GroupName,
        /// Start of the group's learning period.
        started_ns: i64,
        /// A value seen, with its first and last sighting.
        value: Option<(String, i64, i64)>,
    },
    /// An operator made a value (or, with `None`, the whole group) be forgotten.
    Forgotten {
        /// Rule, state, group.
        name: GroupName,
        /// The value, or `None` for the group.
        value: Option<String>,
    },
}

/// What a push did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Groups the store did not have.
    pub groups_created: u64,
    /// Values the store did not have.
    pub values_added: u64,
    /// Values refused because their group was full in the store.
    pub refused: u64,
}

/// The fleet store of one cluster.
#[derive(Clone)]
pub struct SharedStore {
    connection: Connection,
    keys: Keys,
    options: StoreOptions,
    /// The URL without its password, for messages.
    display: String,
}

/// An error from the store, named for the operator.
pub type StoreResult<T> = Result<T, String>;

impl SharedStore {
    /// Connects (authenticating, over TLS for `rediss://`), finds out whether the server is a
    /// cluster, and checks that it answers.
    pub async fn connect(options: &StoreOptions) -> StoreResult<SharedStore> {
        let keys = Keys::new(&options.prefix)?;
        crate::tls::install_provider();
        let display = redact(&options.url);
        let mut info = redis::IntoConnectionInfo::into_connection_info(options.url.as_str())
            .map_err(|err| format!("shared state URL {display}: {err}"))?;
        if !matches!(
            info.addr(),
            redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::TcpTls { .. }
        ) {
            return Err(format!(
                "shared state URL {display}: only redis:// and rediss:// are supported"
            ));
        }
        if let Some(file) = &options.password_file {
            let password = read_secret(file)?;
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let certificates = match &options.ca_file {
            Some(file) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(
                    std::fs::read(file)
                        .map_err(|err| format!("shared state CA file {}: {err}", file.display()))?,
                ),
            }),
            None => None,
        };
        let client = match &certificates {
            Some(certs) => redis::Client::build_with_tls(info.clone(), certs.clone()),
            None => redis::Client::open(info.clone()),
        }
        .map_err(|err| format!("shared state {display}: {err}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let manager = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|err| format!("shared state {display}: {err}"))?;
        let mut connection = Connection::Single(manager);
        // A cluster answers INFO cluster with cluster_enabled:1: then every key goes to the node
        // that owns its slot (ElastiCache and MemoryDB in cluster mode).
        let info_text: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut connection)
            .await
            .map_err(|err| format!("shared state {display}: {err}"))?;
        if info_text.contains("cluster_enabled:1") {
            let mut builder = redis::cluster::ClusterClientBuilder::new(vec![info])
                .connection_timeout(options.timeout)
                .response_timeout(options.timeout)
                .retries(1);
            if let Some(certs) = certificates {
                builder = builder.certs(certs);
            }
            let cluster = builder
                .build()
                .map_err(|err| format!("shared state {display} (cluster): {err}"))?;
            connection = Connection::Cluster(
                cluster
                    .get_async_connection()
                    .await
                    .map_err(|err| format!("shared state {display} (cluster): {err}"))?,
            );
        }
        Ok(SharedStore {
            connection,
            keys,
            options: options.clone(),
            display,
        })
    }

    /// The store's URL without its password.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Whether the store is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.connection, Connection::Cluster(_))
    }

    /// Checks that the store answers.
    pub async fn ping(&mut self) -> StoreResult<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.connection)
            .await
            .map(drop)
            .map_err(|err| self.error(err))
    }

    fn error(&self, err: redis::RedisError) -> String {
        format!("shared state {}: {err}", self.display)
    }

    /// Folds what this node learned into the store, group by group, and logs it for the other
    /// nodes (`node` names the sender, which skips its own entries when it follows).
    pub async fn push(
        &mut self,
        node: &str,
        batch: &[(String, Sighting, i64)],
        index_full: bool,
    ) -> StoreResult<Pushed> {
        // Group the batch by (rule, state, group), each with its earliest start.
        type Seen<'b> = (&'b Sighting, i64);
        let mut groups: HashMap<(&str, &str, &str), (i64, Vec<Seen<'_>>)> = HashMap::new();
        for (rule, sighting, first) in batch {
            let entry = groups
                .entry((rule, &sighting.state, &sighting.group))
                .or_insert((sighting.started_ns, Vec::new()));
            entry.0 = entry.0.min(sighting.started_ns);
            entry.1.push((sighting, *first));
        }
        let mut merges = Vec::new();
        let mut order = Vec::new();
        for ((rule, state, group), (started, sightings)) in &groups {
            let tag = keys::tag(rule, state, group);
            let mut invocation = self.script(MERGE, &tag);
            invocation
                .arg(*rule)
                .arg(*state)
                .arg(*group)
                .arg(keys::time(*started))
                .arg(self.options.max_values_per_group);
            for (sighting, first) in sightings {
                invocation
                    .arg(&*sighting.value)
                    .arg(keys::time(*first))
                    .arg(keys::time(sighting.seen_ns));
            }
            merges.push(invocation);
            order.push((*rule, *state, *group, tag, *started));
        }
        let replies: Vec<(u64, u64, u64)> = self.run_all(merges).await?;
        let mut pushed = Pushed::default();
        let mut follow = Vec::new();
        for ((rule, state, group, tag, started), (created, added, full)) in
            order.iter().zip(&replies)
        {
            pushed.groups_created += created;
            pushed.values_added += added;
            pushed.refused += full;
            if *created == 1 && !index_full {
                follow.push(self.index_entry(rule, state, group, tag));
            }
            for (sighting, _) in &groups[&(*rule, *state, *group)].1 {
                let mut entry = self.log_entry(node, "v", rule, state, group, *started);
                entry
                    .arg("v")
                    .arg(&*sighting.value)
                    .arg("l")
                    .arg(keys::time(sighting.seen_ns));
                follow.push(entry);
            }
        }
        self.run_all::<Value>(follow).await?;
        Ok(pushed)
    }

    /// Runs commands together: as one pipeline on a single server; on a cluster, where a
    /// pipeline may not cross hash slots, as concurrent commands on its multiplexed
    /// connections. Answers come back in the commands' order.
    async fn run_all<T: redis::FromRedisValue + Send + 'static>(
        &mut self,
        commands: Vec<Cmd>,
    ) -> StoreResult<Vec<T>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        match &self.connection {
            Connection::Single(_) => {
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query_async(&mut self.connection)
                    .await
                    .map_err(|err| self.error(err))
            }
            Connection::Cluster(connection) => {
                let count = commands.len();
                let mut tasks = tokio::task::JoinSet::new();
                for (at, command) in commands.into_iter().enumerate() {
                    let mut connection = connection.clone();
                    tasks.spawn(
                        async move { (at, command.query_async::<T>(&mut connection).await) },
                    );
                }
                let mut answers: Vec<Option<T>> = (0..count).map(|_| None).collect();
                while let Some(joined) = tasks.join_next().await {
                    let (at, answer) = joined.map_err(|err| format!("shared state: {err}"))?;
                    answers[at] = Some(answer.map_err(|err| self.error(err))?);
                }
                Ok(answers.into_iter().flatten().collect())
            }
        }
    }

    /// The index entry of a group, set if it is not there.
    fn index_entry(&self, rule: &str, state: &str, group: &str, tag: &str) -> Cmd {
        let mut cmd = redis::cmd("HSETNX");
        cmd.arg(self.keys.index())
            .arg(tag)
            .arg(keys::index_entry(rule, state, group));
        cmd
    }

    /// A script invocation on one group's two keys. EVAL, not EVALSHA: the server caches the
    /// compiled script by its digest either way, and EVAL cannot fail on a node that lost
    /// its script cache (a restart, a failover, a cluster node that never saw SCRIPT LOAD).
    fn script(&self, source: &str, tag: &str) -> Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(source)
            .arg(2)
            .arg(self.keys.meta(tag))
            .arg(self.keys.values(tag));
        cmd
    }

    /// A log entry: who (`node`), what (`kind`: `v` seen, `x` value forgotten, `X` group
    /// forgotten), where, and the group's learning start; the caller adds the value's fields.
    fn log_entry(
        &self,
        node: &str,
        kind: &str,
        rule: &str,
        state: &str,
        group: &str,
        started: i64,
    ) -> Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.keys.log())
            .arg("MAXLEN")
            .arg("~")
            .arg(LOG_LENGTH)
            .arg("*")
            .arg("o")
            .arg(node)
            .arg("k")
            .arg(kind)
            .arg("r")
            .arg(rule)
            .arg("s")
            .arg(state)
            .arg("g")
            .arg(group)
            .arg("t")
            .arg(keys::time(started));
        cmd
    }

    /// Asks the fleet whether a value this node found new is new for the fleet.
    pub async fn claim(
        &mut self,
        node: &str,
        rule: &str,
        sighting: &Sighting,
        settings: Settings,
    ) -> StoreResult<(ClaimAnswer, i64)> {
        let tag = keys::tag(rule, &sighting.state, &sighting.group);
        let ts = sighting.seen_ns;
        let period = i64::try_from(settings.learning_period_ns).unwrap_or(i64::MAX);
        let forget = i64::try_from(settings.forget_after_ns).unwrap_or(i64::MAX);
        let mut invocation = self.script(CLAIM, &tag);
        invocation
            .arg(rule)
            .arg(&*sighting.state)
            .arg(&*sighting.group)
            .arg(keys::time(sighting.started_ns))
            .arg(&*sighting.value)
            .arg(keys::time(ts))
            .arg(keys::time(ts.saturating_sub(period)))
            .arg(keys::time(ts.saturating_sub(forget)))
            .arg(self.options.max_values_per_group);
        let (verdict, started): (u8, String) = invocation
            .query_async(&mut self.connection)
            .await
            .map_err(|err| self.error(err))?;
        let started = keys::parse_time(&started)
            .ok_or_else(|| format!("shared state {}: malformed group start", self.display))?;
        let answer = match verdict {
            0 | 3 => ClaimAnswer::New,
            1 => ClaimAnswer::Known,
            _ => ClaimAnswer::Learning,
        };
        // Every node hears of the value (it is learned now, whatever the answer).
        let mut follow = vec![self.index_entry(rule, &sighting.state, &sighting.group, &tag)];
        if verdict != 3 {
            let mut entry =
                self.log_entry(node, "v", rule, &sighting.state, &sighting.group, started);
            entry
                .arg("v")
                .arg(&*sighting.value)
                .arg("l")
                .arg(keys::time(ts));
            follow.push(entry);
        }
        self.run_all::<Value>(follow).await?;
        Ok((answer, started))
    }

    /// The id of the newest log entry (`0-0` for an empty log): a joining node loads the
    /// groups, then follows the log from here.
    pub async fn log_head(&mut self) -> StoreResult<String> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.keys.log())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.connection)
            .await
            .map_err(|err| self.error(err))?;
        Ok(reply
            .ids
            .first()
            .map_or_else(|| "0-0".to_string(), |entry| entry.id.clone()))
    }

    /// The id of the oldest log entry still kept, if any.
    pub async fn log_tail(&mut self) -> StoreResult<Option<String>> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.log())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.connection)
            .await
            .map_err(|err| self.error(err))?;
        Ok(reply.ids.first().map(|entry| entry.id.clone()))
    }

    /// Number of groups in the index.
    pub async fn group_count(&mut self) -> StoreResult<usize> {
        redis::cmd("HLEN")
            .arg(self.keys.index())
            .query_async(&mut self.connection)
            .await
            .map_err(|err| self.error(err))
    }

    /// Reads every group of the store (the baseline a joining node loads), `chunk` groups a
    /// round trip, handing each group with its values to `visit`. Entries that fail the
    /// checks are skipped and counted in the returned number.
    pub async fn load(
        &mut self,
        rule: Option<&str>,
        mut visit: impl FnMut(Remote),
    ) -> StoreResult<u64> {
        let mut malformed = 0;
        let mut cursor: u64 = 0;
        loop {
            let (next, pairs): (u64, Vec<(String, Vec<u8>)>) = redis::cmd("HSCAN")
                .arg(self.keys.index())
                .arg(cursor)
                .arg("COUNT")
                .arg(256)
                .query_async(&mut self.connection)
                .await
                .map_err(|err| self.error(err))?;
            let mut names = Vec::new();
            let mut reads = Vec::new();
            for (tag, entry) in pairs {
                match keys::parse_index_entry(&tag, &entry) {
                    Ok(name) if rule.is_none_or(|r| r == name.rule) => {
                        let mut meta = redis::cmd("HGETALL");
                        meta.arg(self.keys.meta(&tag));
                        let mut values = redis::cmd("HGETALL");
                        values.arg(self.keys.values(&tag));
                        reads.push(meta);
                        reads.push(values);
                        names.push(name);
                    }
                    Ok(_) => {}
                    Err(err) => {
                        malformed += 1;
                        tracing::warn!(tag, "fleet store: index entry skipped: {err}");
                    }
                }
            }
            if !names.is_empty() {
                let replies: Vec<HashMap<String, Vec<u8>>> = self.run_all(reads).await?;
                for (name, pair) in names.into_iter().zip(replies.chunks(2)) {
                    malformed += self.visit_group(name, &pair[0], &pair[1], &mut visit);
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(malformed);
            }
        }
    }

    /// Checks one group read from the store and hands it over; returns how many of its parts
    /// were malformed.
    fn visit_group(
        &self,
        name: GroupName,
        meta: &HashMap<String, Vec<u8>>,
        values: &HashMap<String, Vec<u8>>,
        visit: &mut impl FnMut(Remote),
    ) -> u64 {
        let field = |key: &str| meta.get(key).map(|v| v.as_slice());
        let consistent = field("r") == Some(name.rule.as_bytes())
            && field("s") == Some(name.state.as_bytes())
            && field("n") == Some(name.group.as_bytes());
        let started = field("t")
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(keys::parse_time);
        let (true, Some(started_ns)) = (consistent, started) else {
            if !meta.is_empty() {
                tracing::warn!(
                    rule = name.rule,
                    group = name.group,
                    "fleet store: group skipped: its record does not match its index entry"
                );
                return 1;
            }
            // Forgotten since it was indexed: nothing to load.
            return 0;
        };
        let mut malformed = 0;
        visit(Remote::Seen {
            name: name.clone(),
            started_ns,
            value: None,
        });
        for (value, seen) in values.iter().take(self.options.max_values_per_group) {
            let parsed = keys::check_value(value.as_bytes())
                .ok()
                .zip(std::str::from_utf8(seen).ok().and_then(keys::parse_seen));
            match parsed {
                Some((value, (first, last))) => visit(Remote::Seen {
                    name: name.clone(),
                    started_ns,
                    value: Some((value.to_string(), first, last)),
                }),
                None => malformed += 1,
            }
        }
        if malformed > 0 {
            tracing::warn!(
                rule = name.rule,
                group = name.group,
                malformed,
                "fleet store: malformed values skipped"
            );
        }
        malformed
    }

    /// Reads up to `count` log entries after `after`; returns them checked, the id to follow
    /// from next, and the number of malformed entries skipped. Entries sent by `node` itself are
    /// left out.
    pub async fn follow(
        &mut self,
        node: &str,
        after: &str,
        count: usize,
    ) -> StoreResult<(Vec<Remote>, String, u64)> {
        let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(self.keys.log())
            .arg(after)
            .query_async(&mut self.connection)
            .await
            .map_err(|err| self.error(err))?;
        let mut last = after.to_string();
        let mut remotes = Vec::new();
        let mut malformed = 0;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                last = entry.id.clone();
                match parse_log_entry(&entry.map) {
                    Ok(Some((origin, _))) if origin == node => {}
                    Ok(Some((_, remote))) => remotes.push(remote),
                    Ok(None) => {}
                    Err(err) => {
                        malformed += 1;
                        tracing::warn!(id = entry.id, "fleet store: log entry skipped: {err}");
                    }
                }
            }
        }
        Ok((remotes, last, malformed))
    }

    /// Records a rule's learning settings, for `picket state show`.
    pub async fn set_settings(&mut self, rule: &str, settings: Settings) -> StoreResult<()> {
        redis::cmd("HSET")
            .arg(self.keys.rules())
            .arg(rule)
            .arg(keys::settings_entry(settings))
            .query_async::<()>(&mut self.connection)
            .await
            .map_err(|err| self.error(err))
    }

    /// Every rule's learning settings as recorded.
    pub async fn settings(&mut self) -> StoreResult<HashMap<String, Settings>> {
        let raw: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.keys.rules())
            .query_async(&mut self.connection)
            .await
            .map_err(|err| self.error(err))?;
        Ok(raw
            .into_iter()
            .filter_map(|(rule, text)| keys::parse_settings(&text).map(|s| (rule, s)))
            .collect())
    }

    /// Makes a value known in a group for the whole fleet (an operator's approval), seen at
    /// `now_ns`. A group not seen yet keeps its learning for its first event.
    pub async fn allow(
        &mut self,
        node: &str,
        name: &GroupName,
        value: &str,
        now_ns: i64,
    ) -> StoreResult<()> {
        let sighting = Sighting {
            state: name.state.as_str().into(),
            group: name.group.as_str().into(),
            started_ns: crate::state::NOT_STARTED,
            value: value.into(),
            seen_ns: now_ns,
        };
        let pushed = self
            .push(node, &[(name.rule.clone(), sighting, now_ns)], false)
            .await?;
        if pushed.refused > 0 {
            return Err(format!(
                "shared state {}: the group is full ({} values)",
                self.display, self.options.max_values_per_group
            ));
        }
        Ok(())
    }

    /// Makes a value, or a whole group, be forgotten by the whole fleet. Returns whether the
    /// store had it.
    pub async fn forget(
        &mut self,
        node: &str,
        name: &GroupName,
        value: Option<&str>,
    ) -> StoreResult<bool> {
        let tag = keys::tag(&name.rule, &name.state, &name.group);
        let remove = match value {
            Some(value) => {
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(self.keys.values(&tag)).arg(value);
                cmd
            }
            None => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(self.keys.meta(&tag)).arg(self.keys.values(&tag));
                cmd
            }
        };
        let removed: u64 = remove
            .query_async(&mut self.connection)
            .await
            .map_err(|err| self.error(err))?;
        let mut follow = Vec::new();
        if value.is_none() {
            let mut unindex = redis::cmd("HDEL");
            unindex.arg(self.keys.index()).arg(&tag);
            follow.push(unindex);
        }
        let mut entry = self.log_entry(
            node,
            if value.is_some() { "x" } else { "X" },
            &name.rule,
            &name.state,
            &name.group,
            0,
        );
        if let Some(value) = value {
            entry.arg("v").arg(value);
        }
        follow.push(entry);
        self.run_all::<Value>(follow).await?;
        Ok(removed > 0)
    }

    /// Writes raw fields into a group's records, bypassing every check: for tests of what a
    /// node does with a store that someone else wrote.
    #[doc(hidden)]
    pub async fn raw(&mut self, cmd: &Cmd) -> StoreResult<()> {
        cmd.query_async::<()>(&mut self.connection)
            .await
            .map_err(|err| self.error(err))
    }

    /// The keys of this cluster.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// Reads a log entry: its origin and what it says; `Ok(None)` for an entry of a kind this
/// version does not know (a newer agent's), which is skipped without counting it malformed.
fn parse_log_entry(map: &HashMap<String, Value>) -> Result<Option<(String, Remote)>, String> {
    let text = |key: &str| -> Result<String, String> {
        match map.get(key) {
            Some(Value::BulkString(bytes)) => {
                String::from_utf8(bytes.clone()).map_err(|_| format!("field `{key}` is not UTF-8"))
            }
            Some(_) => Err(format!("field `{key}` is not a string")),
            None => Err(format!("field `{key}` is missing")),
        }
    };
    let origin = text("o")?;
    let kind = text("k")?;
    let (rule, state, group) = (text("r")?, text("s")?, text("g")?);
    keys::check_name(&rule, &state, &group)?;
    let name = GroupName { rule, state, group };
    let remote = match kind.as_str() {
        "v" => {
            let started = keys::parse_time(&text("t")?).ok_or("malformed `t`")?;
            let value = text("v")?;
            keys::check_value(value.as_bytes())?;
            let last = keys::parse_time(&text("l")?).ok_or("malformed `l`")?;
            Remote::Seen {
                name,
                started_ns: started,
                value: Some((value, last, last)),
            }
        }
        "x" => {
            let value = text("v")?;
            keys::check_value(value.as_bytes())?;
            Remote::Forgotten {
                name,
                value: Some(value),
            }
        }
        "X" => Remote::Forgotten { name, value: None },
        _ => return Ok(None),
    };
    Ok(Some((origin, remote)))
}

/// Reads a secret from the first line of a file.
fn read_secret(file: &std::path::Path) -> StoreResult<String> {
    let text = std::fs::read_to_string(file)
        .map_err(|err| format!("shared state password file {}: {err}", file.display()))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(format!(
            "shared state password file {}: empty",
            file.display()
        ));
    }
    Ok(line.to_string())
}

/// A URL without its password, for logs and messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((credentials, host)) => {
                let user = credentials.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("rediss://picket:s3cret@cache.example:6379/0"),
            "rediss://picket:***@cache.example:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://:pw@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
    }

    #[test]
    fn log_entries_are_checked() {
        let entry = |pairs: &[(&str, &str)]| -> HashMap<String, Value> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
                .collect()
        };
        let good = [
            ("o", "node-a"),
            ("k", "v"),
            ("r", "eks-token"),
            ("s", "process.exe"),
            ("g", "registry.example/app"),
            ("t", &keys::time(5)),
            ("v", "/usr/bin/aws"),
            ("l", &keys::time(9)),
        ];
        let (origin, remote) = parse_log_entry(&entry(&good)).unwrap().unwrap();
        assert_eq!(origin, "node-a");
        assert!(matches!(remote, Remote::Seen { started_ns: 5, .. }));
        let mut bad = good;
        bad[5] = ("t", "yesterday");
        assert!(parse_log_entry(&entry(&bad)).is_err());
        let long_group = "g".repeat(picket_abi::MAX_STRING_BYTES + 1);
        let mut bad = good;
        bad[4] = ("g", &long_group);
        assert!(parse_log_entry(&entry(&bad)).is_err());
        let mut newer = good;
        newer[1] = ("k", "z");
        assert_eq!(parse_log_entry(&entry(&newer)).unwrap(), None);
    }
}
