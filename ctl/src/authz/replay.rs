//! `warden authz replay`: re-decides every request the proxies recorded (inbound and
//! gateway lines of the JSON access log) under a proposed policy set, and reports what
//! would change, grouped by source principal, destination, method and path pattern.
//!
//! The log does not hold every attribute a policy can read: request headers, JWT
//! claims other than `iss/sub`, and at a gateway the client address derived from
//! X-Forwarded-For. A line is decided in two extra worlds, one where every rule that
//! reads such an attribute matches whenever the rest of it does in the direction that
//! denies (DENY and CUSTOM rules widened, ALLOW rules never matching) and one in the
//! direction that allows; a decision is only reported as certain when both worlds and
//! the plain one agree (a decision is monotone in each rule's match), otherwise the line
//! is "uncertain" with the policies and attributes responsible.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use warden_policy::authz::{Engine, Workload};
use warden_policy::loader::ConfigSet;
use warden_policy::peer_authn::PeerAuthn;
use warden_policy::request_authn;
use warden_policy::resources::{
    Action, AuthorizationPolicySpec, MtlsMode, Rule, RuleFrom, Source, has_target_refs,
};

use super::accesslog::{self, Direction, Entry, Registry, printable};

/// Exit codes, for `--help`.
pub const EXIT_CODES: &str = "Exit codes:
  0  no allowed request would be denied (or --accept)
  1  some allowed request would be denied (with --fail-on-uncertain: or may be denied,
     or could not be decided)
  2  usage or input errors (bad flags, policies that do not load, a malformed log line
     without --skip-bad-lines; the message names the file and line)";

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A report for people.
    Human,
    /// One JSON object.
    Json,
}

/// `warden authz replay`
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The proposed policy set: files or directories (Istio YAML), repeatable. Its
    /// WorkloadEntries are the registry too.
    #[arg(long = "config", required = true)]
    config: Vec<PathBuf>,
    /// More directories whose WorkloadEntries give destination workloads their labels
    /// (their policies are not used); repeatable.
    #[arg(long = "workloads")]
    workloads: Vec<PathBuf>,
    /// The proxies' JSON access logs (- for stdin): several after one `--log`
    /// (`--log logs/access-*.log`), or `--log` repeated.
    #[arg(long = "log", required = true, num_args = 1..)]
    log: Vec<PathBuf>,
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// The mesh's trust domain (`cluster.local` in policies stands for it).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// `human` or `json`.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    /// Exit 0 even if allowed requests would be denied (the change is intended).
    #[arg(long)]
    accept: bool,
    /// Also exit 1 when an allowed request may be denied (uncertain) or a line cannot
    /// be decided (its destination workload is not in the registry).
    #[arg(long)]
    fail_on_uncertain: bool,
    /// Skip and count malformed lines instead of stopping at the first (exit 2).
    #[arg(long)]
    skip_bad_lines: bool,
}

/// Attributes a line does not record, beyond request headers (never recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Unrecorded {
    /// JWT claims (the line has a request principal: only `iss/sub` is logged).
    claims: bool,
    /// `remote.ip` (a gateway derives it from X-Forwarded-For).
    remote: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum World {
    /// Unrecorded attributes push toward deny.
    Deny,
    /// Unrecorded attributes push toward allow.
    Allow,
}

/// The unrecorded attribute a condition key reads, if any.
fn unrecorded_key(key: &str, u: Unrecorded) -> bool {
    key.starts_with("request.headers")
        || (u.claims
            && (key.starts_with("request.auth.claims")
                || key == "request.auth.audiences"
                || key == "request.auth.presenter"))
        || (u.remote && key == "remote.ip")
}

fn source_unrecorded(s: &Source, u: Unrecorded) -> Vec<&'static str> {
    let mut out = Vec::new();
    if u.remote && s.remote_ip_blocks.is_some() {
        out.push("source.remoteIpBlocks");
    }
    if u.remote && s.not_remote_ip_blocks.is_some() {
        out.push("source.notRemoteIpBlocks");
    }
    out
}

