//! The operator's side of a chaos run.
//!
//! Writers change pools, BGP peers, Nodes (extra ones without an agent, and the
//! labels of the agents' own) and the default Agent and BGP configurations through
//! the API: gRPC with mTLS, one call at a time, staying with one controller replica
//! until a call fails and then trying the next, retrying as an operator would. Each
//! writer owns its objects, so it knows what every acknowledged write says the intent
//! of those objects is now ([`Expect`]). An answer that contradicts that (a create
//! refused with ALREADY_EXISTS for an object that was deleted, a change of an object
//! that exists refused with NOT_FOUND) is a finding; at the end the final intent is
//! compared with it (a lost or resurrected write is a finding too).
//!
//! A call whose outcome is unknown (the replica died with it in flight) is sent again
//! to the next replica; when a retry is refused, or no replica answered for
//! [`RETRY_FOR`], the writer reads the object back before it trusts its expectation.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use tern::client::ClientTls;
use tern::model::Kind;
use tern::model::protojson::{struct_to_json_map, value_to_proto};
use tern::proto::{self, resource_service_client::ResourceServiceClient};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long a writer keeps retrying one call before it gives up on it.
pub const RETRY_FOR: Duration = Duration::from_secs(30);
/// An operation answered after longer than this is listed.
pub const SLOW: Duration = Duration::from_secs(2);
/// A call without an answer for this long counts as failed (outcome unknown).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The objects the writers change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Obj {
    /// `chaos-pool-<k>`: 10.(100+k).0.0/16; IPv6 fd77:<k>::/48 for every fourth.
    Pool(usize),
    /// `chaos-peer-<k>`: a global peer, a peer of nodes selected by label, or a
    /// node-to-node peering by selectors.
    Peer(usize),
    /// `chaos-node-<k>`: a Node without an agent, 10.79.0.(10+k)/24.
    Node(usize),
    /// The `rack` label of agent `i`'s Node.
    AgentLabel(usize),
    /// AgentConfiguration `default`.
    AgentConfig,
    /// BGPConfiguration `default` (its mesh switch).
    BgpConfig,
}

impl Obj {
    pub fn kind(self) -> Kind {
        match self {
            Obj::Pool(_) => Kind::IPPool,
            Obj::Peer(_) => Kind::BGPPeer,
            Obj::Node(_) | Obj::AgentLabel(_) => Kind::Node,
            Obj::AgentConfig => Kind::AgentConfiguration,
            Obj::BgpConfig => Kind::BGPConfiguration,
        }
    }

    pub fn name(self, agents: &[String]) -> String {
        match self {
            Obj::Pool(k) => format!("chaos-pool-{k}"),
            Obj::Peer(k) => format!("chaos-peer-{k}"),
            Obj::Node(k) => format!("chaos-node-{k}"),
            Obj::AgentLabel(i) => agents[i].clone(),
            Obj::AgentConfig | Obj::BgpConfig => "default".into(),
        }
    }
}

/// What a writer knows an object to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    Absent,
    Present(Snapshot),
    /// Not known (yet, or after a call whose outcome stayed unknown).
    Unknown,
}

/// The parts of an object the writers set: its spec and labels (for an agent's Node,
/// only the `rack` label).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub spec: Value,
    pub labels: BTreeMap<String, String>,
    pub resource_version: String,
}

impl Snapshot {
    pub fn of(obj: Obj, r: &proto::Resource) -> Snapshot {
        let meta = r.metadata.clone().unwrap_or_default();
        let mut labels: BTreeMap<String, String> = meta.labels.into_iter().collect();
        let spec = match obj {
            Obj::AgentLabel(_) => {
                labels.retain(|k, _| k == "rack");
                Value::Null
            }
            _ => r
                .spec
                .as_ref()
                .map(|s| Value::Object(struct_to_json_map(s)))
                .unwrap_or(Value::Null),
        };
        Snapshot {
            spec,
            labels,
            resource_version: meta.resource_version,
        }
    }

    /// Same spec and labels (the resource version aside).
    pub fn same(&self, other: &Snapshot) -> bool {
        self.spec == other.spec && self.labels == other.labels
    }
}

