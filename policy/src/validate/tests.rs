//! Unit tests of `warden validate`: each webhook rule refuses its case, valid policies
//! pass, warnings do not refuse, problems point at the field's line, and the Go value
//! parsers (addresses, durations) agree with Go's.

use super::request_authentication::go_duration;
use super::values::ip_or_cidr;
use super::*;

/// Problems of the policies in `text` as if loaded from `file` (for tests).
fn validate_text(file: &Path, text: &str, options: &Options) -> Vec<Problem> {
    let set = crate::loader::load_str(file, text).unwrap_or_else(|e| panic!("{e}"));
    let mut lines = SourceLines::default();
    lines.insert(file, text);
    validate(&set, &lines, options)
}

fn run(text: &str) -> Vec<Problem> {
    validate_text(Path::new("p.yaml"), text, &Options::default())
}

/// The rows of a table: one case a line, columns separated by ` | `.
fn rows<const N: usize>(table: &str) -> impl Iterator<Item = [&str; N]> {
    table.lines().filter(|l| !l.is_empty()).map(|l| {
        let cols: Vec<&str> = l.split(" | ").collect();
        cols.try_into()
            .unwrap_or_else(|c| panic!("{N} columns expected: {c:?}"))
    })
}

/// A resource named `foo/p` with `spec`, which may start with `@NS ` (another
/// namespace) or `@DRYRUN=V ` (an `istio.io/dry-run` annotation), or be
/// `@513RULES`.
fn text_of(kind: &str, spec: &str) -> String {
    if spec == "@513RULES" {
        return text_of(
            kind,
            &format!("{{rules: [{}]}}", vec!["{}"; 513].join(", ")),
        );
    }
    let (mut ns, mut meta, mut spec) = ("foo", String::new(), spec);
    while let Some((word, rest)) = spec.strip_prefix('@').and_then(|s| s.split_once(' ')) {
        match word.strip_prefix("DRYRUN=") {
            Some(v) => meta = format!(", annotations: {{istio.io/dry-run: '{v}'}}"),
            None => ns = word,
        }
        spec = rest;
    }
    format!(
        "apiVersion: security.istio.io/v1\nkind: {kind}\n\
             metadata: {{name: p, namespace: {ns}{meta}}}\nspec: {spec}\n"
    )
}

