//! `warden authz suggest`: the least-privilege ALLOW AuthorizationPolicies that allow
//! exactly the identity-to-identity traffic the proxies logged as allowed, one per
//! destination (namespace and `app` label), one rule per source principal, every
//! generalization explained in a YAML comment. The result is checked before it is
//! written: it must pass the validation `warden validate` runs, and (when the logs
//! can be read again) every allowed request of the logs is decided against it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use warden_policy::authz::Engine;
use warden_policy::matcher::StringMatch;
use warden_policy::validate::{self, Options};
use warden_policy::yaml_lines::SourceLines;

use super::accesslog::{self, Entry, Registry, id_kind, printable};

/// Exit codes, for `--help`.
pub const EXIT_CODES: &str = "Exit codes:
  0  the policies were written (stdout or --out)
  2  usage or input errors (bad flags, a registry that does not load, a malformed log
     line without --skip-bad-lines; the message names the file and line)";

/// `warden authz suggest`
#[derive(Debug, clap::Args)]
pub struct SuggestArgs {
    /// The proxies' JSON access logs (- for stdin): several after one `--log`
    /// (`--log logs/access-*.log`), or `--log` repeated.
    #[arg(long = "log", required = true, num_args = 1..)]
    log: Vec<PathBuf>,
    /// Directories (or files) whose WorkloadEntries give destination workloads their
    /// labels, e.g. the mesh's config directory; repeatable.
    #[arg(long = "workloads", visible_alias = "config", required = true)]
    workloads: Vec<PathBuf>,
    /// Only destinations in this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Write the YAML here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Namespace whose policies apply mesh-wide (the check of the result).
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// Skip and count malformed lines instead of stopping at the first (exit 2).
    #[arg(long)]
    skip_bad_lines: bool,
}

/// One path pattern a source was seen to use.
#[derive(Debug, Default)]
struct PathObs {
    /// The first concrete path (no query).
    first: String,
    /// Per segment of `first`: whether an ID-like segment took another value.
    varied: Vec<bool>,
    methods: BTreeSet<String>,
    /// Distinct concrete paths, up to 3.
    examples: Vec<String>,
    count: u64,
}

impl PathObs {
    fn add(&mut self, method: &str, path: &str) {
        if self.count == 0 {
            self.first = path.to_string();
            self.varied = vec![false; path.split('/').count()];
        } else {
            for (i, (a, b)) in self.first.split('/').zip(path.split('/')).enumerate() {
                if a != b
                    && let Some(v) = self.varied.get_mut(i)
                {
                    *v = true;
                }
            }
        }
        self.count += 1;
        self.methods.insert(method.to_string());
        if self.examples.len() < 3 && !self.examples.iter().any(|e| e == path) {
            self.examples.push(path.to_string());
        }
    }