/// Counts of what the writers did.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Operations by what they were (`create IPPool`, ...).
    pub ops: BTreeMap<String, usize>,
    /// Operations acknowledged (possibly after retries).
    pub ok: usize,
    /// Operations refused with a definite answer, by code (and the first message).
    pub refused: BTreeMap<String, (usize, String)>,
    /// Calls that failed and were sent again, by code (and the first message).
    pub failed_calls: BTreeMap<String, (usize, String)>,
    /// Operations that needed more than one call.
    pub retried: usize,
    /// Operations no replica answered for [`RETRY_FOR`].
    pub gave_up: usize,
    /// The longest an operation took to be answered, retries included.
    pub longest: Duration,
    /// Operations answered after more than [`SLOW`]: when each was issued, how long it
    /// took, what it was and how many calls it took.
    pub slow: Vec<(Instant, Duration, String, usize)>,
    /// Reads of an object to learn its state.
    pub reads: usize,
}

impl Stats {
    pub fn merge(&mut self, o: Stats) {
        for (k, v) in o.ops {
            *self.ops.entry(k).or_default() += v;
        }
        self.ok += o.ok;
        for (k, (n, m)) in o.refused {
            self.refused.entry(k).or_insert((0, m)).0 += n;
        }
        for (k, (n, m)) in o.failed_calls {
            self.failed_calls.entry(k).or_insert((0, m)).0 += n;
        }
        self.retried += o.retried;
        self.gave_up += o.gave_up;
        self.longest = self.longest.max(o.longest);
        self.slow.extend(o.slow);
        self.reads += o.reads;
    }

    pub fn total(&self) -> usize {
        self.ops.values().sum()
    }
}

fn code_name(c: Code) -> String {
    format!("{c:?}")
}

/// Outcome of one operation, retries included.
enum Outcome<T> {
    Ok(T),
    /// A definite answer; `retried` when an earlier call may have landed.
    Refused {
        status: Status,
        retried: bool,
    },
    /// No answer for [`RETRY_FOR`].
    GaveUp,
}

/// Whether a failed call may be sent again: no definite answer came back.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
    )
}

/// The API as an operator holds it: one client per replica, the current one first.
#[derive(Debug, Clone)]
pub struct Api {
    clients: Vec<ResourceServiceClient<Channel>>,
    current: usize,
}