/// (case, kind, spec, path, message substring): each spec must be refused at
/// `path` with a message containing the substring.
const REFUSED: &str = r#"
selector and targetRef | AuthorizationPolicy | {selector: {matchLabels: {app: a}}, targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}, rules: [{}]} | spec.targetRef | only one of targetRefs or workloadSelector
selector and targetRefs | AuthorizationPolicy | {selector: {matchLabels: {app: a}}, targetRefs: [{kind: Service, name: s}], rules: [{}]} | spec.targetRefs | only one of targetRefs or workloadSelector
targetRef without name | AuthorizationPolicy | {targetRef: {kind: Service}, rules: [{}]} | spec.targetRef.name | targetRef name must be set
targetRef cross namespace | AuthorizationPolicy | {targetRef: {kind: Service, name: s, namespace: bar}, rules: [{}]} | spec.targetRef.namespace | cross namespace referencing is not supported
targetRef bad kind | AuthorizationPolicy | {targetRefs: [{kind: Deployment, group: apps, name: d}], rules: [{}]} | spec.targetRefs[0].kind | but was apps/Deployment
selector empty key | AuthorizationPolicy | {selector: {matchLabels: {'': x}}} | spec.selector.matchLabels. | empty key is not supported in selector: "=x"
selector wildcard | AuthorizationPolicy | {selector: {matchLabels: {app: 'web*'}}} | spec.selector.matchLabels.app | wildcard is not supported in selector: "app=web*"
provider without CUSTOM | AuthorizationPolicy | {provider: {name: ext}, rules: [{}]} | spec.provider | `provider` must not be with non CUSTOM action, found ALLOW
CUSTOM without rules | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}} | spec.rules | CUSTOM action without `rules` is meaningless
CUSTOM without provider | AuthorizationPolicy | {action: CUSTOM, rules: [{}]} | spec.provider | `provider.name` must not be empty
CUSTOM with empty provider name | AuthorizationPolicy | {action: CUSTOM, provider: {name: ''}, rules: [{}]} | spec.provider.name | `provider.name` must not be empty
CUSTOM with principals | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}, rules: [{from: [{source: {principals: [a]}}]}]} | spec.rules[0].from[0].source.principals | From.Principals is currently not supported with CUSTOM action
CUSTOM with notNamespaces | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}, rules: [{from: [{source: {notNamespaces: [a]}}]}]} | spec.rules[0].from[0].source.notNamespaces | From.NotNamespaces
CUSTOM with serviceAccounts | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}, rules: [{from: [{source: {serviceAccounts: [a]}}]}]} | spec.rules[0].from[0].source.serviceAccounts | From.ServiceAccounts
CUSTOM with requestPrincipals | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}, rules: [{from: [{source: {requestPrincipals: ['*']}}]}]} | spec.rules[0].from[0].source.requestPrincipals | From.RequestPrincipals
CUSTOM with request.auth key | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}, rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]} | spec.rules[0].when[0].key | request.auth.claims[iss] is currently not supported with CUSTOM action
CUSTOM with source.principal key | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}, rules: [{when: [{key: source.principal, values: [x]}]}]} | spec.rules[0].when[0].key | source.principal is currently not supported
DENY without rules | AuthorizationPolicy | {action: DENY} | spec.rules | DENY action without `rules` is meaningless
DENY with rules: [] | AuthorizationPolicy | {action: DENY, rules: []} | spec.rules | DENY action without `rules`
from: [] | AuthorizationPolicy | {rules: [{from: []}]} | spec.rules[0].from | `from` must not be empty
to: [] | AuthorizationPolicy | {rules: [{to: []}]} | spec.rules[0].to | `to` must not be empty
from without source | AuthorizationPolicy | {rules: [{from: [{}]}]} | spec.rules[0].from[0] | `from.source` must not be nil
to without operation | AuthorizationPolicy | {rules: [{to: [{}]}]} | spec.rules[0].to[0] | `to.operation` must not be nil
empty source | AuthorizationPolicy | {rules: [{from: [{source: {}}]}]} | spec.rules[0].from[0].source | `from.source` must not be empty
source with only empty lists | AuthorizationPolicy | {rules: [{from: [{source: {principals: []}}]}]} | spec.rules[0].from[0].source | `from.source` must not be empty
empty operation | AuthorizationPolicy | {rules: [{to: [{operation: {}}]}]} | spec.rules[0].to[0].operation | `to.operation` must not be empty
empty principal | AuthorizationPolicy | {rules: [{from: [{source: {principals: [a, '']}}]}]} | spec.rules[0].from[0].source.principals[1] | empty value not allowed
empty requestPrincipal | AuthorizationPolicy | {rules: [{from: [{source: {requestPrincipals: ['']}}]}]} | spec.rules[0].from[0].source.requestPrincipals[0] | empty value not allowed
empty notNamespace | AuthorizationPolicy | {rules: [{from: [{source: {notNamespaces: ['']}}]}]} | spec.rules[0].from[0].source.notNamespaces[0] | empty value not allowed
empty method | AuthorizationPolicy | {rules: [{to: [{operation: {methods: ['']}}]}]} | spec.rules[0].to[0].operation.methods[0] | empty value not allowed
empty host | AuthorizationPolicy | {rules: [{to: [{operation: {notHosts: ['']}}]}]} | spec.rules[0].to[0].operation.notHosts[0] | empty value not allowed
empty path | AuthorizationPolicy | {rules: [{to: [{operation: {paths: ['']}}]}]} | spec.rules[0].to[0].operation.paths[0] | empty value not allowed
empty port | AuthorizationPolicy | {rules: [{to: [{operation: {ports: ['']}}]}]} | spec.rules[0].to[0].operation.ports[0] | empty value not allowed
bad ipBlock | AuthorizationPolicy | {rules: [{from: [{source: {ipBlocks: [10.0.0.1, 10.0.0.300]}}]}]} | spec.rules[0].from[0].source.ipBlocks[1] | bad IP address (10.0.0.300)
wildcard ipBlock | AuthorizationPolicy | {rules: [{from: [{source: {ipBlocks: ['*']}}]}]} | spec.rules[0].from[0].source.ipBlocks[0] | bad IP address (*)
bad notIpBlock CIDR | AuthorizationPolicy | {rules: [{from: [{source: {notIpBlocks: [10.0.0.0/33]}}]}]} | spec.rules[0].from[0].source.notIpBlocks[0] | bad CIDR range (10.0.0.0/33): prefix length out of range
bad remoteIpBlock | AuthorizationPolicy | {rules: [{from: [{source: {remoteIpBlocks: [example.com]}}]}]} | spec.rules[0].from[0].source.remoteIpBlocks[0] | bad IP address
bad notRemoteIpBlock bits | AuthorizationPolicy | {rules: [{from: [{source: {notRemoteIpBlocks: [10.0.0.0/08]}}]}]} | spec.rules[0].from[0].source.notRemoteIpBlocks[0] | bad bits after slash
port out of range | AuthorizationPolicy | {rules: [{to: [{operation: {ports: ['65536']}}]}]} | spec.rules[0].to[0].operation.ports[0] | bad port (65536)
wildcard notPort | AuthorizationPolicy | {rules: [{to: [{operation: {notPorts: ['*']}}]}]} | spec.rules[0].to[0].operation.notPorts[0] | bad port (*)
signed port | AuthorizationPolicy | {rules: [{to: [{operation: {ports: ['+80']}}]}]} | spec.rules[0].to[0].operation.ports[0] | bad port (+80)
serviceAccounts with principals | AuthorizationPolicy | {rules: [{from: [{source: {serviceAccounts: [sa], principals: [p]}}]}]} | spec.rules[0].from[0].source.serviceAccounts | cannot set serviceAccounts with namespaces or principals
notServiceAccounts with namespaces | AuthorizationPolicy | {rules: [{from: [{source: {notServiceAccounts: [sa], namespaces: [ns1]}}]}]} | spec.rules[0].from[0].source.notServiceAccounts | cannot set serviceAccounts
wildcard serviceAccount | AuthorizationPolicy | {rules: [{from: [{source: {serviceAccounts: ['ns/*']}}]}]} | spec.rules[0].from[0].source.serviceAccounts[0] | wildcard not allowed
serviceAccount with two slashes | AuthorizationPolicy | {rules: [{from: [{source: {serviceAccounts: [a/b/c]}}]}]} | spec.rules[0].from[0].source.serviceAccounts[0] | expected format 'serviceAccount' or 'namespace/serviceAccount'
serviceAccount empty namespace | AuthorizationPolicy | {rules: [{from: [{source: {notServiceAccounts: [/sa]}}]}]} | spec.rules[0].from[0].source.notServiceAccounts[0] | found empty namespace
serviceAccount empty name | AuthorizationPolicy | {rules: [{from: [{source: {serviceAccounts: [ns/]}}]}]} | spec.rules[0].from[0].source.serviceAccounts[0] | found empty serviceAccount
17 serviceAccounts | AuthorizationPolicy | {rules: [{from: [{source: {serviceAccounts: [s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15, s16, s17]}}]}]} | spec.rules[0].from[0].source.serviceAccounts | may not have more than 16 values
path template after {**} | AuthorizationPolicy | {rules: [{to: [{operation: {paths: ['/a/{**}/{*}']}}]}]} | spec.rules[0].to[0].operation.paths[0] | invalid or unsupported path a/{**}/{*}: {**} is not the last operator
path template with named variable | AuthorizationPolicy | {rules: [{to: [{operation: {notPaths: ['/a/{id}']}}]}]} | spec.rules[0].to[0].operation.notPaths[0] | contains '{' or '}' beyond a supported path template
path template in a segment | AuthorizationPolicy | {rules: [{to: [{operation: {paths: ['/{**}.mpd']}}]}]} | spec.rules[0].to[0].operation.paths[0] | beyond a supported path template
path template with glob | AuthorizationPolicy | {rules: [{to: [{operation: {paths: ['/a/*/{*}']}}]}]} | spec.rules[0].to[0].operation.paths[0] | contains segment * with invalid string literal
path template with empty segment | AuthorizationPolicy | {rules: [{to: [{operation: {paths: ['/a//{*}']}}]}]} | spec.rules[0].to[0].operation.paths[0] | with invalid string literal
when without key | AuthorizationPolicy | {rules: [{when: [{values: [a]}]}]} | spec.rules[0].when[0].key | `key` must not be empty
when without values | AuthorizationPolicy | {rules: [{when: [{key: source.ip}]}]} | spec.rules[0].when[0] | at least one of `values` or `notValues` must be set for key source.ip
when with empty values | AuthorizationPolicy | {rules: [{when: [{key: source.ip, values: [], notValues: []}]}]} | spec.rules[0].when[0] | at least one of `values` or `notValues`
when unknown key | AuthorizationPolicy | {rules: [{when: [{key: request.method, values: [GET]}]}]} | spec.rules[0].when[0].key | unknown attribute: request.method
when destination.namespace | AuthorizationPolicy | {rules: [{when: [{key: destination.namespace, values: [a]}]}]} | spec.rules[0].when[0].key | is replaced by the metadata.namespace
when destination.labels | AuthorizationPolicy | {rules: [{when: [{key: 'destination.labels[app]', values: [a]}]}]} | spec.rules[0].when[0].key | is replaced by the workload selector
when destination.user | AuthorizationPolicy | {rules: [{when: [{key: destination.user, values: [a]}]}]} | spec.rules[0].when[0].key | deprecated attribute destination.user
when header without name | AuthorizationPolicy | {rules: [{when: [{key: request.headers, values: [a]}]}]} | spec.rules[0].when[0].key | bad key (request.headers): should have format a[b]
when header with empty name | AuthorizationPolicy | {rules: [{when: [{key: 'request.headers[]', values: [a]}]}]} | spec.rules[0].when[0].key | should have format a[b]
when claim without name | AuthorizationPolicy | {rules: [{when: [{key: request.auth.claims, notValues: [a]}]}]} | spec.rules[0].when[0].key | bad key (request.auth.claims)
when empty value | AuthorizationPolicy | {rules: [{when: [{key: connection.sni, values: [a, '']}]}]} | spec.rules[0].when[0].values[1] | empty value not allowed
when bad source.ip | AuthorizationPolicy | {rules: [{when: [{key: source.ip, values: [1.2.3.4/99]}]}]} | spec.rules[0].when[0].values[0] | invalid `value` for `key` source.ip: bad CIDR range (1.2.3.4/99)
when bad remote.ip notValue | AuthorizationPolicy | {rules: [{when: [{key: remote.ip, notValues: [nope]}]}]} | spec.rules[0].when[0].notValues[0] | invalid `notValue` for `key` remote.ip: bad IP address (nope)
when bad destination.ip | AuthorizationPolicy | {rules: [{when: [{key: destination.ip, values: ['*']}]}]} | spec.rules[0].when[0].values[0] | bad IP address (*)
when bad destination.port | AuthorizationPolicy | {rules: [{when: [{key: destination.port, values: ['99999']}]}]} | spec.rules[0].when[0].values[0] | invalid `value` for `key` destination.port: bad port (99999)
when wildcard source.serviceAccount | AuthorizationPolicy | {rules: [{when: [{key: source.serviceAccount, values: ['ns/*']}]}]} | spec.rules[0].when[0].values[0] | invalid `value` for `key` source.serviceAccount: wildcard not allowed
too many rules | AuthorizationPolicy | @513RULES | spec.rules | must have at most 512 items, found 513
dry-run not a boolean | AuthorizationPolicy | @DRYRUN=yes {} | metadata.annotations.istio.io/dry-run | annotation istio.io/dry-run with invalid value (yes)
dry-run on AUDIT | AuthorizationPolicy | @DRYRUN=true {action: AUDIT, rules: [{}]} | metadata.annotations.istio.io/dry-run | currently only supports action ALLOW/DENY, found action AUDIT
dry-run on PeerAuthentication | PeerAuthentication | @DRYRUN=yes {} | metadata.annotations.istio.io/dry-run | unsupported annotation istio.io/dry-run
engine: experimental metadata | AuthorizationPolicy | {rules: [{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}]}]} | spec.rules[0].when[0].key | Envoy dynamic metadata
portLevelMtls without selector | PeerAuthentication | {portLevelMtls: {8080: {mode: DISABLE}}} | spec.portLevelMtls | mesh/namespace peer authentication cannot have port level mTLS
portLevelMtls with an empty selector | PeerAuthentication | {selector: {matchLabels: {}}, portLevelMtls: {8080: {mode: DISABLE}}} | spec.portLevelMtls | cannot have port level mTLS
portLevelMtls empty | PeerAuthentication | {selector: {matchLabels: {app: a}}, portLevelMtls: {}} | spec.portLevelMtls | port level mTLS, if defined, must have at least one element
portLevelMtls port 0 | PeerAuthentication | {selector: {matchLabels: {app: a}}, portLevelMtls: {0: {mode: STRICT}}} | spec.portLevelMtls.0 | port must be in range 1..65535
portLevelMtls port 65536 | PeerAuthentication | {selector: {matchLabels: {app: a}}, portLevelMtls: {65536: {mode: STRICT}}} | spec.portLevelMtls.65536 | port must be in range 1..65535
PeerAuthentication selector wildcard | PeerAuthentication | {selector: {matchLabels: {'app*': a}}} | spec.selector.matchLabels.app* | wildcard is not supported in selector
jwt without issuer or jwksUri | RequestAuthentication | {jwtRules: [{jwks: '{"keys": []}'}]} | spec.jwtRules[0].issuer | issuer or jwksUri must be non-empty string
jwksUri scheme | RequestAuthentication | {jwtRules: [{issuer: i, jwksUri: 'ftp://x/jwks'}]} | spec.jwtRules[0].jwksUri | URI scheme "ftp" is not supported
jwksUri port | RequestAuthentication | {jwtRules: [{issuer: i, jwksUri: 'https://x:port/jwks'}]} | spec.jwtRules[0].jwksUri | invalid port ":port" after host
jwks not JSON | RequestAuthentication | {jwtRules: [{issuer: i, jwks: 'nope'}]} | spec.jwtRules[0].jwks | jwks parse error
jwks without kty | RequestAuthentication | {jwtRules: [{issuer: i, jwks: '{"keys": [{"n": "x"}]}'}]} | spec.jwtRules[0].jwks | jwks parse error: keys[0]
empty audience | RequestAuthentication | {jwtRules: [{issuer: i, audiences: [a, '']}]} | spec.jwtRules[0].audiences[1] | audience must be non-empty string
fromHeaders without name | RequestAuthentication | {jwtRules: [{issuer: i, fromHeaders: [{prefix: 'Bearer '}]}]} | spec.jwtRules[0].fromHeaders[0].name | location header name must be non-empty string
empty fromParams | RequestAuthentication | {jwtRules: [{issuer: i, fromParams: ['']}]} | spec.jwtRules[0].fromParams[0] | location query must be non-empty string
empty fromCookies | RequestAuthentication | {jwtRules: [{issuer: i, fromCookies: ['']}]} | spec.jwtRules[0].fromCookies[0] | cookie name must be non-empty string
outputClaimToHeaders without claim | RequestAuthentication | {jwtRules: [{issuer: i, outputClaimToHeaders: [{header: x-sub}]}]} | spec.jwtRules[0].outputClaimToHeaders[0] | header and claim value must be non-empty string
outputClaimToHeaders bad header | RequestAuthentication | {jwtRules: [{issuer: i, outputClaimToHeaders: [{header: 'x_sub', claim: sub}]}]} | spec.jwtRules[0].outputClaimToHeaders[0].header | header name x_sub is not a valid header name
timeout too short | RequestAuthentication | {jwtRules: [{issuer: i, timeout: 500us}]} | spec.jwtRules[0].timeout | duration must be greater than 1ms
timeout not whole ms | RequestAuthentication | {jwtRules: [{issuer: i, timeout: 1.0005s}]} | spec.jwtRules[0].timeout | only durations to ms precision are supported
timeout not a duration | RequestAuthentication | {jwtRules: [{issuer: i, timeout: soon}]} | spec.jwtRules[0].timeout | invalid duration "soon"
RequestAuthentication selector and targetRef | RequestAuthentication | {selector: {matchLabels: {app: a}}, targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}} | spec.targetRef | only one of targetRefs or workloadSelector
"#;