    /// The `paths` value and, if it is not the observed path itself, why.
    fn value(&self) -> Result<(String, Option<String>), String> {
        let segments: Vec<&str> = self.first.split('/').collect();
        let varied: Vec<usize> = (0..segments.len())
            .filter(|i| self.varied.get(*i).copied().unwrap_or(false))
            .collect();
        let examples = self
            .examples
            .iter()
            .map(|e| printable(e))
            .collect::<Vec<_>>()
            .join(", ");
        if varied.is_empty() {
            let p = &self.first;
            // Istio reads `*` at either end and `{*}`/`{**}` specially.
            if p.starts_with('*')
                || p.ends_with('*')
                || warden_policy::matcher::PathTemplate::is_template(p)
            {
                return Err(format!(
                    "{}: cannot be written exactly in an AuthorizationPolicy (Istio reads * and {{*}} in paths as wildcards)",
                    printable(p)
                ));
            }
            return Ok((p.clone(), None));
        }
        let kinds: BTreeSet<&str> = varied
            .iter()
            .filter_map(|i| segments.get(*i).and_then(|s| id_kind(s)))
            .collect();
        let kinds: Vec<&str> = kinds.into_iter().collect();
        let positions: Vec<String> = varied.iter().map(ToString::to_string).collect();
        let template: String = segments
            .iter()
            .enumerate()
            .map(|(i, s)| if varied.contains(&i) { "{*}" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let covers = |m: &StringMatch| self.examples.iter().all(|e| m.matches(e));
        if let Ok(m) = StringMatch::path(&template)
            && matches!(m, StringMatch::Template(_))
            && covers(&m)
        {
            return Ok((
                template,
                Some(format!(
                    "segment {} took several ID-like values ({}), e.g. {examples}: one segment each, nothing more",
                    positions.join(", "),
                    kinds.join(", ")
                )),
            ));
        }
        // A literal segment a template cannot hold (an empty one, or characters outside
        // RFC 3986 pchar): the prefix before the first varying segment, which is wider.
        let first = varied.first().copied().unwrap_or(0);
        let prefix = format!("{}/*", segments[..first].join("/"));
        Ok((
            prefix,
            Some(format!(
                "segment {} took several ID-like values, e.g. {examples}; the path does not fit a {{*}} template, so this prefix is WIDER than observed: review it",
                positions.join(", ")
            )),
        ))
    }
}

/// What one source principal was seen doing at one destination.
#[derive(Debug, Default)]
struct SourceObs {
    count: u64,
    /// By path pattern ([`accesslog::pattern`]).
    paths: BTreeMap<String, PathObs>,
    /// TCP connections by workload port.
    tcp_ports: BTreeMap<u16, u64>,
}

/// One destination: a namespace and the selector its policy gets.
#[derive(Debug, Default)]
struct Dest {
    /// The WorkloadEntries the traffic was seen at.
    observed: BTreeSet<String>,
    /// Why this selector.
    selector_why: String,
    sources: BTreeMap<String, SourceObs>,
    plaintext: u64,
    plaintext_examples: Vec<String>,
    /// Denied in the log: (source, operation) → count.
    denied: BTreeMap<(String, String), u64>,
}

fn describe_op(e: &Entry) -> String {
    match &e.http {
        Some((m, _)) => format!(
            "{} {}",
            m,
            e.path().map(accesslog::pattern).unwrap_or_default()
        ),
        None => format!("TCP port {}", e.port.unwrap_or_default()),
    }
}

/// `name` and what a line did there, for comments.
fn d_name(name: &str, e: &Entry) -> String {
    format!(
        "{name} from {} ({})",
        e.source_principal.as_deref().unwrap_or("(plaintext)"),
        describe_op(e)
    )
}

/// The selector for a workload with `labels`, and why; `None` if it has no labels
/// (a policy without a selector would cover the whole namespace).
fn selector(labels: &BTreeMap<String, String>) -> Option<(BTreeMap<String, String>, String)> {
    if let Some(app) = labels.get("app") {
        return Some((
            BTreeMap::from([("app".to_string(), app.clone())]),
            "selector app: the label the versions of a service share, so moving traffic between versions (v1, v2, ...) is not denied; `version` is left out".into(),
        ));
    }
    (!labels.is_empty()).then(|| {
        (
            labels.clone(),
            "selector: all of the WorkloadEntry's labels (it has no `app` label)".into(),
        )
    })
}

/// Everything seen.
#[derive(Debug, Default)]
struct Observed {
    dests: BTreeMap<(String, BTreeMap<String, String>), Dest>,
    /// Lines whose destination could not be used: (destination, why) → count.
    left_out: BTreeMap<(String, String), u64>,
    allowed: u64,
    denied: u64,
    other_namespaces: u64,
}

impl Observed {
    fn add(&mut self, e: &Entry, registry: &Registry, namespace: Option<&str>) {
        let resolved = match registry.resolve(e) {
            Ok(r) => r,
            Err(why) => {
                *self
                    .left_out
                    .entry((e.logged_destination(), why))
                    .or_default() += 1;
                return;
            }
        };
        if namespace.is_some_and(|ns| ns != resolved.workload.namespace) {
            self.other_namespaces += 1;
            return;
        }
        let Some((sel, why)) = selector(&resolved.workload.labels) else {
            *self
                .left_out
                .entry((
                    resolved.name.clone(),
                    "its WorkloadEntry has no labels to select it by".into(),
                ))
                .or_default() += 1;
            return;
        };
        let source = e.source_principal.clone();
        // Istio reads `*` at either end of a value as a wildcard: such a value cannot
        // name one principal or method (no SPIFFE ID or usual method has one).
        let wildcard = |v: &str| v.starts_with('*') || v.ends_with('*');
        if e.recorded == Some(true)
            && (source.as_deref().is_some_and(wildcard)
                || e.http.as_ref().is_some_and(|(m, _)| wildcard(m)))
        {
            *self
                .left_out
                .entry((
                    d_name(&resolved.name, e),
                    "its principal or method has a * at one end, which Istio would read as a wildcard".into(),
                ))
                .or_default() += 1;
            return;
        }
        let d = self
            .dests
            .entry((resolved.workload.namespace.clone(), sel))
            .or_default();
        d.observed.insert(resolved.name);
        d.selector_why = why;
        if e.recorded != Some(true) {
            self.denied += 1;
            let who = source.unwrap_or_else(|| "(plaintext)".into());
            *d.denied.entry((who, describe_op(e))).or_default() += 1;
            return;
        }
        self.allowed += 1;
        let Some(principal) = source else {
            d.plaintext += 1;
            let from = e.source.map(|a| a.ip().to_string()).unwrap_or_default();
            let example = format!("{} from {from}", describe_op(e));
            if d.plaintext_examples.len() < 3 && !d.plaintext_examples.contains(&example) {
                d.plaintext_examples.push(example);
            }
            return;
        };
        let s = d.sources.entry(principal).or_default();
        s.count += 1;
        match (&e.http, e.path()) {
            (Some((method, _)), Some(path)) => s
                .paths
                .entry(accesslog::pattern(path))
                .or_default()
                .add(method, path),
            _ => *s.tcp_ports.entry(e.port.unwrap_or_default()).or_default() += 1,
        }
    }
}

/// A DNS-1123 name for the policy of a destination.
fn policy_name(base: &str, taken: &mut BTreeSet<(String, String)>, namespace: &str) -> String {
    let mut s: String = base
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(40);
    let s = s.trim_matches('-');
    let s = if s.is_empty() { "workload" } else { s };
    let mut name = format!("{s}-observed");
    let mut n = 2;
    while !taken.insert((namespace.to_string(), name.clone())) {
        name = format!("{s}-observed-{n}");
        n += 1;
    }
    name
}

fn q(s: &str) -> String {
    // A JSON string is a YAML double-quoted scalar.
    serde_json::Value::String(s.to_string()).to_string()
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    format!(
        "[{}]",
        items
            .into_iter()
            .map(|s| q(&s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The YAML for everything observed.
fn render(
    obs: &Observed,
    registry: &Registry,
    logs: &[PathBuf],
    stats: &accesslog::ReadStats,
) -> (String, usize) {
    let mut y = String::new();
    let files = logs
        .iter()
        .map(|p| printable(&p.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        y,
        "# Least-privilege AuthorizationPolicies written by `warden authz suggest` from {files}:"
    );
    let _ = writeln!(
        y,
        "# {} allowed and {} denied inbound/gateway requests; {} outbound line{} skipped (the client side of requests the server logged); {} line{} without a decision; {} bad line{} skipped.",
        obs.allowed,
        obs.denied,
        stats.outbound,
        plural(stats.outbound),
        stats.no_decision,
        plural(stats.no_decision),
        stats.bad_lines,
        plural(stats.bad_lines)
    );
    let _ = writeln!(
        y,
        "# Each policy allows only what its destination accepted from a peer identity: one rule per source"
    );
    let _ = writeln!(
        y,
        "# principal with the methods and paths seen (paths without their query; methods are per path)."
    );
    let _ = writeln!(
        y,
        "# A path segment that took several ID-like values (digits, a UUID, 16+ hex digits) becomes the"
    );
    let _ = writeln!(
        y,
        "# one-segment template {{*}} (Istio 1.22+ path templates), never a prefix. HTTP rules do not name"
    );
    let _ = writeln!(
        y,
        "# ports (methods and paths already do); TCP rules name only the workload ports seen."
    );
    if obs.other_namespaces > 0 {
        let _ = writeln!(
            y,
            "# {} request{} to other namespaces left out (--namespace).",
            obs.other_namespaces,
            plural(obs.other_namespaces)
        );
    }
    for ((dest, why), n) in &obs.left_out {
        let _ = writeln!(
            y,
            "# Left out: {n} request{} to {}: {}",
            plural(*n),
            printable(dest),
            printable(why)
        );
    }
    let mut taken = BTreeSet::new();
    let mut written = 0;
    for ((namespace, sel), d) in &obs.dests {
        let base = sel
            .get("app")
            .cloned()
            .or_else(|| {
                d.observed
                    .iter()
                    .next()
                    .and_then(|n| n.split('/').nth(1))
                    .map(String::from)
            })
            .unwrap_or_default();
        let observed: Vec<String> = d.observed.iter().map(|s| printable(s)).collect();
        let selected = registry.selected(namespace, sel);
        let _ = writeln!(y, "---");
        let labels: Vec<String> = sel.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            y,
            "# Destination {} in namespace {}: traffic seen at {}.",
            printable(&labels.join(",")),
            printable(namespace),
            observed.join(", ")
        );
        let _ = writeln!(y, "# {}.", d.selector_why);
        let others: Vec<String> = selected
            .iter()
            .filter(|s| !d.observed.contains(*s))
            .map(|s| printable(s))
            .collect();
        if !others.is_empty() {
            let _ = writeln!(
                y,
                "# It also selects {} (no traffic seen there): only the traffic below will reach them.",
                others.join(", ")
            );
        }
        if d.sources.is_empty() {
            let _ = writeln!(
                y,
                "# No policy written: no request with a peer identity was allowed here. An ALLOW policy would deny"
            );
            let _ = writeln!(
                y,
                "# the {} plaintext request{} allowed in the log ({}), and everything else.",
                d.plaintext,
                plural(d.plaintext),
                d.plaintext_examples
                    .iter()
                    .map(|s| printable(s))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            write_denied(&mut y, d, "");
            continue;
        }
        written += 1;
        let name = policy_name(&base, &mut taken, namespace);
        let _ = writeln!(y, "apiVersion: security.istio.io/v1");
        let _ = writeln!(y, "kind: AuthorizationPolicy");
        let _ = writeln!(y, "metadata:");
        let _ = writeln!(y, "  name: {}", q(&name));
        let _ = writeln!(y, "  namespace: {}", q(namespace));
        let _ = writeln!(y, "spec:");
        let _ = writeln!(y, "  selector:");
        let _ = writeln!(y, "    matchLabels:");
        for (k, v) in sel {
            let _ = writeln!(y, "      {}: {}", q(k), q(v));
        }
        let _ = writeln!(y, "  action: ALLOW");
        let _ = writeln!(y, "  rules:");
        for (principal, s) in &d.sources {
            render_source(&mut y, principal, s);
        }
        if d.plaintext > 0 {
            let _ = writeln!(
                y,
                "  # NOT allowed by this policy: {} plaintext request{} (no peer identity) allowed in the log, e.g. {}.",
                d.plaintext,
                plural(d.plaintext),
                d.plaintext_examples
                    .iter()
                    .map(|s| printable(s))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let _ = writeln!(
                y,
                "  # A rule without a principal would allow any client; give the callers an identity, or add a"
            );
            let _ = writeln!(y, "  # rule with their ipBlocks if that is acceptable.");
        }
        write_denied(&mut y, d, "  ");
    }
    (y, written)
}

fn write_denied(y: &mut String, d: &Dest, indent: &str) {
    if d.denied.is_empty() {
        return;
    }
    let _ = writeln!(
        y,
        "{indent}# Denied in the log, and not allowed by this policy:"
    );
    for ((who, op), n) in &d.denied {
        let _ = writeln!(
            y,
            "{indent}#   {} {} ({n} request{})",
            printable(who),
            printable(op),
            plural(*n)
        );
    }
}

/// A `paths` value, why it is not the observed path itself, and how many requests.
type PathValue = (String, Option<String>, u64);

fn render_source(y: &mut String, principal: &str, s: &SourceObs) {
    let from = |y: &mut String| {
        let _ = writeln!(y, "  - from:");
        let _ = writeln!(y, "    - source:");
        let _ = writeln!(y, "        principals: {}", list([principal.to_string()]));
    };
    // Paths grouped by the methods seen on them: one operation per method set, so a
    // method seen on one path is not allowed on another.
    let mut ops: BTreeMap<Vec<String>, Vec<PathValue>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for p in s.paths.values() {
        match p.value() {
            Ok((value, why)) => ops
                .entry(p.methods.iter().cloned().collect())
                .or_default()
                .push((value, why, p.count)),
            Err(why) => skipped.push(why),
        }
    }
    let http: u64 = s.paths.values().map(|p| p.count).sum();
    if !ops.is_empty() {
        let _ = writeln!(
            y,
            "  # {}: {http} HTTP request{}",
            printable(principal),
            plural(http)
        );
        from(y);
        let _ = writeln!(y, "    to:");
        for (methods, paths) in &ops {
            let _ = writeln!(y, "    - operation:");
            let _ = writeln!(y, "        methods: {}", list(methods.iter().cloned()));
            let _ = writeln!(y, "        paths:");
            for (value, why, n) in paths {
                match why {
                    None => {
                        let _ = writeln!(y, "        - {}  # {n} request{}", q(value), plural(*n));
                    }
                    Some(why) => {
                        let _ = writeln!(y, "        # {}", printable(why));
                        let _ = writeln!(y, "        - {}  # {n} request{}", q(value), plural(*n));
                    }
                }
            }
        }
    }
    for why in skipped {
        let _ = writeln!(
            y,
            "  # NOT allowed by this policy: {} from {}",
            why,
            printable(principal)
        );
    }
    if !s.tcp_ports.is_empty() {
        // A separate rule: on TCP an ALLOW rule with any HTTP field never matches.
        let tcp: u64 = s.tcp_ports.values().sum();
        let _ = writeln!(
            y,
            "  # {}: {tcp} TCP connection{} (ports only: TCP has no methods or paths)",
            printable(principal),
            plural(tcp)
        );
        from(y);
        let _ = writeln!(y, "    to:");
        let _ = writeln!(y, "    - operation:");
        let _ = writeln!(
            y,
            "        ports: {}",
            list(s.tcp_ports.keys().map(ToString::to_string))
        );
    }
}

/// Checks the YAML as `warden validate` does and compiles it; the problems otherwise.
fn check(yaml: &str, root: &str) -> Result<Engine, String> {
    let set = warden_policy::loader::load_str(Path::new("suggested.yaml"), yaml)
        .map_err(|e| e.to_string())?;
    let lines = SourceLines::new(&set);
    let problems = validate::validate(
        &set,
        &lines,
        &Options {
            root_namespace: root.to_string(),
        },
    );
    let errors: Vec<String> = problems
        .iter()
        .filter(|p| p.is_error())
        .map(ToString::to_string)
        .collect();
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    Engine::compile(&set, root).map_err(|e| {
        e.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Runs `warden authz suggest`.
pub fn run(args: SuggestArgs) -> ExitCode {
    let bad = |m: String| {
        eprintln!("warden authz suggest: {m}");
        ExitCode::from(2)
    };
    let (_, registry) = match accesslog::load_sets(&[], &args.workloads) {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    let mut obs = Observed::default();
    let ns = args.namespace.as_deref();
    let stats = match accesslog::read_logs(&args.log, args.skip_bad_lines, "suggest", |e| {
        obs.add(e, &registry, ns);
    }) {
        Ok(s) => s,
        Err(e) => return bad(e.to_string()),
    };
    let (yaml, written) = render(&obs, &registry, &args.log, &stats);
    let engine = match check(&yaml, &args.root_namespace) {
        Ok(e) => e,
        Err(e) => {
            return bad(format!(
                "internal error: the suggested policies do not pass validation (please report):\n{e}"
            ));
        }
    };
    // Decide every allowed request again against the result (the logs are read twice;
    // stdin cannot be).
    let mut verified = None;
    if !args.log.iter().any(|p| p.as_os_str() == "-") {
        let (mut allowed, mut denied_plain, mut denied_other) = (0u64, 0u64, 0u64);
        let again = accesslog::read_logs(&args.log, true, "", |e| {
            if e.recorded != Some(true) {
                return;
            }
            let Ok(r) = registry.resolve(e) else { return };
            if ns.is_some_and(|ns| ns != r.workload.namespace) {
                return;
            }
            let Some(_) = selector(&r.workload.labels) else {
                return;
            };
            let d = engine.evaluate(&r.workload, &e.request(None));
            match (d.allowed, e.source_principal.is_some()) {
                (true, _) => allowed += 1,
                (false, false) => denied_plain += 1,
                (false, true) => denied_other += 1,
            }
        });
        if again.is_ok() {
            verified = Some((allowed, denied_plain, denied_other));
        }
    }
    let write = match &args.out {
        Some(path) => std::fs::write(path, &yaml)
            .map_err(|e| format!("cannot write --out {}: {e}", path.display())),
        None => {
            print!("{yaml}");
            Ok(())
        }
    };
    if let Err(e) = write {
        return bad(e);
    }
    let mut summary = format!(
        "warden authz suggest: {written} AuthorizationPolic{} for {} destination{}",
        if written == 1 { "y" } else { "ies" },
        obs.dests.len(),
        plural(obs.dests.len() as u64)
    );
    if let Some((allowed, plain, other)) = verified {
        let _ = write!(
            summary,
            "; replayed against them, {allowed} allowed request{} stay allowed",
            plural(allowed)
        );
        if plain > 0 {
            let _ = write!(
                summary,
                ", {plain} plaintext would be denied (see the comments)"
            );
        }
        if other > 0 {
            let _ = write!(
                summary,
                ", {other} with an identity would be denied (paths that cannot be written exactly; see the comments)"
            );
        }
    }
    eprintln!("{summary}");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(paths: &[&str]) -> PathObs {
        let mut o = PathObs::default();
        for p in paths {
            o.add("GET", p);
        }
        o
    }

    #[test]
    fn paths_generalize_only_where_an_id_varies() {
        assert_eq!(
            obs(&["/ratings/0", "/ratings/0"]).value().unwrap(),
            ("/ratings/0".into(), None)
        );
        let (v, why) = obs(&["/ratings/0", "/ratings/1"]).value().unwrap();
        assert_eq!(v, "/ratings/{*}");
        assert!(why.unwrap().contains("digits"));
        // Only the segment that varied becomes {*}.
        let (v, _) = obs(&["/a/1/b/2", "/a/1/b/3"]).value().unwrap();
        assert_eq!(v, "/a/1/b/{*}");
        let uuid = "123e4567-e89b-12d3-a456-426614174000";
        let (v, _) = obs(&[&format!("/u/{uuid}/orders"), "/u/7/orders"])
            .value()
            .unwrap();
        assert_eq!(v, "/u/{*}/orders");
        // A literal a template cannot hold: the wider prefix, said so.
        let (v, why) = obs(&["/a=b/1", "/a=b/2"]).value().unwrap();
        assert_eq!(v, "/a=b/*");
        assert!(why.unwrap().contains("WIDER"));
        assert!(obs(&["/files*"]).value().is_err());
    }

    #[test]
    fn plaintext_and_denied_requests_are_comments_not_rules() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: db-v1, namespace: shop}\nspec: {address: 127.0.20.30, labels: {app: db}}\n";
        let set = warden_policy::loader::load_str(Path::new("r.yaml"), yaml).unwrap();
        let registry = Registry::new(&[&set]).unwrap();
        let line = |principal: Option<&str>, port: u16, allowed: bool| Entry {
            direction: accesslog::Direction::Inbound,
            start_time: "t".into(),
            request_id: None,
            source_principal: principal.map(String::from),
            source: "127.0.20.31:4000".parse().ok(),
            local: "127.0.20.30:15006".parse().ok(),
            port: Some(port),
            http: None,
            authority: None,
            sni: None,
            request_principal: None,
            destination_workload: Some(("shop".into(), "db-v1".into())),
            destination_service: None,
            recorded: Some(allowed),
            recorded_policy: None,
        };
        let mut o = Observed::default();
        o.add(
            &line(Some("cluster.local/ns/shop/sa/api"), 5432, true),
            &registry,
            None,
        );
        o.add(&line(None, 5432, true), &registry, None);
        o.add(
            &line(Some("cluster.local/ns/shop/sa/web"), 5432, false),
            &registry,
            None,
        );
        o.add(&line(Some("*"), 5432, true), &registry, None);
        let (y, written) = render(&o, &registry, &[], &accesslog::ReadStats::default());
        assert_eq!(written, 1);
        assert!(y.contains("ports: [\"5432\"]"), "{y}");
        assert!(
            y.contains("NOT allowed by this policy: 1 plaintext request"),
            "{y}"
        );
        assert!(
            y.contains("#   cluster.local/ns/shop/sa/web TCP port 5432 (1 request)"),
            "{y}"
        );
        assert!(y.contains("read as a wildcard"), "{y}");
        assert!(!y.contains("principals: [\"*\"]"), "{y}");
        check(&y, "istio-system").unwrap();
    }

    #[test]
    fn names_are_dns_labels_and_unique() {
        let mut taken = BTreeSet::new();
        assert_eq!(
            policy_name("Reviews_App", &mut taken, "b"),
            "reviews-app-observed"
        );
        assert_eq!(
            policy_name("reviews.app", &mut taken, "b"),
            "reviews-app-observed-2"
        );
        assert_eq!(policy_name("__", &mut taken, "b"), "workload-observed");
    }

    #[test]
    fn selectors_prefer_app() {
        let l = BTreeMap::from([
            ("app".into(), "reviews".into()),
            ("version".into(), "v2".into()),
        ]);
        let (sel, _) = selector(&l).unwrap();
        assert_eq!(sel.len(), 1);
        assert!(selector(&BTreeMap::new()).is_none());
    }
}