impl Api {
    pub fn new(tls: &ClientTls, addrs: &[String]) -> anyhow::Result<Api> {
        let clients = addrs
            .iter()
            .map(|a| {
                Ok(ResourceServiceClient::new(tls.endpoint(a)?.connect_lazy())
                    .max_decoding_message_size(256 << 20))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Api {
            clients,
            current: 0,
        })
    }

    /// Start with replica `i` (writers spread over them).
    pub fn starting_at(mut self, i: usize) -> Api {
        self.current = i % self.clients.len().max(1);
        self
    }

    /// Call `f` until an answer, moving to the next replica after each failure.
    async fn call<T, Fut>(
        &mut self,
        stats: &mut Stats,
        what: &str,
        mut f: impl FnMut(ResourceServiceClient<Channel>) -> Fut,
    ) -> Outcome<T>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let start = Instant::now();
        let mut calls = 0;
        let done = |stats: &mut Stats, calls: usize| {
            let took = start.elapsed();
            stats.longest = stats.longest.max(took);
            if took > SLOW {
                stats.slow.push((start, took, what.to_string(), calls));
            }
            if calls > 1 {
                stats.retried += 1;
            }
        };
        loop {
            calls += 1;
            let client = self.clients[self.current].clone();
            let status = match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
                Ok(Ok(r)) => {
                    done(stats, calls);
                    return Outcome::Ok(r.into_inner());
                }
                Ok(Err(s)) => s,
                Err(_) => Status::deadline_exceeded(format!("no answer within {CALL_TIMEOUT:?}")),
            };
            if !retryable(&status) {
                done(stats, calls);
                return Outcome::Refused {
                    status,
                    retried: calls > 1,
                };
            }
            stats
                .failed_calls
                .entry(format!("{} ({what})", code_name(status.code())))
                .or_insert((0, status.message().chars().take(200).collect()))
                .0 += 1;
            self.current = (self.current + 1) % self.clients.len();
            if start.elapsed() > RETRY_FOR {
                stats.gave_up += 1;
                return Outcome::GaveUp;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every resource of every kind, read at one revision (retrying).
    pub async fn list_all(&mut self) -> anyhow::Result<proto::ListResponse> {
        let mut stats = Stats::default();
        match self
            .call(&mut stats, "list", |mut c| async move {
                c.list(proto::ListRequest::default()).await
            })
            .await
        {
            Outcome::Ok(r) => Ok(r),
            Outcome::Refused { status, .. } => anyhow::bail!("List: {status}"),
            Outcome::GaveUp => anyhow::bail!("List: no replica answered for {RETRY_FOR:?}"),
        }
    }

    /// Node status as the controllers report it (retrying).
    pub async fn list_nodes(
        &mut self,
        tls: &ClientTls,
        addrs: &[String],
    ) -> anyhow::Result<proto::ListNodesResponse> {
        let mut last = None;
        for _ in 0..3 {
            for a in addrs {
                let ch = tls.endpoint(a)?.connect_lazy();
                let mut c = proto::node_service_client::NodeServiceClient::new(ch)
                    .max_decoding_message_size(256 << 20);
                match c.list_nodes(proto::ListNodesRequest::default()).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(e) => last = Some(e),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!(
            "ListNodes: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )
    }
}

/// One writer: its objects, what it expects of them, and its random source.
#[derive(Debug)]
pub struct Writer {
    api: Api,
    rng: StdRng,
    agents: Vec<String>,
    pub expect: BTreeMap<Obj, Expect>,
    pub stats: Stats,
    /// Answers that contradict what acknowledged writes established.
    pub findings: Vec<String>,
}

/// A resource from its JSON form (the builders below only make valid ones).
fn resource(v: &Value) -> proto::Resource {
    value_to_proto(v).expect("the chaos resources are well-formed JSON objects")
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

impl Writer {
    pub fn new(api: Api, seed: u64, agents: Vec<String>, objs: Vec<Obj>) -> Writer {
        Writer {
            api,
            rng: StdRng::seed_from_u64(seed),
            agents,
            expect: objs.into_iter().map(|o| (o, Expect::Unknown)).collect(),
            stats: Stats::default(),
            findings: Vec::new(),
        }
    }

    /// Run operations at `rate` per second until `until`.
    pub async fn run(mut self, rate: f64, until: Instant) -> Writer {
        let objs: Vec<Obj> = self.expect.keys().copied().collect();
        if objs.is_empty() {
            return self;
        }
        let interval = Duration::from_secs_f64(1.0 / rate.max(0.01));
        let mut next = Instant::now();
        while Instant::now() < until {
            let obj = self.choose(&objs);
            self.step(obj).await;
            next += interval;
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            } else {
                next = now;
            }
        }
        self
    }

    /// An object, with weights by kind so that each kind gets its share of the churn.
    fn choose(&mut self, objs: &[Obj]) -> Obj {
        let weight = |o: &Obj| match o {
            Obj::Pool(_) => 4,
            Obj::Peer(_) => 3,
            Obj::Node(_) => 3,
            Obj::AgentLabel(_) => 1,
            Obj::AgentConfig => 8,
            Obj::BgpConfig => 8,
        };
        let total: u32 = objs.iter().map(weight).sum();
        let mut x = self.rng.random_range(0..total);
        for o in objs {
            let w = weight(o);
            if x < w {
                return *o;
            }
            x -= w;
        }
        objs[objs.len() - 1]
    }

    fn name(&self, obj: Obj) -> String {
        obj.name(&self.agents)
    }

    fn count(&mut self, what: &str, obj: Obj) {
        *self
            .stats
            .ops
            .entry(format!("{what} {}", obj.kind()))
            .or_default() += 1;
    }

    /// Learn an object's state by reading it.
    async fn read(&mut self, obj: Obj) {
        self.stats.reads += 1;
        let (kind, name) = (obj.kind().as_str().to_string(), self.name(obj));
        let what = format!("get {}", obj.kind());
        let r = self
            .api
            .call(&mut self.stats, &what, |mut c| {
                let (kind, name) = (kind.clone(), name.clone());
                async move {
                    c.get(proto::GetRequest {
                        kind,
                        name,
                        show_secrets: false,
                    })
                    .await
                }
            })
            .await;
        let e = match r {
            Outcome::Ok(r) => Expect::Present(Snapshot::of(obj, &r)),
            Outcome::Refused { status, .. } if status.code() == Code::NotFound => Expect::Absent,
            Outcome::Refused { status, .. } => {
                self.findings
                    .push(format!("get {} {name}: {status}", obj.kind()));
                Expect::Unknown
            }
            Outcome::GaveUp => Expect::Unknown,
        };
        self.expect.insert(obj, e);
    }

    async fn step(&mut self, obj: Obj) {
        if self.expect.get(&obj) == Some(&Expect::Unknown) {
            self.read(obj).await;
        }
        let Some(state) = self.expect.get(&obj).cloned() else {
            return;
        };
        match (obj, &state) {
            (_, Expect::Unknown) => {} // still unknown: no replica answered
            (Obj::AgentLabel(_), Expect::Absent) => {} // not registered yet
            (Obj::AgentLabel(_), Expect::Present(_)) => {
                let rack = *pick(&mut self.rng, &[Some("a"), Some("b"), None]);
                self.patch(obj, &state, json!({"metadata": {"labels": {"rack": rack}}}))
                    .await;
            }
            (Obj::AgentConfig, _) => {
                if matches!(state, Expect::Present(_)) && self.rng.random_bool(0.15) {
                    self.delete(obj, &state).await;
                } else {
                    let v = self.agent_config();
                    self.apply(obj, &state, v).await;
                }
            }
            (Obj::BgpConfig, Expect::Present(_)) => {
                let mesh = self.rng.random_bool(0.6);
                self.patch(
                    obj,
                    &state,
                    json!({"spec": {"nodeToNodeMeshEnabled": mesh}}),
                )
                .await;
            }
            (Obj::BgpConfig, Expect::Absent) => {
                let v = json!({"apiVersion": "tern.dev/v1", "kind": "BGPConfiguration",
                    "metadata": {"name": "default"}, "spec": {"nodeToNodeMeshEnabled": true}});
                self.create(obj, &state, v).await;
            }
            (_, Expect::Absent) => {
                let v = self.fresh(obj);
                self.create(obj, &state, v).await;
            }
            (_, Expect::Present(snapshot)) => {
                if self.rng.random_bool(0.3) {
                    self.delete(obj, &state).await;
                } else {
                    let p = self.change(obj, snapshot);
                    self.patch(obj, &state, p).await;
                }
            }
        }
    }

    /// A new object of its kind.
    fn fresh(&mut self, obj: Obj) -> Value {
        let name = self.name(obj);
        match obj {
            Obj::Pool(k) => {
                let cidr = if k % 4 == 3 {
                    format!("fd77:{k}::/48")
                } else {
                    format!("10.{}.0.0/16", 100 + k)
                };
                json!({"apiVersion": "tern.dev/v1", "kind": "IPPool", "metadata": {"name": name},
                    "spec": {"cidr": cidr, "natOutgoing": self.rng.random_bool(0.7),
                             "disabled": self.rng.random_bool(0.15)}})
            }
            Obj::Peer(k) => {
                let spec = match self.rng.random_range(0..4) {
                    0 => json!({"peerIP": format!("10.78.{k}.1"),
                                "asNumber": 64600 + self.rng.random_range(0..50)}),
                    1 => json!({"peerIP": format!("10.78.{k}.1"),
                                "asNumber": 64600 + self.rng.random_range(0..50),
                                "nodeSelector": *pick(&mut self.rng, &["rack == 'a'", "rack == 'b'", "all()"])}),
                    2 => json!({"nodeSelector": "rack == 'a'", "peerSelector": "rack == 'b'"}),
                    _ => json!({"nodeSelector": "rack == 'b'", "peerSelector": "has(rack)"}),
                };
                json!({"apiVersion": "tern.dev/v1", "kind": "BGPPeer", "metadata": {"name": name},
                    "spec": spec})
            }
            Obj::Node(k) => {
                let rack = *pick(&mut self.rng, &["a", "b"]);
                json!({"apiVersion": "tern.dev/v1", "kind": "Node",
                    "metadata": {"name": name, "labels": {"rack": rack}},
                    "spec": {"bgp": {"ipv4Address": format!("10.79.0.{}/24", 10 + k)}}})
            }
            Obj::AgentLabel(_) | Obj::AgentConfig | Obj::BgpConfig => Value::Null,
        }
    }

    /// A merge patch that changes an existing object.
    fn change(&mut self, obj: Obj, state: &Snapshot) -> Value {
        match obj {
            Obj::Pool(_) => {
                if self.rng.random_bool(0.5) {
                    json!({"spec": {"natOutgoing": self.rng.random_bool(0.5)}})
                } else {
                    json!({"spec": {"disabled": self.rng.random_bool(0.3)}})
                }
            }
            // A peering with a router gets another AS number; a node-to-node
            // peering (no peerIP, no AS number) other nodes.
            Obj::Peer(_) => {
                if state.spec.get("peerIP").is_some() {
                    json!({"spec": {"asNumber": 64600 + self.rng.random_range(0..50)}})
                } else {
                    json!({"spec": {"nodeSelector": *pick(&mut self.rng, &["rack == 'a'", "rack == 'b'", "all()"])}})
                }
            }
            Obj::Node(_) => {
                json!({"metadata": {"labels": {"rack": *pick(&mut self.rng, &["a", "b"])}}})
            }
            Obj::AgentLabel(_) | Obj::AgentConfig | Obj::BgpConfig => Value::Null,
        }
    }

    fn agent_config(&mut self) -> Value {
        let mut spec = serde_json::Map::new();
        spec.insert(
            "natOutgoingExclusions".into(),
            json!(*pick(
                &mut self.rng,
                &["IPPoolsOnly", "IPPoolsAndHostIPs", "IPPoolsAndHostIPs"]
            )),
        );
        if self.rng.random_bool(0.3) {
            spec.insert("natPortRange".into(), json!("32768:65535"));
        }
        json!({"apiVersion": "tern.dev/v1", "kind": "AgentConfiguration",
            "metadata": {"name": "default"}, "spec": spec})
    }

    /// Record an acknowledged result.
    fn acknowledged(&mut self, obj: Obj, r: &proto::Resource) {
        self.stats.ok += 1;
        self.expect
            .insert(obj, Expect::Present(Snapshot::of(obj, r)));
    }

    /// A definite refusal: counted; when it contradicts what the writer knew (and no
    /// earlier call of the operation may have landed), a finding. The object is read
    /// back whenever the refusal came after a retry or is a contradiction.
    async fn refused(
        &mut self,
        obj: Obj,
        what: &str,
        status: Status,
        retried: bool,
        contradiction: bool,
    ) {
        self.stats
            .refused
            .entry(code_name(status.code()))
            .or_insert((0, status.message().chars().take(200).collect()))
            .0 += 1;
        if contradiction && !retried {
            let name = self.name(obj);
            self.findings.push(format!(
                "{what} {} {name}: {status} although the acknowledged writes say {:?}",
                obj.kind(),
                self.expect.get(&obj).map(short).unwrap_or_default()
            ));
        }
        if retried || contradiction {
            self.read(obj).await;
        }
    }

    /// Send a write (retrying); None when no replica answered (the object's state is
    /// then unknown).
    async fn write<T, Fut>(
        &mut self,
        verb: &str,
        obj: Obj,
        f: impl FnMut(ResourceServiceClient<Channel>) -> Fut,
    ) -> Option<Result<T, (Status, bool)>>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.count(verb, obj);
        let what = format!("{verb} {}", obj.kind());
        match self.api.call(&mut self.stats, &what, f).await {
            Outcome::Ok(r) => Some(Ok(r)),
            Outcome::Refused { status, retried } => Some(Err((status, retried))),
            Outcome::GaveUp => {
                self.expect.insert(obj, Expect::Unknown);
                None
            }
        }
    }

    async fn create(&mut self, obj: Obj, state: &Expect, v: Value) {
        let res = resource(&v);
        let r = self
            .write("create", obj, |mut c| {
                let resource = Some(res.clone());
                async move { c.create(proto::CreateRequest { resource }).await }
            })
            .await;
        match r {
            None => {}
            Some(Ok(r)) => self.acknowledged(obj, &r),
            Some(Err((status, retried))) => {
                let contradiction =
                    status.code() == Code::AlreadyExists && *state == Expect::Absent;
                self.refused(obj, "create", status, retried, contradiction)
                    .await;
            }
        }
    }

    async fn apply(&mut self, obj: Obj, _state: &Expect, v: Value) {
        let res = resource(&v);
        let r = self
            .write("apply", obj, |mut c| {
                let resource = Some(res.clone());
                async move { c.apply(proto::ApplyRequest { resource }).await }
            })
            .await;
        match r {
            None => {}
            Some(Ok(r)) => match r.resource {
                Some(res) => self.acknowledged(obj, &res),
                None => self.read(obj).await,
            },
            Some(Err((status, retried))) => {
                self.refused(obj, "apply", status, retried, false).await;
            }
        }
    }

    async fn patch(&mut self, obj: Obj, state: &Expect, patch: Value) {
        let (kind, name) = (obj.kind().as_str().to_string(), self.name(obj));
        let patch = patch.to_string();
        let r = self
            .write("patch", obj, |mut c| {
                let req = proto::PatchRequest {
                    kind: kind.clone(),
                    name: name.clone(),
                    r#type: proto::PatchType::Merge as i32,
                    patch: patch.clone(),
                    resource_version: String::new(),
                };
                async move { c.patch(req).await }
            })
            .await;
        match r {
            None => {}
            Some(Ok(r)) => self.acknowledged(obj, &r),
            Some(Err((status, retried))) => {
                let contradiction =
                    status.code() == Code::NotFound && matches!(state, Expect::Present(_));
                self.refused(obj, "patch", status, retried, contradiction)
                    .await;
            }
        }
    }

    async fn delete(&mut self, obj: Obj, state: &Expect) {
        let (kind, name) = (obj.kind().as_str().to_string(), self.name(obj));
        let r = self
            .write("delete", obj, |mut c| {
                let req = proto::DeleteRequest {
                    kind: kind.clone(),
                    name: name.clone(),
                    resource_version: String::new(),
                };
                async move { c.delete(req).await }
            })
            .await;
        let done = match &r {
            None => return,
            Some(Ok(_)) => true,
            // A retry of a delete that landed finds nothing: the delete is done.
            Some(Err((s, retried))) => *retried && s.code() == Code::NotFound,
        };
        if done {
            self.stats.ok += 1;
            self.expect.insert(obj, Expect::Absent);
        } else if let Some(Err((status, retried))) = r {
            let contradiction =
                status.code() == Code::NotFound && matches!(state, Expect::Present(_));
            self.refused(obj, "delete", status, retried, contradiction)
                .await;
        }
    }
}

fn short(e: &Expect) -> String {
    match e {
        Expect::Absent => "absent".into(),
        Expect::Unknown => "unknown".into(),
        Expect::Present(s) => format!("present at {}", s.resource_version),
    }
}

/// Compare what the writers expect with the final intent: lost or resurrected
/// writes. Returns the findings and how many objects were checked.
pub fn check_final(
    expect: &BTreeMap<Obj, Expect>,
    items: &[proto::Resource],
    agents: &[String],
) -> (Vec<String>, usize) {
    let mut by_key: BTreeMap<(String, String), &proto::Resource> = BTreeMap::new();
    for r in items {
        if let Some(m) = &r.metadata {
            by_key.insert((r.kind.to_ascii_lowercase(), m.name.clone()), r);
        }
    }
    let mut findings = Vec::new();
    let mut checked = 0;
    for (obj, e) in expect {
        let name = obj.name(agents);
        let stored = by_key.get(&(obj.kind().as_str().to_ascii_lowercase(), name.clone()));
        match (e, stored) {
            (Expect::Unknown, _) => continue,
            (Expect::Absent, None) => {}
            (Expect::Absent, Some(r)) => findings.push(format!(
                "{} {name} exists (resourceVersion {}) although its last acknowledged write deleted it",
                obj.kind(),
                r.metadata.as_ref().map(|m| m.resource_version.as_str()).unwrap_or("")
            )),
            (Expect::Present(s), None) => findings.push(format!(
                "{} {name} is gone although its last acknowledged write (resourceVersion {}) left it",
                obj.kind(),
                s.resource_version
            )),
            (Expect::Present(s), Some(r)) => {
                let have = Snapshot::of(*obj, r);
                if !s.same(&have) {
                    findings.push(format!(
                        "{} {name}: stored {} {:?} (resourceVersion {}) but the last acknowledged write left {} {:?} (resourceVersion {})",
                        obj.kind(),
                        have.spec,
                        have.labels,
                        have.resource_version,
                        s.spec,
                        s.labels,
                        s.resource_version
                    ));
                }
            }
        }
        checked += 1;
    }
    (findings, checked)
}