#[test]
fn each_webhook_rule_refuses_its_case() {
    for [case, kind, spec, path, message] in rows(REFUSED) {
        let problems = run(&text_of(kind, spec));
        assert!(
            problems
                .iter()
                .any(|p| p.is_error() && p.path == path && p.message.contains(message)),
            "{case}: expected {path}: {message}; got {problems:#?}"
        );
    }
}

/// Valid shapes, most from Istio's documentation: no errors, no warnings.
const ACCEPTED: &str = r#"
allow-nothing | AuthorizationPolicy | {}
allow-all | AuthorizationPolicy | {rules: [{}]}
deny-all | AuthorizationPolicy | {action: DENY, rules: [{}]}
AUDIT without rules | AuthorizationPolicy | {action: AUDIT}
custom with provider | AuthorizationPolicy | {selector: {matchLabels: {app: istio-ingressgateway}}, action: CUSTOM, provider: {name: my-custom-authz}, rules: [{to: [{operation: {paths: ['/admin/*']}}]}]}
httpbin example | AuthorizationPolicy | {selector: {matchLabels: {app: httpbin, version: v1}}, action: ALLOW, rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}, {source: {namespaces: [dev]}}], to: [{operation: {methods: [GET], paths: ['/info*']}}], when: [{key: 'request.auth.claims[iss]', values: ['https://accounts.google.com']}]}]}
deny with ports | AuthorizationPolicy | {action: DENY, rules: [{from: [{source: {notNamespaces: [foo]}}], to: [{operation: {methods: [POST], ports: ['8080']}}]}]}
ip blocks | AuthorizationPolicy | {rules: [{from: [{source: {ipBlocks: [203.0.113.4, 203.0.113.0/24, '2001:db8::/32'], notRemoteIpBlocks: [10.0.0.1/8]}}]}]}
service accounts | AuthorizationPolicy | {rules: [{from: [{source: {serviceAccounts: [sleep, foo/sleep], notServiceAccounts: [bar/x]}}]}]}
path templates | AuthorizationPolicy | {rules: [{to: [{operation: {paths: ['/foo/{*}', '/foo/{**}', '/{*}/foo/{**}/bar.tmp', '/api/{*}/items/', '/*', '*.html', '/a*']}}]}]}
every condition key | AuthorizationPolicy | {rules: [{when: [{key: 'request.headers[User-Agent]', values: ['curl*']}, {key: source.ip, values: [10.0.0.0/8]}, {key: remote.ip, notValues: [1.2.3.4]}, {key: source.namespace, values: [a]}, {key: source.principal, values: ['*']}, {key: source.serviceAccount, values: [ns/sa]}, {key: request.auth.principal, values: [iss/sub]}, {key: request.auth.audiences, values: [a]}, {key: request.auth.presenter, values: [p]}, {key: 'request.auth.claims[groups][admin]', values: [x]}, {key: destination.ip, values: ['::1']}, {key: destination.port, values: ['0', '65535']}, {key: connection.sni, values: ['*.example.com']}, {key: source.trustDomain, values: [td]}]}]}
dry-run deny | AuthorizationPolicy | @DRYRUN=true {action: DENY, rules: [{to: [{operation: {ports: ['80']}}]}]}
mesh strict | PeerAuthentication | {mtls: {mode: STRICT}}
port level | PeerAuthentication | {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}
jwt | RequestAuthentication | {selector: {matchLabels: {app: httpbin}}, jwtRules: [{issuer: 'issuer-foo', jwksUri: 'https://example.com/.well-known/jwks.json', audiences: [a], fromHeaders: [{name: x-jwt-assertion, prefix: 'Bearer '}], fromParams: [my_token], fromCookies: [session], outputPayloadToHeader: x-jwt-payload, outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}], timeout: 1.5s}]}
inline jwks | RequestAuthentication | {jwtRules: [{issuer: i, jwks: '{"keys": [{"kty": "RSA", "e": "AQAB", "n": "x"}]}', timeout: 1m30s}]}
jwksUri without issuer | RequestAuthentication | {jwtRules: [{jwksUri: 'http://jwks.local:8080/keys'}]}
"#;