/// The unrecorded attributes `rule` reads, in Istio's words.
fn rule_refs(rule: &Rule, u: Unrecorded) -> Vec<String> {
    let mut out: Vec<String> = rule
        .when
        .iter()
        .flatten()
        .filter(|c| unrecorded_key(&c.key, u))
        .map(|c| c.key.clone())
        .collect();
    for f in rule.from.iter().flatten() {
        if let Some(s) = &f.source {
            out.extend(source_unrecorded(s, u).into_iter().map(String::from));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `rule` without what reads unrecorded attributes: it matches whenever the rest does.
fn widen(rule: &Rule, u: Unrecorded) -> Rule {
    let mut r = rule.clone();
    if let Some(when) = &mut r.when {
        when.retain(|c| !unrecorded_key(&c.key, u));
    }
    for f in r.from.iter_mut().flatten() {
        if let Some(s) = &mut f.source
            && u.remote
        {
            s.remote_ip_blocks = None;
            s.not_remote_ip_blocks = None;
        }
    }
    r
}

/// A rule that matches nothing (a principal that is and is not one value), kept in
/// place so rule numbers stay the policy's own.
fn never() -> Rule {
    let v = Some(vec!["warden-replay/never".to_string()]);
    Rule {
        from: Some(vec![RuleFrom {
            source: Some(Source {
                principals: v.clone(),
                not_principals: v,
                ..Source::default()
            }),
        }]),
        to: None,
        when: None,
    }
}

/// The AuthorizationPolicies of `set` in `world` for lines missing `u`.
fn transform(set: &ConfigSet, u: Unrecorded, world: World) -> ConfigSet {
    let mut policies = set.authorization_policies.clone();
    for p in &mut policies {
        let spec: &mut AuthorizationPolicySpec = &mut p.resource.spec;
        // A DENY or CUSTOM match can only take an allow away (or hand it to a provider).
        let toward_deny = match spec.action {
            Action::Deny | Action::Custom => true,
            Action::Allow => false,
            Action::Audit => continue,
        };
        for r in spec.rules.iter_mut().flatten() {
            if rule_refs(r, u).is_empty() {
                continue;
            }
            *r = if toward_deny == (world == World::Deny) {
                widen(r, u)
            } else {
                never()
            };
        }
    }
    ConfigSet {
        authorization_policies: policies,
        ..ConfigSet::default()
    }
}

/// A policy whose rules read attributes some lines do not record.
#[derive(Debug)]
struct PolicyRefs {
    name: String,
    namespace: String,
    action: Action,
    selector: Option<BTreeMap<String, String>>,
    /// Per rule index, the unrecorded attributes for the widest [`Unrecorded`].
    rules: Vec<(usize, Vec<String>)>,
}

/// The replay of one line.
#[derive(Debug)]
enum Verdict {
    Certain { allowed: bool, why: String },
    Uncertain { reasons: Vec<String> },
    Undecidable { why: String },
}

/// The proposed set, compiled, and what it needs per line.
struct Replayer {
    set: ConfigSet,
    registry: Registry,
    root: String,
    trust_domain: String,
    exact: Engine,
    peer: PeerAuthn,
    refs: Vec<PolicyRefs>,
    worlds: HashMap<(Unrecorded, World), Engine>,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("root", &self.root)
            .finish()
    }
}

fn compile_errors(errors: &[warden_policy::loader::CompileError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Replayer {
    fn new(
        set: ConfigSet,
        registry: Registry,
        root: &str,
        trust_domain: &str,
    ) -> Result<Self, String> {
        let exact =
            Engine::compile_for(&set, root, trust_domain).map_err(|e| compile_errors(&e))?;
        let peer = PeerAuthn::new(&set, root);
        let widest = Unrecorded {
            claims: true,
            remote: true,
        };
        let refs = set
            .authorization_policies
            .iter()
            .filter(|p| {
                let s = &p.resource.spec;
                !has_target_refs(s.target_ref.as_ref(), s.target_refs.as_ref())
                    && s.action != Action::Audit
            })
            .filter_map(|p| {
                let rules: Vec<(usize, Vec<String>)> = p
                    .resource
                    .spec
                    .rules
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, r)| (i, rule_refs(r, widest)))
                    .filter(|(_, refs)| !refs.is_empty())
                    .collect();
                (!rules.is_empty()).then(|| PolicyRefs {
                    name: format!("{}/{}", p.resource.namespace(), p.resource.metadata.name),
                    namespace: p.resource.namespace().to_string(),
                    action: p.resource.spec.action,
                    selector: p
                        .resource
                        .spec
                        .selector
                        .as_ref()
                        .map(|s| s.match_labels.clone()),
                    rules,
                })
            })
            .collect();
        Ok(Self {
            set,
            registry,
            root: root.to_string(),
            trust_domain: trust_domain.to_string(),
            exact,
            peer,
            refs,
            worlds: HashMap::new(),
        })
    }

    /// The policies applying to `w` that read what `u` (and headers) leave out, as
    /// reasons.
    fn reasons(&self, w: &Workload, u: Unrecorded) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.refs {
            if !(p.namespace == self.root || p.namespace == w.namespace)
                || !w.selected_by(p.selector.as_ref())
            {
                continue;
            }
            for (i, attrs) in &p.rules {
                let attrs: Vec<&String> = attrs
                    .iter()
                    .filter(|a| unrecorded_key(a, u) || (u.remote && a.starts_with("source.")))
                    .collect();
                if !attrs.is_empty() {
                    let attrs: Vec<&str> = attrs.iter().map(|s| s.as_str()).collect();
                    out.push(format!(
                        "{} {} rule {i} reads {}, which the access log does not record",
                        action_name(p.action),
                        p.name,
                        attrs.join(", ")
                    ));
                }
            }
        }
        out
    }

    fn world(&mut self, u: Unrecorded, world: World) -> Result<&Engine, String> {
        if !self.worlds.contains_key(&(u, world)) {
            let set = transform(&self.set, u, world);
            let engine = Engine::compile_for(&set, &self.root, &self.trust_domain)
                .map_err(|e| compile_errors(&e))?;
            self.worlds.insert((u, world), engine);
        }
        self.worlds
            .get(&(u, world))
            .ok_or_else(|| "internal: replay world missing".to_string())
    }

    /// The JWT claims to decide `e` with: one `{iss, sub}` per issuer of the
    /// RequestAuthentications applying to `w` that the logged `iss/sub` can be split
    /// at (an issuer may hold `/`), or why there is none.
    fn claims(
        &self,
        e: &Entry,
        w: &Workload,
        name: &str,
    ) -> Result<Vec<Option<serde_json::Value>>, String> {
        let Some(rp) = e.request_principal.as_deref().filter(|_| e.http.is_some()) else {
            return Ok(vec![None]);
        };
        let mut out: Vec<Option<serde_json::Value>> = Vec::new();
        for p in &self.set.request_authentications {
            if !request_authn::applies(p, &self.root, w) {
                continue;
            }
            for rule in &p.resource.spec.jwt_rules {
                if let Some(sub) = rp
                    .strip_prefix(rule.issuer.as_str())
                    .and_then(|r| r.strip_prefix('/'))
                    .filter(|s| !s.is_empty())
                {
                    let c = Some(serde_json::json!({"iss": rule.issuer, "sub": sub}));
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(format!(
                "the request carried a JWT ({}) and no RequestAuthentication of the proposed set for {name} accepts its issuer: the token would be refused or not validated, which the log cannot tell",
                printable(rp)
            ));
        }
        Ok(out)
    }

    fn decide(&mut self, e: &Entry) -> (String, Verdict) {
        let resolved = match self.registry.resolve(e) {
            Ok(r) => r,
            Err(why) => return (e.logged_destination(), Verdict::Undecidable { why }),
        };
        let (name, w) = (resolved.name, resolved.workload);
        let port = e.port.unwrap_or_default();
        // The sidecar refuses a plaintext peer under STRICT before any HTTP filter; a
        // gateway's listeners do not apply PeerAuthentication.
        if e.direction == Direction::Inbound && e.source_principal.is_none() {
            let m = self.peer.mode(&w, port);
            if m.mode == MtlsMode::Strict {
                let why = format!(
                    "refused before authorization: {} requires mutual TLS on port {port} and the peer is plaintext",
                    m.policy.as_deref().map_or_else(
                        || "the mesh default".into(),
                        |p| format!("PeerAuthentication {p}")
                    )
                );
                return (
                    name,
                    Verdict::Certain {
                        allowed: false,
                        why,
                    },
                );
            }
        }
        let jwts = match self.claims(e, &w, &name) {
            Ok(j) => j,
            Err(why) => return (name, Verdict::Uncertain { reasons: vec![why] }),
        };
        let u = Unrecorded {
            claims: e.request_principal.is_some(),
            remote: e.direction == Direction::Gateway,
        };
        let http = e.http.is_some();
        let mut outcomes = BTreeSet::new();
        let mut reasons = Vec::new();
        let mut why = String::new();
        for jwt in jwts {
            let req = e.request(jwt);
            let d = self.exact.evaluate(&w, &req);
            outcomes.insert(d.allowed);
            why = d.reason.clone();
            let mut custom = d.custom.clone();
            if http && !self.reasons(&w, u).is_empty() {
                for world in [World::Deny, World::Allow] {
                    match self.world(u, world) {
                        Ok(engine) => {
                            let d = engine.evaluate(&w, &req);
                            outcomes.insert(d.allowed);
                            if custom.is_none() {
                                custom = d.custom;
                            }
                        }
                        Err(e) => reasons.push(e),
                    }
                }
            }
            if let Some((provider, m)) = custom {
                let r = format!(
                    "CUSTOM {} rule {} may match: the external authorizer {provider:?} decides",
                    m.policy, m.rule
                );
                if !reasons.contains(&r) {
                    reasons.push(r);
                }
            }
        }
        if outcomes.len() > 1 {
            reasons.extend(self.reasons(&w, u));
        }
        if outcomes.len() > 1 || !reasons.is_empty() {
            if reasons.is_empty() {
                reasons.push("the decision depends on how the logged request principal splits into issuer and subject".into());
            }
            return (name, Verdict::Uncertain { reasons });
        }
        let allowed = outcomes.into_iter().next().unwrap_or(false);
        (name, Verdict::Certain { allowed, why })
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
        Action::Custom => "CUSTOM",
    }
}

/// What a group is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
struct GroupKey {
    /// The peer principal (`None`: plaintext).
    source: Option<String>,
    /// `namespace/workload`, or what the line names when the workload is unknown.
    destination: String,
    /// The workload port.
    port: Option<u16>,
    /// `None`: TCP.
    method: Option<String>,
    /// The path with ID-like segments as `*` (`None`: TCP).
    path: Option<String>,
    /// The recorded decision.
    recorded: &'static str,
}

#[derive(Debug, Clone, Serialize)]
struct Example {
    start_time: String,
    request_id: Option<String>,
    /// Without the query (which can hold credentials).
    path: Option<String>,
}

/// Up to this many examples and distinct reasons per group.
const EXAMPLES: usize = 3;

#[derive(Debug, Default, Serialize)]
struct Group {
    count: u64,
    /// Why the replayed decision is what it is (or is uncertain), distinct, up to 3.
    now: Vec<String>,
    /// The recorded deciding policy, distinct, up to 3.
    was: Vec<String>,
    examples: Vec<Example>,
}

fn push_distinct(v: &mut Vec<String>, s: String) {
    if v.len() < EXAMPLES && !v.contains(&s) {
        v.push(s);
    }
}

#[derive(Debug, Default)]
struct Section {
    requests: u64,
    groups: BTreeMap<GroupKey, Group>,
}

impl Section {
    fn add(&mut self, key: GroupKey, e: &Entry, now: &[String]) {
        self.requests += 1;
        let g = self.groups.entry(key).or_default();
        g.count += 1;
        for n in now {
            push_distinct(&mut g.now, n.clone());
        }
        let decision = if e.recorded == Some(true) {
            "allowed"
        } else {
            "denied"
        };
        push_distinct(
            &mut g.was,
            e.recorded_policy.as_ref().map_or_else(
                || format!("{decision} (the line names no policy)"),
                |p| format!("{decision} by {p}"),
            ),
        );
        if g.examples.len() < EXAMPLES {
            g.examples.push(Example {
                start_time: e.start_time.clone(),
                request_id: e.request_id.clone(),
                path: e.path().map(String::from),
            });
        }
    }

    fn json(&self) -> serde_json::Value {
        let groups: Vec<serde_json::Value> = self
            .groups
            .iter()
            .map(|(k, g)| {
                let mut v = serde_json::json!(k);
                if let (Some(obj), serde_json::Value::Object(extra)) =
                    (v.as_object_mut(), serde_json::json!(g))
                {
                    obj.extend(extra);
                }
                v
            })
            .collect();
        serde_json::json!({"requests": self.requests, "groups": groups})
    }

    fn human(&self, title: &str, out: &mut String) {
        use std::fmt::Write as _;
        if self.requests == 0 {
            let _ = writeln!(out, "{title}: none");
            return;
        }
        let _ = writeln!(
            out,
            "{title}: {} request{} in {} group{}",
            self.requests,
            plural(self.requests),
            self.groups.len(),
            plural(self.groups.len() as u64)
        );
        for (k, g) in &self.groups {
            let port = k.port.map(|p| format!(":{p}")).unwrap_or_default();
            let op = match (&k.method, &k.path) {
                (Some(m), Some(p)) => format!("{} {}", printable(m), printable(p)),
                _ => "TCP".into(),
            };
            let _ = writeln!(
                out,
                "  {} -> {}{port}  {op}  (was {}) x{}",
                k.source
                    .as_deref()
                    .map_or_else(|| "(plaintext)".into(), printable),
                printable(&k.destination),
                k.recorded,
                g.count
            );
            for n in &g.now {
                let _ = writeln!(out, "      now: {}", printable(n));
            }
            let _ = writeln!(
                out,
                "      was: {}",
                g.was
                    .iter()
                    .map(|w| printable(w))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            for x in &g.examples {
                let _ = writeln!(
                    out,
                    "      e.g. {} {} {}",
                    printable(&x.start_time),
                    x.request_id
                        .as_deref()
                        .map_or_else(|| "-".into(), printable),
                    x.path.as_deref().map_or_else(|| "-".into(), printable)
                );
            }
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Everything replay found.
#[derive(Debug, Default)]
struct Report {
    allow_to_deny: Section,
    deny_to_allow: Section,
    uncertain: Section,
    undecidable: Section,
    unchanged_allowed: u64,
    unchanged_denied: u64,
    with_jwt: u64,
}

impl Report {
    fn add(&mut self, e: &Entry, destination: String, verdict: Verdict) {
        let recorded = e.recorded.unwrap_or(false);
        if e.request_principal.is_some() {
            self.with_jwt += 1;
        }
        let key = GroupKey {
            source: e.source_principal.clone(),
            destination,
            port: e.port,
            method: e.http.as_ref().map(|(m, _)| m.clone()),
            path: e.path().map(accesslog::pattern),
            recorded: if recorded { "allowed" } else { "denied" },
        };
        match verdict {
            Verdict::Certain { allowed, why } => match (recorded, allowed) {
                (true, true) => self.unchanged_allowed += 1,
                (false, false) => self.unchanged_denied += 1,
                (true, false) => self.allow_to_deny.add(key, e, &[why]),
                (false, true) => self.deny_to_allow.add(key, e, &[why]),
            },
            Verdict::Uncertain { reasons } => self.uncertain.add(key, e, &reasons),
            Verdict::Undecidable { why } => self.undecidable.add(key, e, &[why]),
        }
    }

    /// Allowed requests that may be denied (uncertain, recorded allowed).
    fn uncertain_allowed(&self) -> u64 {
        self.uncertain
            .groups
            .iter()
            .filter(|(k, _)| k.recorded == "allowed")
            .map(|(_, g)| g.count)
            .sum()
    }
}

/// Runs `warden authz replay`.
pub fn run(args: ReplayArgs) -> ExitCode {
    let bad = |m: String| {
        eprintln!("warden authz replay: {m}");
        ExitCode::from(2)
    };
    let (set, registry) = match accesslog::load_sets(&args.config, &args.workloads) {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    let entries = registry.len();
    let mut replayer = match Replayer::new(set, registry, &args.root_namespace, &args.trust_domain)
    {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let mut report = Report::default();
    let read = accesslog::read_logs(&args.log, args.skip_bad_lines, "replay", |e| {
        let (destination, verdict) = replayer.decide(e);
        report.add(e, destination, verdict);
    });
    let stats = match read {
        Ok(s) => s,
        Err(e) => return bad(e.to_string()),
    };
    let decided = report.unchanged_allowed
        + report.unchanged_denied
        + report.allow_to_deny.requests
        + report.deny_to_allow.requests
        + report.uncertain.requests
        + report.undecidable.requests;
    let mut notes = Vec::new();
    if stats.outbound > 0 {
        notes.push(format!(
            "{} outbound line{} skipped: the client side of requests, decided (and logged) by the server's sidecar",
            stats.outbound,
            plural(stats.outbound)
        ));
    }
    if stats.no_decision > 0 {
        notes.push(format!(
            "{} inbound/gateway line{} without a recorded decision (refused before authorization) skipped",
            stats.no_decision,
            plural(stats.no_decision)
        ));
    }
    if stats.bad_lines > 0 {
        notes.push(format!(
            "{} malformed line{} skipped (--skip-bad-lines)",
            stats.bad_lines,
            plural(stats.bad_lines)
        ));
    }
    if report.with_jwt > 0 {
        notes.push(format!(
            "{} request{} carried a JWT: RequestAuthentication is not re-run (tokens are not logged); the logged request_principal is taken as the validated identity",
            report.with_jwt,
            plural(report.with_jwt)
        ));
    }
    if entries == 0 {
        notes.push("no WorkloadEntry in --config or --workloads: no line can be decided".into());
    }
    let breaks = report.allow_to_deny.requests;
    let uncertain = report.uncertain_allowed();
    let undecidable = report.undecidable.requests;
    let maybe = uncertain + undecidable;
    let fail = !args.accept && (breaks > 0 || (args.fail_on_uncertain && maybe > 0));
    let mut result = format!("{breaks} allowed request{} would be denied", plural(breaks));
    if maybe > 0 {
        result.push_str(&format!(
            "; {uncertain} allowed request{} may be (uncertain) and {undecidable} request{} could not be decided",
            plural(uncertain),
            plural(undecidable)
        ));
    }
    result.push_str(match (fail, breaks > 0 || maybe > 0) {
        (true, _) => " (exit 1; --accept if intended)",
        (false, true) if args.accept => " (accepted)",
        _ => "",
    });
    match args.output {
        Output::Json => {
            let v = serde_json::json!({
                "files": stats.files,
                "lines": stats.lines,
                "decisions": decided,
                "skipped": {
                    "outbound": stats.outbound,
                    "no_decision": stats.no_decision,
                    "bad_lines": stats.bad_lines,
                },
                "unchanged": {"allowed": report.unchanged_allowed, "denied": report.unchanged_denied},
                "allow_to_deny": report.allow_to_deny.json(),
                "deny_to_allow": report.deny_to_allow.json(),
                "uncertain": report.uncertain.json(),
                "undecidable": report.undecidable.json(),
                "notes": notes,
                "result": result,
            });
            match serde_json::to_string_pretty(&v) {
                Ok(s) => println!("{s}"),
                Err(e) => return bad(e.to_string()),
            }
        }
        Output::Human => {
            let mut out = format!(
                "replayed {decided} decision{} from {} line{} in {} file{}\n",
                plural(decided),
                stats.lines,
                plural(stats.lines),
                stats.files,
                plural(stats.files as u64)
            );
            for n in &notes {
                out.push_str(&format!("note: {n}\n"));
            }
            report
                .allow_to_deny
                .human("ALLOWED -> DENIED (would break)", &mut out);
            report
                .deny_to_allow
                .human("DENIED -> ALLOWED (would open)", &mut out);
            report.uncertain.human(
                "UNCERTAIN (the policies read what the log does not record)",
                &mut out,
            );
            report.undecidable.human(
                "UNDECIDABLE (destination workload not in the registry)",
                &mut out,
            );
            out.push_str(&format!(
                "unchanged: {} allowed, {} denied\nresult: {result}\n",
                report.unchanged_allowed, report.unchanged_denied
            ));
            print!("{out}");
        }
    }
    if fail {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const POLICIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-v1, namespace: bookinfo}
spec: {address: 127.0.20.14, labels: {app: ratings, version: v1}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bookinfo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: ratings}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/bookinfo/sa/reviews"]}}]
    to: [{operation: {methods: ["GET"]}}]
  - from: [{source: {principals: ["cluster.local/ns/bookinfo/sa/productpage"]}}]
    when: [{key: "request.headers[x-canary]", values: ["1"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-tokens, namespace: bookinfo}
spec:
  action: DENY
  selector: {matchLabels: {app: ratings}}
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
    when: [{key: "request.auth.claims[group]", values: ["guests"]}]
"#;

    fn entry(principal: &str, method: &str, path: &str, jwt: Option<&str>) -> Entry {
        Entry {
            direction: Direction::Inbound,
            start_time: "t".into(),
            request_id: None,
            source_principal: Some(principal.into()),
            source: "127.0.20.13:4000".parse().ok(),
            local: "127.0.20.14:15006".parse().ok(),
            port: Some(9080),
            http: Some((method.into(), path.into())),
            authority: Some("ratings".into()),
            sni: None,
            request_principal: jwt.map(String::from),
            destination_workload: Some(("bookinfo".into(), "ratings-v1".into())),
            destination_service: None,
            recorded: Some(true),
            recorded_policy: None,
        }
    }

    fn replayer() -> Replayer {
        let set = warden_policy::loader::load_str(Path::new("p.yaml"), POLICIES).unwrap();
        let registry = Registry::new(&[&set]).unwrap();
        Replayer::new(set, registry, "istio-system", "cluster.local").unwrap()
    }

    #[test]
    fn recorded_attributes_decide_with_certainty() {
        let mut r = replayer();
        let reviews = "cluster.local/ns/bookinfo/sa/reviews";
        let (dest, v) = r.decide(&entry(reviews, "GET", "/ratings/0", None));
        assert_eq!(dest, "bookinfo/ratings-v1");
        assert!(matches!(v, Verdict::Certain { allowed: true, .. }), "{v:?}");
        let (_, v) = r.decide(&entry(reviews, "POST", "/ratings/0", None));
        assert!(
            matches!(v, Verdict::Certain { allowed: false, .. }),
            "{v:?}"
        );
    }

    #[test]
    fn plaintext_under_strict_is_refused_before_any_policy() {
        let mut r = replayer();
        let mut e = entry("x", "GET", "/ratings/0", None);
        e.source_principal = None;
        let (_, v) = r.decide(&e);
        let Verdict::Certain { allowed, why } = v else {
            panic!("{v:?}")
        };
        assert!(!allowed);
        assert!(
            why.contains("PeerAuthentication bookinfo/default requires mutual TLS"),
            "{why}"
        );
    }

    #[test]
    fn headers_make_a_decision_uncertain_only_where_they_matter() {
        let mut r = replayer();
        // productpage is allowed only with a header the log does not have.
        let (_, v) = r.decide(&entry(
            "cluster.local/ns/bookinfo/sa/productpage",
            "GET",
            "/",
            None,
        ));
        let Verdict::Uncertain { reasons } = v else {
            panic!("{v:?}")
        };
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("bookinfo/ratings rule 1 reads request.headers[x-canary]")),
            "{reasons:?}"
        );
        // Someone else is denied whatever the header says: rule 1 needs productpage.
        let (_, v) = r.decide(&entry("cluster.local/ns/x/sa/y", "GET", "/", None));
        assert!(
            matches!(v, Verdict::Certain { allowed: false, .. }),
            "{v:?}"
        );
    }

    #[test]
    fn claims_matter_only_with_a_token_and_a_known_issuer() {
        let mut r = replayer();
        let reviews = "cluster.local/ns/bookinfo/sa/reviews";
        // Without a token there are no claims: the DENY rule cannot match.
        let (_, v) = r.decide(&entry(reviews, "GET", "/admin/x", None));
        assert!(matches!(v, Verdict::Certain { allowed: true, .. }), "{v:?}");
        // A token, but no RequestAuthentication for its issuer in the proposed set.
        let (_, v) = r.decide(&entry(
            reviews,
            "GET",
            "/admin/x",
            Some("https://idp/a/alice"),
        ));
        let Verdict::Uncertain { reasons } = v else {
            panic!("{v:?}")
        };
        assert!(
            reasons[0].contains("no RequestAuthentication"),
            "{reasons:?}"
        );
    }

    #[test]
    fn worlds_widen_and_narrow_by_action() {
        let set = warden_policy::loader::load_str(Path::new("p.yaml"), POLICIES).unwrap();
        let u = Unrecorded {
            claims: true,
            remote: false,
        };
        let deny = transform(&set, u, World::Deny);
        let ratings = &deny.authorization_policies[0].resource.spec;
        assert_eq!(ratings.rules.as_ref().unwrap()[1], never());
        let no_tokens = &deny.authorization_policies[1].resource.spec;
        assert_eq!(no_tokens.rules.as_ref().unwrap()[0].when, Some(vec![]));
        let allow = transform(&set, u, World::Allow);
        let no_tokens = &allow.authorization_policies[1].resource.spec;
        assert_eq!(no_tokens.rules.as_ref().unwrap()[0], never());
    }
}