#[test]
fn valid_policies_pass_without_warnings() {
    for [case, kind, spec] in rows(ACCEPTED) {
        let problems = run(&text_of(kind, spec));
        assert!(problems.is_empty(), "{case}: {problems:#?}");
    }
}

/// (case, kind, spec, path, message substring): accepted with a warning.
const WARNED: &str = r#"
DENY with only HTTP attributes | AuthorizationPolicy | {action: DENY, rules: [{to: [{operation: {methods: [GET]}}]}]} | spec.rules[0] | will deny all traffic to TCP ports
DENY with only request principals | AuthorizationPolicy | {action: DENY, rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]} | spec.rules[0] | it is recommended to explicitly specify the port
selector without labels | AuthorizationPolicy | {selector: {}} | spec.selector | workload selector specified without labels
targetRef ignored | AuthorizationPolicy | {targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}, rules: [{}]} | spec.targetRef | Warden, like a sidecar, ignores them
jwksUri file | RequestAuthentication | {jwtRules: [{issuer: i, jwksUri: 'file:///etc/jwks.json'}]} | spec.jwtRules[0].jwksUri | URI scheme "file" is not supported by Istio
jwksUri path | RequestAuthentication | {jwtRules: [{issuer: i, jwksUri: jwks.json}]} | spec.jwtRules[0].jwksUri | Warden reads the local file
root namespace selector | PeerAuthentication | @istio-system {selector: {matchLabels: {app: a}}, mtls: {mode: STRICT}} | spec.selector | a selector in the root namespace (istio-system) is ignored
dry-run 1 | AuthorizationPolicy | @DRYRUN=1 {rules: [{}]} | metadata.annotations.istio.io/dry-run | Istio reads "1" as true
"#;

#[test]
fn warnings_do_not_refuse() {
    for [case, kind, spec, path, message] in rows(WARNED) {
        let problems = run(&text_of(kind, spec));
        assert!(
            problems.iter().all(|p| !p.is_error()),
            "{case}: {problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.path == path && p.message.contains(message)),
            "{case}: expected {path}: {message}; got {problems:#?}"
        );
    }
}

const FILE: &str = r#"# two documents, then a List
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: web
  namespace: shop
spec:
  rules:
  - to:
    - operation:
        ports: ["8080"]
  - from:
    - source:
        ipBlocks:
        - 10.0.0.0/8
        - 10.0.0.0/99
    when:
    - key: request.method
      values: [GET]
---
apiVersion: v1
kind: List
items:
- apiVersion: security.istio.io/v1
  kind: RequestAuthentication
  metadata: {name: jwt, namespace: shop}
  spec:
    jwtRules:
    - issuer: i
    - issuer: ""
"#;

#[test]
fn problems_point_at_the_line_of_the_field() {
    let got: Vec<String> = validate_text(Path::new("dir/p.yaml"), FILE, &Options::default())
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "dir/p.yaml:22: AuthorizationPolicy shop/web: spec.rules[1].from[0].source.ipBlocks[1]: bad CIDR range (10.0.0.0/99): prefix length out of range",
            "dir/p.yaml:24: AuthorizationPolicy shop/web: spec.rules[1].when[0].key: unknown attribute: request.method",
            "dir/p.yaml:36: RequestAuthentication shop/jwt: spec.jwtRules[1].issuer: issuer or jwksUri must be non-empty string",
        ]
    );
}

#[test]
fn unknown_lines_fall_back_to_the_document() {
    let text = text_of("AuthorizationPolicy", "{action: DENY}");
    let set = crate::loader::load_str(Path::new("p.yaml"), &text).unwrap();
    // No source text: the document's line.
    let problems = validate(&set, &SourceLines::default(), &Options::default());
    assert_eq!(problems[0].line, 1);
    // An absent field: its nearest written ancestor (`spec`).
    let problems = run(&format!("# c\n{text}"));
    assert_eq!(
        problems[0].to_string(),
        "p.yaml:5: AuthorizationPolicy foo/p: spec.rules: DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request"
    );
}

#[test]
fn engine_errors_already_reported_are_not_repeated() {
    let text = text_of(
        "AuthorizationPolicy",
        "{rules: [{from: [{source: {ipBlocks: [bad]}}], to: [{operation: {ports: [x]}}], when: [{key: source.ip, notValues: [nope]}]}]}",
    );
    let problems = run(&text);
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "spec.rules[0].to[0].operation.ports[0]",
            "spec.rules[0].when[0].notValues[0]",
        ],
        "{problems:#?}"
    );
}

#[test]
fn summary_counts_kinds_files_and_skips() {
    let text = format!(
        "{}---\n{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n",
        text_of("AuthorizationPolicy", "{}"),
        text_of("PeerAuthentication", "{selector: {}}").replace("name: p", "name: q")
    );
    let set = crate::loader::load_str(Path::new("p.yaml"), &text).unwrap();
    let mut lines = SourceLines::default();
    lines.insert(Path::new("p.yaml"), &text);
    let problems = validate(&set, &lines, &Options::default());
    assert_eq!(
        Summary::new(&set, &problems).to_string(),
        "ok: 2 resources in 1 file (1 AuthorizationPolicy, 1 PeerAuthentication); 1 unknown kind skipped; 1 warning"
    );
}

#[test]
fn addresses_as_go_parses_them() {
    for ok in [
        "10.0.0.1",
        "::1",
        "fe80::1%eth0",
        "10.0.0.1/8",
        "0.0.0.0/0",
        "2001:db8::/128",
    ] {
        assert_eq!(ip_or_cidr(ok), Ok(()), "{ok}");
    }
    for bad in [
        "010.0.0.1",
        "10.0.0",
        "fe80::1%",
        "fe80::1%eth0/64",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "::/129",
        "10.0.0.0/8/8",
    ] {
        assert!(ip_or_cidr(bad).is_err(), "{bad}");
    }
}

#[test]
fn go_durations() {
    for (text, nanos) in [
        ("0", Some(0)),
        ("1.5s", Some(1_500_000_000)),
        ("1m30s", Some(90_000_000_000)),
        ("250ms", Some(250_000_000)),
        ("1h", Some(3_600_000_000_000)),
        (".5s", Some(500_000_000)),
        ("-2s", Some(-2_000_000_000)),
        ("5", None),
        ("s", None),
        ("", None),
        ("1d", None),
    ] {
        assert_eq!(go_duration(text), nanos, "{text}");
    }
}

/// VirtualService and DestinationRule checks: each refusal at its field, with the
/// webhook's words (`pkg/config/validation/validation.go`), and the analyzer's warning
/// for a subset no DestinationRule defines.
#[test]
fn virtual_services_and_destination_rules() {
    let vs = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: foo}}\nspec: {spec}\n"
        )
    };
    let dr = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d, namespace: foo}}\nspec: {spec}\n"
        )
    };
    let ok_route = "{hosts: [r], http: [{route: [{destination: {host: r}}]}]}";
    assert!(run(&vs(ok_route)).is_empty(), "{:?}", run(&vs(ok_route)));
    // Istio's reference example, with every CORS field.
    let ok_cors = "{hosts: [r], http: [{route: [{destination: {host: r}}], corsPolicy: {allowOrigins: [{exact: 'https://example.com'}, {prefix: 'https://a.'}, {regex: 'https://.*[.]b[.]com'}], allowMethods: [POST, GET, '*'], allowHeaders: [X-Foo-Bar, '*'], exposeHeaders: [x-e], maxAge: 24h, allowCredentials: false, unmatchedPreflights: IGNORE}}]}";
    assert!(run(&vs(ok_cors)).is_empty(), "{:?}", run(&vs(ok_cors)));
    let cases: &[(String, &str, &str)] = &[
        (
            vs("{hosts: [r]}"),
            "spec",
            "http, tcp or tls must be provided",
        ),
        (
            vs("{hosts: ['*'], http: [{route: [{destination: {host: r}}]}]}"),
            "spec.hosts[0]",
            "not allowed for virtual services bound to the mesh gateway",
        ),
        (
            vs("{hosts: ['bad_host'], http: [{route: [{destination: {host: r}}]}]}"),
            "spec.hosts[0]",
            "not a valid host",
        ),
        (
            vs("{hosts: [r], http: [{timeout: 1s}]}"),
            "spec.http[0]",
            "route, redirect, direct response or delegate is required",
        ),
        (
            vs("{hosts: [r], http: [{route: [{destination: {host: r}}], redirect: {uri: /x}}]}"),
            "spec.http[0]",
            "both route and redirect",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], directResponse: {status: 200}}]}",
            ),
            "spec.http[0]",
            "both route and direct response",
        ),
        (
            vs("{hosts: [r], http: [{route: [{destination: {host: r}, weight: -1}]}]}"),
            "spec.http[0].route[0].weight",
            "weight -1 < 0",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}, {destination: {host: s}}]}]}",
            ),
            "spec.http[0].route",
            "total destination weight = 0",
        ),
        (
            vs("{hosts: [r], http: [{route: [{destination: {host: ''}}]}]}"),
            "spec.http[0].route[0].destination.host",
            "must have a host",
        ),
        (
            vs("{hosts: [r], http: [{route: [{destination: {host: r, port: {number: 70000}}}]}]}"),
            "spec.http[0].route[0].destination.port.number",
            "1..65535",
        ),
        (
            vs("{hosts: [r], http: [{route: [{destination: {host: r, subset: V_1}}]}]}"),
            "spec.http[0].route[0].destination.subset",
            "not a valid DNS label",
        ),
        (
            vs("{hosts: [r], http: [{redirect: {uri: /x, redirectCode: 304}}]}"),
            "spec.http[0].redirect.redirectCode",
            "304 is not a valid redirect code",
        ),
        (
            vs("{hosts: [r], http: [{directResponse: {status: 99}}]}"),
            "spec.http[0].directResponse.status",
            "invalid HTTP status 99",
        ),
        (
            vs("{hosts: [r], http: [{route: [{destination: {host: r}}], timeout: 5x}]}"),
            "spec.http[0].timeout",
            "not a duration",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], retries: {attempts: -1}}]}",
            ),
            "spec.http[0].retries.attempts",
            "cannot be negative",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], retries: {attempts: 2, retryOn: '5xx,sometimes'}}]}",
            ),
            "spec.http[0].retries.retryOn",
            "\"sometimes\" is not a valid retryOn value",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], fault: {abort: {httpStatus: 700, percentage: {value: 10}}}}]}",
            ),
            "spec.http[0].fault.abort.httpStatus",
            "invalid abort http status 700",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], fault: {delay: {fixedDelay: 1s, percentage: {value: 150}}}}]}",
            ),
            "spec.http[0].fault.delay.percentage.value",
            "percentage 150 is not in range 0..100",
        ),
        (
            vs("{hosts: [r], http: [{route: [{destination: {host: r}}], fault: {}}]}"),
            "spec.http[0].fault",
            "must have an abort and/or a delay",
        ),
        (
            vs(
                "{hosts: [r], http: [{match: [{uri: {regex: '('}}], route: [{destination: {host: r}}]}]}",
            ),
            "spec.http[0].match[0].uri.regex",
            "RE2",
        ),
        (
            vs(
                "{hosts: [r], http: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: r}}]}]}",
            ),
            "spec.http[0].match[0].uri",
            "only one of exact, prefix and regex",
        ),
        (
            vs(
                "{hosts: [r], http: [{rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}, route: [{destination: {host: r}}]}]}",
            ),
            "spec.http[0].rewrite",
            "only contain one of uri or uriRegexRewrite",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], corsPolicy: {allowOrigins: [{regex: '(https://x'}]}}]}",
            ),
            "spec.http[0].corsPolicy.allowOrigins[0].regex",
            "not an RE2 regular expression",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], corsPolicy: {allowOrigins: [{regex: '*'}]}}]}",
            ),
            "spec.http[0].corsPolicy.allowOrigins[0].regex",
            "not an RE2 regular expression",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], corsPolicy: {allowOrigins: [{exact: ''}]}}]}",
            ),
            "spec.http[0].corsPolicy.allowOrigins[0]",
            "is not a valid match type for CORS allow origins",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], corsPolicy: {allowOrigins: [{exact: a}], allowMethods: [GET, FETCH]}}]}",
            ),
            "spec.http[0].corsPolicy.allowMethods[1]",
            "\"FETCH\" is not a supported HTTP method",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], corsPolicy: {allowHeaders: ['x y']}}]}",
            ),
            "spec.http[0].corsPolicy.allowHeaders[0]",
            "header name x y is not a valid header name",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], corsPolicy: {exposeHeaders: ['']}}]}",
            ),
            "spec.http[0].corsPolicy.exposeHeaders[0]",
            "header name cannot be empty",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], corsPolicy: {maxAge: 1.5s}}]}",
            ),
            "spec.http[0].corsPolicy.maxAge",
            "accurate only to seconds precision",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], corsPolicy: {maxAge: 0s}}]}",
            ),
            "spec.http[0].corsPolicy.maxAge",
            "duration must be greater than 1ms",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], corsPolicy: {maxAge: a day}}]}",
            ),
            "spec.http[0].corsPolicy.maxAge",
            "not a duration",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], corsPolicy: {unmatchedPreflights: DROP}}]}",
            ),
            "spec.http[0].corsPolicy.unmatchedPreflights",
            "unknown variant `DROP`",
        ),
        (
            vs(
                "{hosts: [r], http: [{route: [{destination: {host: r}}], corsPolicy: {allowOrigin: [a], maxAgeSeconds: 5}}]}",
            ),
            "spec.http[0].corsPolicy.maxAgeSeconds",
            "unknown field `maxAgeSeconds`",
        ),
        (
            vs("{hosts: [r], http: [{route: [{destination: {host: r}}], retrys: {attempts: 1}}]}"),
            "spec.http[0].retrys",
            "unknown field `retrys`",
        ),
        (
            vs("{gateways: [gw], http: [{route: [{destination: {host: r}}]}]}"),
            "spec.gateways",
            "delegate virtual service must have no gateways",
        ),
        (
            vs("{hosts: [r], tls: [{match: [{port: 443}], route: [{destination: {host: r}}]}]}"),
            "spec.tls[0].match[0].sniHosts",
            "at least one SNI host",
        ),
        (
            dr("{subsets: [{name: v1}]}"),
            "spec.host",
            "host must be specified",
        ),
        (
            dr("{host: r, subsets: [{name: v1}, {name: v1}]}"),
            "spec.subsets[1].name",
            "duplicate subset names: v1",
        ),
        (
            dr("{host: r, trafficPolicy: {loadBalancer: {simple: FASTEST}}}"),
            "spec.trafficPolicy.loadBalancer.simple",
            "is not a load balancer",
        ),
        (
            dr("{host: r, trafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}}"),
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "between 0 and 100",
        ),
        (
            dr("{host: r, trafficPolicy: {outlierDetection: {interval: 10}}}"),
            "spec.trafficPolicy.outlierDetection.interval",
            "a duration is a string",
        ),
        (
            dr("{host: r, trafficPolicy: {tls: {mode: ISTIO_MUTUAL, caCertificates: /ca.pem}}}"),
            "spec.trafficPolicy.tls.caCertificates",
            "ISTIO_MUTUAL TLS cannot have",
        ),
        (
            dr("{host: r, trafficPolicy: {tls: {mode: MUTUAL}}}"),
            "spec.trafficPolicy.tls",
            "client certificate and private key required",
        ),
        (
            dr("{host: r, trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}}"),
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "non-negative integer",
        ),
        (
            dr("{host: r, trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}}"),
            "spec.trafficPolicy.portLevelSettings[0].port",
            "port must be specified",
        ),
        (
            dr("{host: r, subsets: [{name: v1, trafficPolicy: {tls: {mode: SOMETIMES}}}]}"),
            "spec.subsets[0].trafficPolicy.tls.mode",
            "is not a TLS mode",
        ),
        (
            dr("{host: r, trafficPolicy: {loadBalncer: {}}}"),
            "spec.trafficPolicy.loadBalncer",
            "unknown field",
        ),
    ];
    for (text, path, message) in cases {
        let problems = run(text);
        assert!(
            problems
                .iter()
                .any(|p| p.is_error() && p.path == *path && p.message.contains(message)),
            "{text}\nwanted {path}: {message}\ngot: {problems:#?}"
        );
    }
    // A subset no DestinationRule defines is a warning, not a refusal.
    let text = vs("{hosts: [r], http: [{route: [{destination: {host: r, subset: v9}}]}]}")
        + "---\n"
        + &dr("{host: r, subsets: [{name: v1, labels: {version: v1}}]}");
    let problems = run(&text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(!problems[0].is_error());
    assert_eq!(problems[0].path, "spec.http[0].route[0].destination.subset");
    assert!(problems[0].message.contains("IST0101"), "{problems:#?}");
    let text = vs("{hosts: [r], http: [{route: [{destination: {host: r, subset: v1}}]}]}")
        + "---\n"
        + &dr("{host: r, subsets: [{name: v1, labels: {version: v1}}]}");
    assert!(run(&text).is_empty(), "{:?}", run(&text));
    // The line is the field's.
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: foo}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n    timeout: soon\n";
    let problems = run(text);
    assert_eq!(problems[0].line, 9, "{problems:#?}");
}

/// Gateway checks (`ValidateGateway`, `validateServer`, `validateServerPort`,
/// `validateServerBind`, `validateTLSOptions` in `pkg/config/validation/validation.go`):
/// each refusal at its field with the webhook's words; Istio's samples pass.
#[test]
fn gateways() {
    let gw = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g, namespace: foo}}\nspec: {spec}\n"
        )
    };
    let http = "port: {number: 80, name: http, protocol: HTTP}";
    let https = "port: {number: 443, name: https, protocol: HTTPS}";
    let sel = "selector: {istio: ingressgateway}";
    // samples/bookinfo/networking/bookinfo-gateway.yaml, the secure-ingress and
    // SNI-passthrough tasks' Gateways, an httpsRedirect server.
    for ok in [
        format!(
            "{{{sel}, servers: [{{port: {{number: 8080, name: http, protocol: HTTP}}, hosts: ['*']}}]}}"
        ),
        format!(
            "{{{sel}, servers: [{{{https}, tls: {{mode: SIMPLE, credentialName: httpbin-credential}}, hosts: [httpbin.example.com]}}]}}"
        ),
        format!(
            "{{{sel}, servers: [{{{https}, tls: {{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}}, hosts: ['foo/*.example.com', './a.example.com', '*/b.example.com']}}]}}"
        ),
        format!(
            "{{{sel}, servers: [{{{https}, tls: {{mode: PASSTHROUGH}}, hosts: [nginx.example.com]}}]}}"
        ),
        format!(
            "{{{sel}, servers: [{{{http}, tls: {{httpsRedirect: true}}, hosts: [a.example.com]}}, {{{https}, tls: {{mode: ISTIO_MUTUAL}}, hosts: ['*.local']}}]}}"
        ),
        format!(
            "{{{sel}, servers: [{{port: {{number: 31400, name: tcp, protocol: TCP}}, hosts: ['*']}}, {{port: {{number: 15443, name: tls, protocol: TLS}}, tls: {{mode: AUTO_PASSTHROUGH}}, hosts: ['*.local']}}]}}"
        ),
    ] {
        let problems = run(&gw(&ok));
        assert!(problems.is_empty(), "{ok}\n{problems:#?}");
    }
    let cases: &[(String, &str, &str)] = &[
        (gw(&format!("{{{sel}}}")), "spec.servers", "gateway must have at least one server"),
        (
            gw(&format!("{{{sel}, servers: [{{{http}}}]}}")),
            "spec.servers[0].hosts",
            "server config must contain at least one host",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{http}, hosts: [productpage]}}]}}")),
            "spec.servers[0].hosts[0]",
            "short names (non FQDN) are not allowed",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{http}, hosts: ['a*.example.com']}}]}}")),
            "spec.servers[0].hosts[0]",
            "partial wildcard \"a*.example.com\" not allowed",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{http}, hosts: ['Foo_Bar/a.example.com']}}]}}")),
            "spec.servers[0].hosts[0]",
            "invalid namespace value \"Foo_Bar\" in gateway",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{http}, hosts: ['/a.example.com']}}]}}")),
            "spec.servers[0].hosts[0]",
            "cannot be empty",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{http}, hosts: [a_b.example.com]}}]}}")),
            "spec.servers[0].hosts[0]",
            "invalid",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{port: {{number: 0, name: http, protocol: HTTP}}, hosts: ['*']}}]}}")),
            "spec.servers[0].port.number",
            "port number 0 must be in the range 1..65535",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{port: {{number: 70000, name: http, protocol: HTTP}}, hosts: ['*']}}]}}")),
            "spec.servers[0].port.number",
            "1..65535",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{port: {{number: 80, name: http, protocol: SMTP}}, hosts: ['*']}}]}}")),
            "spec.servers[0].port.protocol",
            "invalid protocol \"SMTP\"",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{port: {{number: 80, protocol: HTTP}}, hosts: ['*']}}]}}")),
            "spec.servers[0].port.name",
            "port name must be set",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{port: {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}, hosts: ['*']}}]}}")),
            "spec.servers[0].port.targetPort",
            "targetPort has no impact on Gateways",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{http}, hosts: [a.example.com]}}, {{port: {{number: 81, name: http, protocol: HTTP}}, hosts: [b.example.com]}}]}}")),
            "spec.servers[1].port.name",
            "port names in servers must be unique: duplicate name http",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{http}, bind: 10.0.0.300, hosts: ['*']}}]}}")),
            "spec.servers[0].bind",
            "10.0.0.300 is not a valid IP",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{https}, hosts: [a.example.com]}}]}}")),
            "spec.servers[0].tls",
            "server must have TLS settings for HTTPS/TLS protocols",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{http}, tls: {{mode: SIMPLE, credentialName: c}}, hosts: [a.example.com]}}]}}")),
            "spec.servers[0].tls",
            "server cannot have TLS settings for plain text HTTP ports",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{port: {{number: 31400, name: tcp, protocol: TCP}}, tls: {{mode: PASSTHROUGH}}, hosts: ['*']}}]}}")),
            "spec.servers[0].tls",
            "server cannot have TLS settings for non HTTPS/TLS ports",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{https}, tls: {{mode: SIMPLE}}, hosts: [a.example.com]}}]}}")),
            "spec.servers[0].tls.serverCertificate",
            "SIMPLE TLS requires a server certificate",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{https}, tls: {{mode: SIMPLE, serverCertificate: /c.pem}}, hosts: [a.example.com]}}]}}")),
            "spec.servers[0].tls.privateKey",
            "SIMPLE TLS requires a private key",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{https}, tls: {{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}}, hosts: [a.example.com]}}]}}")),
            "spec.servers[0].tls.caCertificates",
            "MUTUAL TLS requires a client CA bundle",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{https}, tls: {{mode: SIMPLE, credentialName: c, serverCertificate: /c.pem, privateKey: /k.pem}}, hosts: [a.example.com]}}]}}")),
            "spec.servers[0].tls",
            "only one of credential_name, credential_names, server_certificate/private_key, tls_certificates",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{https}, tls: {{mode: ISTIO_MUTUAL, credentialName: c}}, hosts: [a.example.com]}}]}}")),
            "spec.servers[0].tls.credentialName",
            "ISTIO_MUTUAL TLS cannot have associated credentialName",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{https}, tls: {{mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem, caCrl: /crl.pem}}, hosts: [a.example.com]}}]}}")),
            "spec.servers[0].tls.caCrl",
            "CRL is not supported with SIMPLE TLS",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{https}, tls: {{mode: SOMETIMES}}, hosts: [a.example.com]}}]}}")),
            "spec.servers[0].tls.mode",
            "unknown variant `SOMETIMES`",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{https}, tls: {{mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV9}}, hosts: [a.example.com]}}]}}")),
            "spec.servers[0].tls.minProtocolVersion",
            "is not a TLS version",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{hosts: ['*']}}]}}")),
            "spec.servers[0]",
            "missing field `port`",
        ),
        (
            gw(&format!("{{{sel}, servers: [{{{http}, hosts: ['*'], tsl: {{}}}}]}}")),
            "spec.servers[0].tsl",
            "unknown field `tsl`",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: my.gateway, namespace: foo}\nspec: {selector: {istio: ingressgateway}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\n".to_string(),
            "metadata.name",
            "invalid gateway name: \"my.gateway\"",
        ),
    ];
    for (text, path, message) in cases {
        let problems = run(text);
        assert!(
            problems
                .iter()
                .any(|p| p.is_error() && p.path == *path && p.message.contains(message)),
            "{text}\nwanted {path}: {message}\ngot: {problems:#?}"
        );
    }
    // Accepted by the webhook with a warning (or, for the selector, by Warden's own).
    for (text, path, message) in [
        (
            gw(&format!(
                "{{{sel}, servers: [{{{https}, tls: {{mode: PASSTHROUGH, credentialName: c}}, hosts: [a.example.com]}}]}}"
            )),
            "spec.servers[0].tls",
            "PASSTHROUGH mode does not use certificates, they will be ignored",
        ),
        (
            gw(&format!(
                "{{{sel}, servers: [{{port: {{number: 443, name: tls, protocol: TLS}}, tls: {{mode: SIMPLE, credentialName: c, httpsRedirect: true}}, hosts: [a.example.com]}}]}}"
            )),
            "spec.servers[0].tls.httpsRedirect",
            "should only be used with http servers",
        ),
        (
            gw("{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}"),
            "spec.selector",
            "every gateway workload",
        ),
    ] {
        let problems = run(&text);
        assert!(
            problems.iter().all(|p| !p.is_error())
                && problems
                    .iter()
                    .any(|p| p.path == path && p.message.contains(message)),
            "{text}\nwanted warning {path}: {message}\ngot: {problems:#?}"
        );
    }
    // The line is the field's.
    let text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: foo}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls:\n      mode: SIMPLE\n      serverCertificate: /c.pem\n      privateKey: /k.pem\n      caCrl: /crl.pem\n";
    let problems = run(text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].line, 13, "{problems:#?}");
}

#[test]
fn local_rate_limits_are_checked_at_the_field() {
    let text = "apiVersion: warden.io/v1alpha1\nkind: LocalRateLimit\nmetadata: {name: l, namespace: foo}\nspec:\n  limits:\n  - tokenBucket:\n      maxTokens: 10\n      fillInterval: 1ms\n";
    let p = run(text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path, "spec.limits[0].tokenBucket.fillInterval");
    assert_eq!(p[0].line, 8, "{}", p[0]);
    assert!(p[0].message.contains("50ms"), "{}", p[0]);

    let text = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: f, namespace: foo}\nspec:\n  configPatches:\n  - applyTo: HTTP_FILTER\n    patch:\n      operation: INSERT_BEFORE\n      value:\n        name: envoy.filters.http.local_ratelimit\n        typed_config:\n          '@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n          stat_prefix: x\n          token_bucket: {max_tokens: 0, fill_interval: 1s}\n";
    let p = run(text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        p[0].path, "spec.configPatches[0].patch.value.typed_config.token_bucket.max_tokens",
        "{}",
        p[0]
    );
    assert_eq!(p[0].kind, "EnvoyFilter");
    // A good one, and an EnvoyFilter about something else, pass.
    let good = text.replace("max_tokens: 0", "max_tokens: 5");
    assert!(run(&good).is_empty());
    let lua = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: lua, namespace: foo}\nspec:\n  configPatches:\n  - applyTo: HTTP_FILTER\n    patch: {operation: INSERT_BEFORE, value: {name: envoy.filters.http.lua}}\n";
    assert!(run(lua).is_empty());
}
