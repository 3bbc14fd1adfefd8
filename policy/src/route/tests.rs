//! The route table's case table, written from Istio's reference and task pages (each
//! case names its source) and from istiod's route builders where the pages are silent
//! (`pilot/pkg/networking/core/route/route.go`, `httproute.go`; for gateways
//! `gateway.go`, `pilot/pkg/model/gateway.go`, `push_context.go`). A case is the config,
//! the request, and the fields of the decision it must produce (fields not named are
//! not checked).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::{RouteRequest, RouteTable, TableOptions};

// Sources.
const VS_REF: &str = "istio.io/latest/docs/reference/config/networking/virtual-service/";
const DR_REF: &str = "istio.io/latest/docs/reference/config/networking/destination-rule/";
const REQ_ROUTING: &str = "istio.io/latest/docs/tasks/traffic-management/request-routing/";
const SHIFTING: &str = "istio.io/latest/docs/tasks/traffic-management/traffic-shifting/";
const FAULTS: &str = "istio.io/latest/docs/tasks/traffic-management/fault-injection/";
const TIMEOUTS: &str = "istio.io/latest/docs/tasks/traffic-management/request-timeouts/";
const ROUTE_GO: &str = "istio/istio pilot/pkg/networking/core/route/route.go";
const HTTPROUTE_GO: &str = "istio/istio pilot/pkg/networking/core/httproute.go";
const RETRY_GO: &str = "istio/istio pilot/pkg/networking/core/route/retry/retry.go";
const DR_GO: &str = "istio/istio pilot/pkg/model/destination_rule.go MergeTrafficPolicy";
const PUSH_GO: &str = "istio/istio pilot/pkg/model/push_context.go destinationRule";
const CORS_REF: &str =
    "istio.io/latest/docs/reference/config/networking/virtual-service/#CorsPolicy";
const CORS_GO: &str = "istio/istio pilot/pkg/networking/core/route/route.go TranslateCORSPolicy";
const ENVOY_CORS: &str = "envoyproxy/envoy source/extensions/filters/http/cors/cors_filter.cc";
const MERGE_GO: &str = "istio/istio pilot/pkg/model/virtualservice.go mergeHTTPRoute";

/// Bookinfo's reviews VirtualService and DestinationRule (samples/bookinfo).
const BOOKINFO: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
"#;

fn table(yaml: &str) -> RouteTable {
    let set = crate::loader::load_str(Path::new("case.yaml"), yaml).unwrap();
    RouteTable::build(&set, TableOptions::default())
        .unwrap_or_else(|e| panic!("does not build: {e:?}"))
}

fn request(r: &Value) -> RouteRequest {
    let s = |k: &str, d: &str| r[k].as_str().unwrap_or(d).to_string();
    RouteRequest {
        source_namespace: s("ns", "default"),
        source_labels: serde_json::from_value(r["labels"].clone()).unwrap_or_default(),
        http: r["protocol"].as_str() != Some("tcp"),
        host: s("host", "reviews"),
        port: r["port"].as_u64().unwrap_or(9080) as u16,
        method: s("method", "GET"),
        path: s("path", "/"),
        headers: serde_json::from_value::<BTreeMap<String, String>>(r["headers"].clone())
            .unwrap_or_default(),
        scheme: s("scheme", "http"),
        skip_policy: false,
        gateways: serde_json::from_value(r["gateways"].clone()).unwrap_or_default(),
        sni: r["sni"].as_str().map(str::to_string),
    }
}

/// Decides `req` against `yaml` and checks every field `want` names.
fn case(name: &str, source: &str, yaml: &str, req: Value, want: Value) {
    let t = table(yaml);
    let mut lines = Vec::new();
    let got = serde_json::to_value(t.decide(&request(&req), Some(&mut lines))).unwrap();
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(
            &got[k], v,
            "case {name:?} ({source}): field {k}\ngot: {got:#}\nexplain: {lines:#?}"
        );
    }
}

fn dest(host: &str, subset: Option<&str>, weight: i64) -> Value {
    json!({"host": host, "subset": subset, "port": null, "weight": weight})
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn vs(hosts: &str, http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: default}}\nspec:\n  hosts: {hosts}\n  http:\n{http}"
    )
}

#[test]
fn header_routing_sends_jason_to_v2() {
    case(
        "jason → v2",
        REQ_ROUTING,
        BOOKINFO,
        json!({"headers": {"end-user": "jason"}}),
        json!({"action": "route", "virtual_service": "default/reviews", "route_index": 0,
               "destinations": [dest(REVIEWS, Some("v2"), 100)], "subset_labels": {"version": "v2"},
               "destination_rule": "default/reviews"}),
    );
    case(
        "others → v1",
        REQ_ROUTING,
        BOOKINFO,
        json!({"headers": {"end-user": "mary"}}),
        json!({"route_index": 1, "destinations": [dest(REVIEWS, Some("v1"), 100)], "subset_labels": {"version": "v1"}}),
    );
    case(
        "no header → v1",
        REQ_ROUTING,
        BOOKINFO,
        json!({}),
        json!({"route_index": 1}),
    );
    case(
        "header names are case-insensitive",
        ROUTE_GO,
        BOOKINFO,
        json!({"headers": {"End-User": "jason"}}),
        json!({"route_index": 0}),
    );
    case(
        "header values are case-sensitive",
        VS_REF,
        BOOKINFO,
        json!({"headers": {"end-user": "Jason"}}),
        json!({"route_index": 1}),
    );
}

#[test]
fn hosts_resolve_as_the_sidecar_accepts_them() {
    for host in [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local.",
        "REVIEWS",
    ] {
        case(
            host,
            HTTPROUTE_GO,
            BOOKINFO,
            json!({"host": host}),
            json!({"virtual_service": "default/reviews"}),
        );
    }
    // From another namespace the short name is that namespace's service.
    case(
        "short name from another namespace",
        HTTPROUTE_GO,
        BOOKINFO,
        json!({"ns": "foo", "host": "reviews"}),
        json!({"action": "route", "virtual_service": null,
               "destinations": [json!({"host": "reviews.foo.svc.cluster.local", "subset": null, "port": 9080, "weight": 100})]}),
    );
    case(
        "namespace-qualified from another namespace",
        HTTPROUTE_GO,
        BOOKINFO,
        json!({"ns": "foo", "host": "reviews.default"}),
        json!({"virtual_service": "default/reviews"}),
    );
}

#[test]
fn weights_are_the_configured_ones() {
    let y = vs(
        "[reviews]",
        "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 80\n    - destination: {host: reviews, subset: v3}\n      weight: 20\n",
    );
    case(
        "80/20",
        SHIFTING,
        &y,
        json!({}),
        json!({"destinations": [dest(REVIEWS, Some("v1"), 80), dest(REVIEWS, Some("v3"), 20)]}),
    );
    let y = vs(
        "[reviews]",
        "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 1\n    - destination: {host: reviews, subset: v2}\n      weight: 0\n    - destination: {host: reviews, subset: v3}\n",
    );
    case(
        "weight 0 or omitted beside others gets nothing",
        ROUTE_GO,
        &y,
        json!({}),
        json!({"destinations": [dest(REVIEWS, Some("v1"), 1)]}),
    );
    let y = vs(
        "[reviews]",
        "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 30\n    - destination: {host: reviews, subset: v3}\n      weight: 30\n",
    );
    case(
        "weights need not sum to 100",
        ROUTE_GO,
        &y,
        json!({}),
        json!({"destinations": [dest(REVIEWS, Some("v1"), 30), dest(REVIEWS, Some("v3"), 30)]}),
    );
    let y = vs(
        "[reviews]",
        "  - route:\n    - destination: {host: reviews}\n",
    );
    case(
        "a lone destination takes everything",
        VS_REF,
        &y,
        json!({}),
        json!({"destinations": [dest(REVIEWS, None, 100)]}),
    );
    let y = vs(
        "[reviews]",
        "  - route:\n    - destination: {host: ratings, port: {number: 9080}}\n",
    );
    case(
        "destination short names resolve in the VirtualService's namespace",
        ROUTE_GO,
        &y,
        json!({"ns": "foo", "host": "reviews.default"}),
        json!({"destinations": [json!({"host": "ratings.default.svc.cluster.local", "subset": null, "port": 9080, "weight": 100})]}),
    );
}

#[test]
fn matches_or_between_blocks_and_within_a_block() {
    let http = "  - match:\n    - uri: {prefix: /a}\n      method: {exact: POST}\n    - uri: {exact: /b}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - route:\n    - destination: {host: reviews, subset: v1}\n";
    let y = vs("[reviews]", http);
    case(
        "block 1, both fields",
        VS_REF,
        &y,
        json!({"path": "/a/x", "method": "POST"}),
        json!({"route_index": 0}),
    );
    case(
        "block 1, one field only",
        VS_REF,
        &y,
        json!({"path": "/a/x", "method": "GET"}),
        json!({"route_index": 1}),
    );
    case(
        "block 2",
        VS_REF,
        &y,
        json!({"path": "/b", "method": "GET"}),
        json!({"route_index": 0}),
    );
    case(
        "exact ignores the query",
        ROUTE_GO,
        &y,
        json!({"path": "/b?x=1"}),
        json!({"route_index": 0}),
    );
    case(
        "exact is exact",
        VS_REF,
        &y,
        json!({"path": "/b/"}),
        json!({"route_index": 1}),
    );
    case(
        "prefix is a string prefix",
        ROUTE_GO,
        &y,
        json!({"path": "/abc", "method": "POST"}),
        json!({"route_index": 0}),
    );
}

#[test]
fn string_match_kinds() {
    let m = |cond: &str| {
        vs(
            "[reviews]",
            &format!(
                "  - match:\n    - {cond}\n    route:\n    - destination: {{host: reviews, subset: v2}}\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n"
            ),
        )
    };
    let hit = json!({"route_index": 0});
    let miss = json!({"route_index": 1});
    case(
        "regex is a full match",
        VS_REF,
        &m("uri: {regex: '/v[0-9]+'}"),
        json!({"path": "/v12"}),
        hit.clone(),
    );
    case(
        "regex is anchored",
        VS_REF,
        &m("uri: {regex: '/v[0-9]+'}"),
        json!({"path": "/v12/x"}),
        miss.clone(),
    );
    case(
        "ignoreUriCase exact",
        VS_REF,
        &m("{uri: {exact: /Login}, ignoreUriCase: true}"),
        json!({"path": "/LOGIN"}),
        hit.clone(),
    );
    case(
        "ignoreUriCase prefix",
        VS_REF,
        &m("{uri: {prefix: /API}, ignoreUriCase: true}"),
        json!({"path": "/api/x"}),
        hit.clone(),
    );
    case(
        "ignoreUriCase does not touch regex",
        ROUTE_GO,
        &m("{uri: {regex: /api}, ignoreUriCase: true}"),
        json!({"path": "/API"}),
        miss.clone(),
    );
    case(
        "case-sensitive by default",
        VS_REF,
        &m("uri: {exact: /Login}"),
        json!({"path": "/login"}),
        miss.clone(),
    );
    case(
        "header presence with {}",
        VS_REF,
        &m("headers: {x-canary: {}}"),
        json!({"headers": {"x-canary": "anything"}}),
        hit.clone(),
    );
    case(
        "header presence, absent",
        VS_REF,
        &m("headers: {x-canary: {}}"),
        json!({}),
        miss.clone(),
    );
    case(
        "header prefix",
        VS_REF,
        &m("headers: {cookie: {prefix: 'user=jason'}}"),
        json!({"headers": {"cookie": "user=jason; x=1"}}),
        hit.clone(),
    );
    case(
        "header regex",
        VS_REF,
        &m("headers: {cookie: {regex: '^(.*?;)?(user=jason)(;.*)?$'}}"),
        json!({"headers": {"cookie": "a=b;user=jason"}}),
        hit.clone(),
    );
    case(
        "header regex '*' is presence",
        ROUTE_GO,
        &m("headers: {x-a: {regex: '*'}}"),
        json!({"headers": {"x-a": ""}}),
        hit.clone(),
    );
    case(
        "headers key host is not the Host header",
        "istio/istio#23083",
        &m("headers: {host: {exact: reviews}}"),
        json!({"host": "reviews"}),
        miss.clone(),
    );
    case(
        "authority matches the Host header",
        VS_REF,
        &m("authority: {prefix: reviews}"),
        json!({"host": "reviews:9080"}),
        hit.clone(),
    );
    case(
        "method",
        VS_REF,
        &m("method: {exact: DELETE}"),
        json!({"method": "DELETE"}),
        hit.clone(),
    );
    case(
        "scheme",
        VS_REF,
        &m("scheme: {exact: https}"),
        json!({"scheme": "http"}),
        miss.clone(),
    );
    case(
        "query exact",
        VS_REF,
        &m("queryParams: {v: {exact: '2'}}"),
        json!({"path": "/x?a=1&v=2"}),
        hit.clone(),
    );
    case(
        "query first value counts",
        ROUTE_GO,
        &m("queryParams: {v: {exact: '2'}}"),
        json!({"path": "/x?v=1&v=2"}),
        miss.clone(),
    );
    case(
        "query regex",
        VS_REF,
        &m("queryParams: {v: {regex: '\\d+'}}"),
        json!({"path": "/x?v=42"}),
        hit.clone(),
    );
    case(
        "query values are not decoded",
        ROUTE_GO,
        &m("queryParams: {q: {exact: 'a b'}}"),
        json!({"path": "/x?q=a%20b"}),
        miss.clone(),
    );
    case(
        "query absent",
        VS_REF,
        &m("queryParams: {v: {exact: '2'}}"),
        json!({"path": "/x"}),
        miss.clone(),
    );
    case(
        "withoutHeaders",
        VS_REF,
        &m("withoutHeaders: {end-user: {exact: jason}}"),
        json!({"headers": {"end-user": "mary"}}),
        hit.clone(),
    );
    case(
        "withoutHeaders excludes",
        VS_REF,
        &m("withoutHeaders: {end-user: {exact: jason}}"),
        json!({"headers": {"end-user": "jason"}}),
        miss.clone(),
    );
    case(
        "withoutHeaders treats absence as empty",
        ROUTE_GO,
        &m("withoutHeaders: {x: {exact: ''}}"),
        json!({}),
        miss.clone(),
    );
    case(
        "sourceLabels",
        VS_REF,
        &m("sourceLabels: {app: productpage}"),
        json!({"labels": {"app": "productpage"}}),
        hit.clone(),
    );
    case(
        "sourceLabels, other client",
        VS_REF,
        &m("sourceLabels: {app: productpage}"),
        json!({"labels": {"app": "other"}}),
        miss.clone(),
    );
    case(
        "sourceNamespace",
        VS_REF,
        &m("sourceNamespace: foo"),
        json!({"ns": "foo", "host": "reviews.default"}),
        hit.clone(),
    );
    case(
        "port",
        VS_REF,
        &m("port: 9080"),
        json!({"port": 9080}),
        hit.clone(),
    );
    case(
        "match for a gateway only",
        VS_REF,
        &m("gateways: [my-gateway]"),
        json!({}),
        miss.clone(),
    );
    case(
        "match for mesh",
        VS_REF,
        &m("gateways: [mesh]"),
        json!({}),
        hit,
    );
}

#[test]
fn no_matching_rule_is_404_and_no_virtual_service_is_the_default_route() {
    let y = vs(
        "[reviews]",
        "  - match:\n    - uri: {prefix: /api}\n    route:\n    - destination: {host: reviews}\n",
    );
    case(
        "owned host, no match",
        HTTPROUTE_GO,
        &y,
        json!({"path": "/other"}),
        json!({"action": "no_route", "status": 404, "virtual_service": "default/vs"}),
    );
    case(
        "no VirtualService: default route, default retries, no timeout",
        RETRY_GO,
        "",
        json!({"host": "ratings"}),
        json!({"action": "route", "virtual_service": null, "timeout": null,
               "destinations": [json!({"host": "ratings.default.svc.cluster.local", "subset": null, "port": 9080, "weight": 100})],
               "retries": {"attempts": 2, "per_try_timeout": null, "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"}}),
    );
    case(
        "unknown external host",
        HTTPROUTE_GO,
        "",
        json!({"host": "example.com", "port": 443}),
        json!({"action": "no_route", "virtual_service": null, "status": null}),
    );
    let y = vs(
        "[reviews]",
        "  - match:\n    - port: 8080\n    route:\n    - destination: {host: reviews, subset: v2}\n",
    );
    case(
        "rules only for another port: no virtual host, default route",
        HTTPROUTE_GO,
        &y,
        json!({"port": 9080}),
        json!({"action": "route", "virtual_service": null, "destinations": [json!({"host": REVIEWS, "subset": null, "port": 9080, "weight": 100})]}),
    );
    let y = vs(
        "[reviews]",
        "  - match:\n    - uri: {prefix: /}\n      gateways: [gw]\n    route:\n    - destination: {host: reviews, subset: v2}\n",
    );
    case(
        "rules only for a gateway: default route",
        HTTPROUTE_GO,
        &y,
        json!({}),
        json!({"virtual_service": null}),
    );
    let gw_only = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: gw, namespace: default}\nspec:\n  hosts: [reviews]\n  gateways: [my-gateway]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v2}\n";
    case(
        "VirtualService bound to a gateway only",
        VS_REF,
        gw_only,
        json!({}),
        json!({"virtual_service": null}),
    );
}

#[test]
fn which_virtual_service_owns_a_host() {
    let two = |a_ts: &str, b_ts: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a, namespace: default, creationTimestamp: '{a_ts}'}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: a}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: b, namespace: other, creationTimestamp: '{b_ts}'}}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  http:\n  - route:\n    - destination: {{host: reviews.default.svc.cluster.local, subset: b}}\n"
        )
    };
    case(
        "the oldest wins",
        HTTPROUTE_GO,
        &two("2024-01-02T00:00:00Z", "2024-01-01T00:00:00Z"),
        json!({}),
        json!({"virtual_service": "other/b"}),
    );
    case(
        "the oldest wins, either way",
        HTTPROUTE_GO,
        &two("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"),
        json!({}),
        json!({"virtual_service": "default/a"}),
    );
    let wild = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: w, namespace: default, creationTimestamp: '2020-01-01T00:00:00Z'}\nspec:\n  hosts: ['*.default.svc.cluster.local']\n  http:\n  - route:\n    - destination: {host: reviews, subset: w}\n---\n".to_string() + &vs("[reviews]", "  - route:\n    - destination: {host: reviews, subset: exact}\n");
    case(
        "an exact host beats an older wildcard",
        "istio/istio pilot/pkg/model/sidecar.go MostSpecificHostMatch",
        &wild,
        json!({}),
        json!({"virtual_service": "default/vs"}),
    );
    case(
        "the wildcard takes other hosts",
        VS_REF,
        &wild,
        json!({"host": "ratings"}),
        json!({"virtual_service": "default/w"}),
    );
    let private = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: mine, namespace: foo, creationTimestamp: '2024-06-01T00:00:00Z'}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  exportTo: ['.']\n  http:\n  - route:\n    - destination: {host: reviews.default.svc.cluster.local, subset: v3}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default, creationTimestamp: '2020-01-01T00:00:00Z'}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n";
    case(
        "a private VirtualService in the client's namespace comes first",
        "istio/istio pilot/pkg/model/virtualservice.go SelectVirtualServices",
        private,
        json!({"ns": "foo", "host": "reviews.default"}),
        json!({"virtual_service": "foo/mine"}),
    );
    case(
        "invisible from elsewhere",
        VS_REF,
        private,
        json!({"ns": "bar", "host": "reviews.default"}),
        json!({"virtual_service": "default/reviews"}),
    );
}

#[test]
fn redirects_and_direct_responses() {
    let y = vs(
        "[reviews]",
        "  - match:\n    - uri: {exact: /v1/getProductRatings}\n    redirect:\n      uri: /v1/bookRatings\n      authority: newratings.default.svc.cluster.local\n",
    );
    case(
        "reference redirect",
        VS_REF,
        &y,
        json!({"path": "/v1/getProductRatings"}),
        json!({"action": "redirect", "status": 301, "redirect": {"uri": "/v1/bookRatings", "authority": "newratings.default.svc.cluster.local", "scheme": "http", "port": null, "status": 301, "location": "http://newratings.default.svc.cluster.local/v1/bookRatings"}}),
    );
    let y = vs(
        "[reviews]",
        "  - match:\n    - uri: {prefix: /old}\n    redirect:\n      uri: /new\n      redirectCode: 308\n",
    );
    case(
        "redirect uri replaces the whole path and keeps the query",
        ROUTE_GO,
        &y,
        json!({"path": "/old/x?q=1", "host": "reviews:9080"}),
        json!({"status": 308, "redirect": {"uri": "/new?q=1", "authority": "reviews:9080", "scheme": "http", "port": null, "status": 308, "location": "http://reviews:9080/new?q=1"}}),
    );
    let y = vs(
        "[reviews]",
        "  - match:\n    - uri: {prefix: /old}\n    redirect:\n      prefixRewrite: /new\n      scheme: https\n      port: 8443\n",
    );
    case(
        "redirect prefixRewrite, scheme and port",
        ROUTE_GO,
        &y,
        json!({"path": "/old/x"}),
        json!({"redirect": {"uri": "/new/x", "authority": "reviews", "scheme": "https", "port": 8443, "status": 301, "location": "https://reviews:8443/new/x"}}),
    );
    let y = vs(
        "[reviews]",
        "  - redirect:\n      scheme: https\n      port: 443\n",
    );
    case(
        "default port for the scheme is dropped",
        ROUTE_GO,
        &y,
        json!({"path": "/p"}),
        json!({"redirect": {"uri": "/p", "authority": "reviews", "scheme": "https", "port": null, "status": 301, "location": "https://reviews/p"}}),
    );
    let y = vs(
        "[reviews]",
        "  - redirect:\n      derivePort: FROM_REQUEST_PORT\n      authority: other\n",
    );
    case(
        "derivePort FROM_REQUEST_PORT",
        VS_REF,
        &y,
        json!({}),
        json!({"redirect": {"uri": "/", "authority": "other", "scheme": "http", "port": 9080, "status": 301, "location": "http://other:9080/"}}),
    );
    let y = vs(
        "[reviews]",
        "  - match:\n    - uri: {prefix: /}\n    directResponse:\n      status: 503\n      body: {string: 'unknown path'}\n",
    );
    case(
        "direct response",
        VS_REF,
        &y,
        json!({}),
        json!({"action": "direct_response", "status": 503, "direct_response": {"status": 503, "body": "unknown path"}, "destinations": []}),
    );
}

#[test]
fn rewrites_replace_what_was_matched() {
    let y = vs(
        "[reviews]",
        "  - match:\n    - uri: {prefix: /ratings}\n    rewrite:\n      uri: /v1/bookRatings\n    route:\n    - destination: {host: ratings}\n",
    );
    case(
        "prefix rewrite",
        VS_REF,
        &y,
        json!({"path": "/ratings/2?x=1"}),
        json!({"rewrite": {"uri": "/v1/bookRatings/2?x=1"}}),
    );
    case(
        "prefix rewrite of a string prefix",
        ROUTE_GO,
        &y,
        json!({"path": "/ratingsfoo"}),
        json!({"rewrite": {"uri": "/v1/bookRatingsfoo"}}),
    );
    let y = vs(
        "[reviews]",
        "  - match:\n    - uri: {exact: /a}\n    rewrite:\n      uri: /b\n      authority: other\n    route:\n    - destination: {host: ratings}\n",
    );
    case(
        "exact rewrite replaces the path",
        ROUTE_GO,
        &y,
        json!({"path": "/a?k=v"}),
        json!({"rewrite": {"uri": "/b?k=v", "authority": "other"}}),
    );
    let y = vs(
        "[reviews]",
        "  - rewrite:\n      uri: /v2\n    route:\n    - destination: {host: ratings}\n",
    );
    case(
        "no uri match replaces the leading /",
        ROUTE_GO,
        &y,
        json!({"path": "/x"}),
        json!({"rewrite": {"uri": "/v2x"}}),
    );
    let y = vs(
        "[reviews]",
        "  - match:\n    - uri: {prefix: /service}\n    rewrite:\n      uriRegexRewrite:\n        match: ^/service/([^/]+)(/.*)$\n        rewrite: \\2/instance/\\1\n    route:\n    - destination: {host: ratings}\n",
    );
    case(
        "uriRegexRewrite with groups",
        VS_REF,
        &y,
        json!({"path": "/service/foo/v1/api?q"}),
        json!({"rewrite": {"uri": "/v1/api/instance/foo?q"}}),
    );
}

#[test]
fn timeouts_retries_faults_and_mirrors() {
    let y = vs(
        "[ratings]",
        "  - match:\n    - headers: {end-user: {exact: jason}}\n    fault:\n      delay:\n        percentage: {value: 100.0}\n        fixedDelay: 7s\n    route:\n    - destination: {host: ratings, subset: v1}\n  - route:\n    - destination: {host: ratings, subset: v1}\n",
    );
    case(
        "delay for jason",
        FAULTS,
        &y,
        json!({"host": "ratings", "headers": {"end-user": "jason"}}),
        json!({"fault": {"delay": {"fixed_delay": "7s", "percent": 100.0}}}),
    );
    case(
        "no fault for others",
        FAULTS,
        &y,
        json!({"host": "ratings"}),
        json!({"fault": null, "route_index": 1}),
    );
    let y = vs(
        "[ratings]",
        "  - fault:\n      abort:\n        percentage: {value: 50}\n        httpStatus: 500\n    route:\n    - destination: {host: ratings}\n",
    );
    case(
        "abort 50%",
        FAULTS,
        &y,
        json!({"host": "ratings"}),
        json!({"fault": {"abort": {"http_status": 500, "percent": 50.0}}}),
    );
    let y = vs(
        "[ratings]",
        "  - fault:\n      abort:\n        grpcStatus: UNAVAILABLE\n    route:\n    - destination: {host: ratings}\n",
    );
    case(
        "abort without percentage injects nothing",
        ROUTE_GO,
        &y,
        json!({"host": "ratings"}),
        json!({"fault": {"abort": {"grpc_status": "UNAVAILABLE", "percent": 0.0}}}),
    );
    let y = vs(
        "[reviews]",
        "  - route:\n    - destination: {host: reviews, subset: v2}\n    timeout: 0.5s\n",
    );
    case(
        "timeout",
        TIMEOUTS,
        &y,
        json!({}),
        json!({"timeout": "0.5s"}),
    );
    let y = vs(
        "[reviews]",
        "  - route:\n    - destination: {host: reviews}\n    timeout: 0s\n",
    );
    case(
        "timeout 0s is none",
        VS_REF,
        &y,
        json!({}),
        json!({"timeout": null}),
    );
    let y = vs(
        "[ratings]",
        "  - route:\n    - destination: {host: ratings, subset: v1}\n    retries:\n      attempts: 3\n      perTryTimeout: 2s\n      retryOn: gateway-error,connect-failure,refused-stream\n",
    );
    case(
        "retries as configured",
        VS_REF,
        &y,
        json!({"host": "ratings"}),
        json!({"retries": {"attempts": 3, "per_try_timeout": "2s", "retry_on": "gateway-error,connect-failure,refused-stream"}}),
    );
    let y = vs(
        "[ratings]",
        "  - route:\n    - destination: {host: ratings}\n    retries: {attempts: 3}\n",
    );
    case(
        "attempts without retryOn keep the default conditions",
        RETRY_GO,
        &y,
        json!({"host": "ratings"}),
        json!({"retries": {"attempts": 3, "per_try_timeout": null, "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"}}),
    );
    let y = vs(
        "[ratings]",
        "  - route:\n    - destination: {host: ratings}\n    retries: {attempts: 0}\n",
    );
    case(
        "attempts 0 disables retries",
        RETRY_GO,
        &y,
        json!({"host": "ratings"}),
        json!({"retries": {"attempts": 0, "per_try_timeout": null, "retry_on": null}}),
    );
    let y = vs(
        "[httpbin]",
        "  - route:\n    - destination: {host: httpbin, subset: v1}\n    mirror:\n      host: httpbin\n      subset: v2\n    mirrorPercentage:\n      value: 100.0\n",
    );
    case(
        "mirror",
        "istio.io/latest/docs/tasks/traffic-management/mirroring/",
        &y,
        json!({"host": "httpbin"}),
        json!({"mirror": {"host": "httpbin.default.svc.cluster.local", "subset": "v2", "percent": 100.0}}),
    );
    let y = vs(
        "[httpbin]",
        "  - route:\n    - destination: {host: httpbin}\n    mirror: {host: httpbin-shadow}\n",
    );
    case(
        "mirror without percentage mirrors everything",
        VS_REF,
        &y,
        json!({"host": "httpbin"}),
        json!({"mirror": {"host": "httpbin-shadow.default.svc.cluster.local", "subset": null, "percent": 100.0}}),
    );
}

#[test]
fn header_operations_merge_route_and_lone_destination() {
    let y = vs(
        "[reviews]",
        "  - headers:\n      request:\n        set: {x-route: r}\n      response:\n        remove: [foo]\n    route:\n    - destination: {host: reviews, subset: v2}\n      headers:\n        request:\n          add: {x-dest: d}\n",
    );
    case(
        "merged",
        VS_REF,
        &y,
        json!({}),
        json!({"request_headers": {"set": {"x-route": "r"}, "add": {"x-dest": "d"}, "remove": []},
               "response_headers": {"set": {}, "add": {}, "remove": ["foo"]}}),
    );
}

#[test]
fn destination_rules_and_policy_merge() {
    let dr = |ns: &str, name: &str, host: &str, policy: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {host}\n  trafficPolicy: {policy}\n  subsets:\n  - name: v2\n    labels: {{version: v2}}\n    trafficPolicy:\n      loadBalancer: {{simple: ROUND_ROBIN}}\n---\n"
        )
    };
    let y = dr(
        "default",
        "reviews",
        "reviews",
        "{loadBalancer: {simple: RANDOM}, connectionPool: {tcp: {maxConnections: 100}}}",
    ) + &vs(
        "[reviews]",
        "  - route:\n    - destination: {host: reviews, subset: v2}\n",
    );
    case(
        "subset overrides field by field",
        DR_REF,
        &y,
        json!({}),
        json!({"traffic_policy": {"loadBalancer": {"simple": "ROUND_ROBIN"}, "connectionPool": {"tcp": {"maxConnections": 100}}}, "subset_labels": {"version": "v2"}}),
    );
    let y = dr(
        "default",
        "reviews",
        "reviews",
        "{loadBalancer: {simple: RANDOM}, connectionPool: {tcp: {maxConnections: 100}}, portLevelSettings: [{port: {number: 9080}, loadBalancer: {simple: LEAST_REQUEST}}]}",
    ) + &vs(
        "[reviews]",
        "  - route:\n    - destination: {host: reviews}\n",
    );
    case(
        "a port-level setting replaces the policy wholesale",
        DR_GO,
        &y,
        json!({"port": 9080}),
        json!({"traffic_policy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}),
    );
    case(
        "other ports keep the top level",
        DR_GO,
        &y,
        json!({"port": 9081}),
        json!({"traffic_policy": {"loadBalancer": {"simple": "RANDOM"}, "connectionPool": {"tcp": {"maxConnections": 100}}}}),
    );
    let y = dr(
        "foo",
        "client-side",
        "reviews.default.svc.cluster.local",
        "{tls: {mode: DISABLE}}",
    ) + &dr(
        "default",
        "svc-side",
        "reviews",
        "{tls: {mode: ISTIO_MUTUAL}}",
    ) + &dr(
        "istio-system",
        "root",
        "'*.local'",
        "{loadBalancer: {simple: RANDOM}}",
    );
    case(
        "the client's namespace first",
        PUSH_GO,
        &y,
        json!({"ns": "foo", "host": "reviews.default"}),
        json!({"destination_rule": "foo/client-side", "traffic_policy": {"tls": {"mode": "DISABLE"}}}),
    );
    case(
        "then the service's",
        PUSH_GO,
        &y,
        json!({"ns": "bar", "host": "reviews.default"}),
        json!({"destination_rule": "default/svc-side"}),
    );
    case(
        "then the root namespace",
        PUSH_GO,
        &y,
        json!({"ns": "bar", "host": "ratings.default"}),
        json!({"destination_rule": "istio-system/root", "traffic_policy": {"loadBalancer": {"simple": "RANDOM"}}}),
    );
}

#[test]
fn tcp_routes() {
    let y = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: tcp-echo, namespace: default}\nspec:\n  hosts: [tcp-echo]\n  tcp:\n  - match:\n    - port: 9000\n    route:\n    - destination: {host: tcp-echo, port: {number: 9000}, subset: v1}\n      weight: 80\n    - destination: {host: tcp-echo, port: {number: 9000}, subset: v2}\n      weight: 20\n";
    case(
        "weighted tcp",
        "istio.io/latest/docs/tasks/traffic-management/tcp-traffic-shifting/",
        y,
        json!({"protocol": "tcp", "host": "tcp-echo", "port": 9000}),
        json!({"action": "route", "route_index": 0, "destinations": [
            json!({"host": "tcp-echo.default.svc.cluster.local", "subset": "v1", "port": 9000, "weight": 80}),
            json!({"host": "tcp-echo.default.svc.cluster.local", "subset": "v2", "port": 9000, "weight": 20})]}),
    );
    case(
        "no tcp rule for the port",
        VS_REF,
        y,
        json!({"protocol": "tcp", "host": "tcp-echo", "port": 9001}),
        json!({"action": "no_route"}),
    );
}

#[test]
fn delegates_decide_inside_the_root_match() {
    let y = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: root, namespace: default}\nspec:\n  hosts: [bookinfo.com]\n  http:\n  - match:\n    - uri: {prefix: /productpage}\n    delegate: {name: productpage, namespace: nsA}\n  - route:\n    - destination: {host: fallback}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: productpage, namespace: nsA}\nspec:\n  http:\n  - match:\n    - uri: {prefix: /productpage/v1/}\n    route:\n    - destination: {host: productpage-v1.nsA.svc.cluster.local}\n  - route:\n    - destination: {host: productpage.nsA.svc.cluster.local}\n";
    case(
        "delegate first rule",
        VS_REF,
        y,
        json!({"host": "bookinfo.com", "path": "/productpage/v1/x"}),
        json!({"virtual_service": "nsA/productpage", "route_index": 0, "destinations": [dest("productpage-v1.nsa.svc.cluster.local", None, 100)]}),
    );
    case(
        "delegate fallback rule",
        VS_REF,
        y,
        json!({"host": "bookinfo.com", "path": "/productpage/x"}),
        json!({"virtual_service": "nsA/productpage", "route_index": 1}),
    );
    case(
        "root rule after the delegate",
        VS_REF,
        y,
        json!({"host": "bookinfo.com", "path": "/other"}),
        json!({"virtual_service": "default/root", "route_index": 1}),
    );
}

/// `corsPolicy` in the decision, in the form istiod hands Envoy's CORS filter.
#[test]
fn cors_policies() {
    // The reference page's example.
    let reference = vs(
        "[ratings]",
        "  - route:\n    - destination: {host: ratings, subset: v1}\n    corsPolicy:\n      allowOrigins:\n      - exact: https://example.com\n      allowMethods: [POST, GET]\n      allowCredentials: false\n      allowHeaders: [X-Foo-Bar]\n      maxAge: \"24h\"\n",
    );
    case(
        "the reference example",
        CORS_GO,
        &reference,
        json!({"host": "ratings"}),
        json!({"action": "route", "cors": {
            "allow_origins": [{"exact": "https://example.com"}],
            "allow_methods": "POST,GET", "allow_headers": "X-Foo-Bar", "expose_headers": null,
            "max_age": "86400", "allow_credentials": false, "unmatched_preflights": "FORWARD"}}),
    );
    case(
        "no corsPolicy",
        CORS_REF,
        &vs(
            "[ratings]",
            "  - route:\n    - destination: {host: ratings}\n",
        ),
        json!({"host": "ratings"}),
        json!({"action": "route", "cors": null}),
    );
    // `allowOrigin` (deprecated) counts only without `allowOrigins`; an `allowOrigins`
    // entry with no match type is left out; IGNORE and credentials carried.
    let both = vs(
        "[ratings]",
        "  - match:\n    - uri: {prefix: /old}\n    route:\n    - destination: {host: ratings}\n    corsPolicy: {allowOrigin: ['*', 'https://a.example']}\n  - route:\n    - destination: {host: ratings}\n    corsPolicy:\n      allowOrigin: ['https://a.example']\n      allowOrigins: [{regex: 'https://[a-z]+\\.example'}, {}]\n      exposeHeaders: [x-a, x-b]\n      allowCredentials: true\n      unmatchedPreflights: IGNORE\n",
    );
    case(
        "allowOrigin as exact matches",
        CORS_GO,
        &both,
        json!({"host": "ratings", "path": "/old"}),
        json!({"cors": {"allow_origins": [{"exact": "*"}, {"exact": "https://a.example"}],
               "allow_methods": null, "allow_headers": null, "expose_headers": null,
               "max_age": null, "allow_credentials": false, "unmatched_preflights": "FORWARD"}}),
    );
    case(
        "allowOrigins over allowOrigin",
        CORS_GO,
        &both,
        json!({"host": "ratings", "path": "/new"}),
        json!({"cors": {"allow_origins": [{"regex": "https://[a-z]+\\.example"}],
               "allow_methods": null, "allow_headers": null, "expose_headers": "x-a,x-b",
               "max_age": null, "allow_credentials": true, "unmatched_preflights": "IGNORE"}}),
    );
    // Envoy's CORS filter acts only on a route that forwards (`routeEntry()` is null
    // for redirects and direct responses): no policy in those decisions.
    case(
        "a redirect has no CORS",
        ENVOY_CORS,
        &vs(
            "[ratings]",
            "  - redirect: {uri: /x}\n    corsPolicy: {allowOrigins: [{exact: a}]}\n",
        ),
        json!({"host": "ratings"}),
        json!({"action": "redirect", "cors": null}),
    );
    case(
        "a direct response has no CORS",
        ENVOY_CORS,
        &vs(
            "[ratings]",
            "  - directResponse: {status: 204}\n    corsPolicy: {allowOrigins: [{exact: a}]}\n",
        ),
        json!({"host": "ratings"}),
        json!({"action": "direct_response", "cors": null}),
    );
    // A delegate's rule without a corsPolicy takes the root rule's; its own wins.
    let delegated = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: root, namespace: default}\nspec:\n  hosts: [bookinfo.com]\n  http:\n  - match:\n    - uri: {prefix: /productpage}\n    delegate: {name: productpage, namespace: nsA}\n    corsPolicy: {allowOrigins: [{exact: https://root.example}]}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: productpage, namespace: nsA}\nspec:\n  http:\n  - match:\n    - uri: {prefix: /productpage/v1/}\n    route:\n    - destination: {host: productpage-v1.nsA.svc.cluster.local}\n    corsPolicy: {allowOrigins: [{exact: https://own.example}]}\n  - route:\n    - destination: {host: productpage.nsA.svc.cluster.local}\n";
    let origins = |o: &str| json!([{ "exact": o }]);
    for (path, origin) in [
        ("/productpage/v1/x", "https://own.example"),
        ("/productpage/x", "https://root.example"),
    ] {
        let t = table(delegated);
        let d = serde_json::to_value(t.decide(
            &request(&json!({"host": "bookinfo.com", "path": path})),
            None,
        ))
        .unwrap();
        assert_eq!(
            d["cors"]["allow_origins"],
            origins(origin),
            "{MERGE_GO}: {path}: {d:#}"
        );
    }
    // A gateway's route carries its policy the same way.
    let gw = HTTPBIN_GATEWAY.replace(
        "    route:\n",
        "    corsPolicy: {allowOrigins: [{prefix: 'https://'}], allowMethods: ['*']}\n    route:\n",
    );
    case(
        "at a gateway",
        CORS_GO,
        &gw,
        at_gateway(
            "default/httpbin-gateway",
            json!({"host": "httpbin.example.com", "port": 80, "path": "/status/200"}),
        ),
        json!({"action": "route", "cors": {"allow_origins": [{"prefix": "https://"}],
               "allow_methods": "*", "allow_headers": null, "expose_headers": null,
               "max_age": null, "allow_credentials": false, "unmatched_preflights": "FORWARD"}}),
    );
}

#[test]
fn bad_resources_are_refused_by_field() {
    let bad = |yaml: &str, field: &str, message: &str| {
        let set = crate::loader::load_str(Path::new("bad.yaml"), yaml).unwrap();
        let errors = RouteTable::build(&set, TableOptions::default()).unwrap_err();
        let text = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains(field) && text.contains(message),
            "{yaml}\n{text}"
        );
        assert!(text.contains("bad.yaml"), "{text}");
    };
    bad(
        &vs(
            "[a]",
            "  - route:\n    - destination: {host: a}\n    timeout: '5'\n",
        ),
        "spec.http[0].timeout",
        "not a duration",
    );
    bad(
        &vs(
            "[a]",
            "  - route:\n    - destination: {host: a}\n    timeout: 5\n",
        ),
        "spec.http[0].timeout",
        "expected a string",
    );
    bad(
        &vs(
            "[a]",
            "  - match:\n    - uri: {regex: '('}\n    route:\n    - destination: {host: a}\n",
        ),
        "spec.http[0].match[0].uri.regex",
        "RE2",
    );
    bad(
        &vs(
            "[a]",
            "  - route:\n    - destination: {host: a}\n    corsPolicy:\n      allowOrigins: [{exact: b}, {regex: '(https://x'}]\n",
        ),
        "spec.http[0].corsPolicy.allowOrigins[1].regex",
        "RE2",
    );
    bad(
        &vs(
            "[a]",
            "  - route:\n    - destination: {host: a}\n    corsPolicy: {maxAge: soon}\n",
        ),
        "spec.http[0].corsPolicy.maxAge",
        "not a duration",
    );
    bad(
        &vs(
            "[a]",
            "  - match:\n    - uri: {exact: /a, prefix: /b}\n    route:\n    - destination: {host: a}\n",
        ),
        "spec.http[0].match[0].uri",
        "only one of",
    );
    bad(
        &vs(
            "[a]",
            "  - route:\n    - destination: {host: a}\n    redirect: {uri: /x}\n",
        ),
        "spec.http[0]",
        "exactly one of route",
    );
    bad(
        &vs(
            "[a]",
            "  - route:\n    - destination: {host: a}\n      weight: -1\n",
        ),
        "spec.http[0].route",
        "negative",
    );
    bad(
        &vs(
            "[a]",
            "  - route:\n    - destination: {host: a}\n    - destination: {host: b}\n",
        ),
        "spec.http[0].route",
        "must not all be 0",
    );
    bad(
        &vs(
            "[a]",
            "  - route:\n    - destination: {host: a}\n    retrys: {attempts: 1}\n",
        ),
        "spec.http[0]",
        "retrys",
    );
    bad(
        &vs(
            "[a]",
            "  - route:\n    - destination: {host: a}\n    fault: {delay: {fixedDelay: soon, percentage: {value: 1}}}\n",
        ),
        "spec.http[0].fault.delay.fixedDelay",
        "not a duration",
    );
    bad(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: default}\nspec:\n  subsets: []\n",
        "spec.host",
        "required",
    );
}

// Gateways.
const GW_REF: &str = "istio.io/latest/docs/reference/config/networking/gateway/";
const BOOKINFO_GW_SRC: &str = "istio/istio samples/bookinfo/networking/bookinfo-gateway.yaml";
const INGRESS: &str = "istio.io/latest/docs/tasks/traffic-management/ingress/ingress-control/";
const SECURE_INGRESS: &str =
    "istio.io/latest/docs/tasks/traffic-management/ingress/secure-ingress/";
const SNI_PASSTHROUGH: &str =
    "istio.io/latest/docs/tasks/traffic-management/ingress/ingress-sni-passthrough/";
const TCP_SHIFTING: &str = "istio.io/latest/docs/tasks/traffic-management/tcp-traffic-shifting/";
const GATEWAY_GO: &str =
    "istio/istio pilot/pkg/networking/core/gateway.go buildGatewayHTTPRouteConfig";
const GATEWAY_TLS_GO: &str =
    "istio/istio pilot/pkg/networking/core/gateway.go buildGatewayNetworkFiltersFromTLSRoutes";
const VS_FOR_GATEWAY: &str =
    "istio/istio pilot/pkg/model/push_context.go VirtualServicesForGateway";
const SOURCE_MATCH_GO: &str =
    "istio/istio pilot/pkg/networking/core/route/route.go sourceMatchHTTP";
const TLS_GO: &str =
    "istio/istio pilot/pkg/networking/core/tls.go buildSidecarOutboundTLSFilterChainOpts";

/// samples/bookinfo/networking/bookinfo-gateway.yaml, applied in `default`.
const BOOKINFO_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        exact: /productpage
    - uri:
        prefix: /static
    - uri:
        exact: /login
    - uri:
        exact: /logout
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: 9080
"#;

/// The ingress task's httpbin Gateway and VirtualService.
const HTTPBIN_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - "httpbin.example.com"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "httpbin.example.com"
  gateways:
  - httpbin-gateway
  http:
  - match:
    - uri:
        prefix: /status
    - uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
"#;

/// A request the ingress gateway workload (`istio-system`, `istio=ingressgateway`)
/// accepted with a server of `gateway`.
fn at_gateway(gateway: &str, more: Value) -> Value {
    let mut r =
        json!({"ns": "istio-system", "labels": {"istio": "ingressgateway"}, "gateways": [gateway]});
    for (k, v) in more.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

fn dest_port(host: &str, subset: Option<&str>, port: u32, weight: i64) -> Value {
    json!({"host": host, "subset": subset, "port": port, "weight": weight})
}

const PRODUCTPAGE: &str = "productpage.default.svc.cluster.local";

#[test]
fn bookinfo_gateway_routes_its_five_paths() {
    let gw = "default/bookinfo-gateway";
    for path in [
        "/productpage",
        "/static/bootstrap/css/bootstrap.min.css",
        "/login",
        "/logout",
        "/api/v1/products/0/reviews",
    ] {
        case(
            path,
            BOOKINFO_GW_SRC,
            BOOKINFO_GATEWAY,
            at_gateway(
                gw,
                json!({"host": "192.0.2.10:8080", "port": 8080, "path": path}),
            ),
            json!({"action": "route", "virtual_service": "default/bookinfo", "route_index": 0,
                   "destinations": [dest_port(PRODUCTPAGE, None, 9080, 100)]}),
        );
    }
    case(
        "exact /productpage is exact",
        BOOKINFO_GW_SRC,
        BOOKINFO_GATEWAY,
        at_gateway(
            gw,
            json!({"host": "bookinfo.example.com", "port": 8080, "path": "/productpage/x"}),
        ),
        json!({"action": "no_route", "status": 404, "virtual_service": "default/bookinfo"}),
    );
    case(
        "other paths are 404",
        BOOKINFO_GW_SRC,
        BOOKINFO_GATEWAY,
        at_gateway(
            gw,
            json!({"host": "bookinfo.example.com", "port": 8080, "path": "/"}),
        ),
        json!({"action": "no_route", "status": 404}),
    );
    case(
        "no server on another port",
        GATEWAY_GO,
        BOOKINFO_GATEWAY,
        at_gateway(
            gw,
            json!({"host": "bookinfo.example.com", "port": 80, "path": "/productpage"}),
        ),
        json!({"action": "no_route", "status": 404, "virtual_service": null}),
    );
    case(
        "a VirtualService bound to a gateway only is not a sidecar's",
        VS_REF,
        BOOKINFO_GATEWAY,
        json!({"host": "productpage", "port": 9080, "path": "/productpage"}),
        json!({"action": "route", "virtual_service": null,
               "destinations": [dest_port(PRODUCTPAGE, None, 9080, 100)]}),
    );
}

#[test]
fn httpbin_ingress_serves_its_host_only() {
    let gw = "default/httpbin-gateway";
    let httpbin = "httpbin.default.svc.cluster.local";
    for path in ["/status/200", "/delay/2"] {
        case(
            path,
            INGRESS,
            HTTPBIN_GATEWAY,
            at_gateway(
                gw,
                json!({"host": "httpbin.example.com", "port": 80, "path": path}),
            ),
            json!({"action": "route", "virtual_service": "default/httpbin",
                   "destinations": [dest_port(httpbin, None, 8000, 100)],
                   "retries": {"attempts": 2, "per_try_timeout": null, "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"}}),
        );
    }
    case(
        "the Host's port is ignored",
        GATEWAY_GO,
        HTTPBIN_GATEWAY,
        at_gateway(
            gw,
            json!({"host": "HTTPBIN.example.com:80", "port": 80, "path": "/status/418"}),
        ),
        json!({"action": "route", "virtual_service": "default/httpbin"}),
    );
    case(
        "another path of the host is 404",
        INGRESS,
        HTTPBIN_GATEWAY,
        at_gateway(
            gw,
            json!({"host": "httpbin.example.com", "port": 80, "path": "/headers"}),
        ),
        json!({"action": "no_route", "status": 404, "virtual_service": "default/httpbin"}),
    );
    let t = table(HTTPBIN_GATEWAY);
    let d = t.decide(
        &request(&at_gateway(
            gw,
            json!({"host": "other.example.com", "port": 80, "path": "/status/200"}),
        )),
        None,
    );
    assert_eq!((d.action, d.status), ("no_route", Some(404)), "{d:?}");
    let note = d.note.unwrap();
    assert!(
        note.contains("default/httpbin-gateway") && note.contains("other.example.com"),
        "{INGRESS}: {note}"
    );
}

#[test]
fn https_servers_terminate_tls_and_redirect_plain_text() {
    let y = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
    hosts: [httpbin.example.com]
  - port: {number: 80, name: http, protocol: HTTP}
    tls: {httpsRedirect: true}
    hosts: [httpbin.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.example.com]
  gateways: [istio-system/mygateway]
  http:
  - match:
    - uri: {prefix: /status}
    - uri: {prefix: /delay}
    route:
    - destination: {host: httpbin, port: {number: 8000}}
  - match:
    - uri: {exact: /old}
    redirect: {uri: /new, port: 8443}
"#;
    let gw = "istio-system/mygateway";
    case(
        "HTTPS terminated: http rules",
        SECURE_INGRESS,
        y,
        at_gateway(
            gw,
            json!({"host": "httpbin.example.com", "sni": "httpbin.example.com", "scheme": "https", "port": 443, "path": "/status/418"}),
        ),
        json!({"action": "route", "virtual_service": "default/httpbin",
               "destinations": [dest_port("httpbin.default.svc.cluster.local", None, 8000, 100)]}),
    );
    case(
        "httpsRedirect answers plain text with 301 to https",
        GW_REF,
        y,
        at_gateway(
            gw,
            json!({"host": "httpbin.example.com", "port": 80, "path": "/status/200?x=1"}),
        ),
        json!({"action": "redirect", "status": 301,
               "redirect": {"uri": "/status/200?x=1", "authority": "httpbin.example.com", "scheme": "https", "port": null, "status": 301, "location": "https://httpbin.example.com/status/200?x=1"}}),
    );
    case(
        "a redirect over TLS keeps https",
        ROUTE_GO,
        y,
        at_gateway(
            gw,
            json!({"host": "httpbin.example.com", "scheme": "https", "port": 443, "path": "/old"}),
        ),
        json!({"action": "redirect", "redirect": {"uri": "/new", "authority": "httpbin.example.com", "scheme": "https", "port": 8443, "status": 301, "location": "https://httpbin.example.com:8443/new"}}),
    );
}

#[test]
fn virtual_services_on_one_gateway_host_merge() {
    let y = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: first, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {host: frontend}
  - match:
    - uri: {prefix: /never}
    route:
    - destination: {host: never}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: second, namespace: default, creationTimestamp: "2024-01-02T00:00:00Z"}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/gw]
  http:
  - match:
    - uri: {prefix: /cart}
    route:
    - destination: {host: cart}
  - match:
    - uri: {prefix: /}
    route:
    - destination: {host: second-default}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild, namespace: default}
spec:
  hosts: ["*.example.com"]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {host: wild}
"#;
    let gw = "istio-system/gw";
    let shop = |path: &str| {
        at_gateway(
            gw,
            json!({"host": "shop.example.com", "port": 80, "path": path}),
        )
    };
    case(
        "a later VirtualService's rule before an earlier catch-all",
        GATEWAY_GO,
        y,
        shop("/cart/1"),
        json!({"action": "route", "virtual_service": "default/second", "route_index": 0,
               "destinations": [dest("cart.default.svc.cluster.local", None, 100)]}),
    );
    case(
        "catch-alls last, in VirtualService order",
        "istio/istio pilot/pkg/networking/core/route/route.go SortVHostRoutes",
        y,
        shop("/"),
        json!({"virtual_service": "default/first", "route_index": 0}),
    );
    case(
        "nothing after a VirtualService's catch-all",
        "istio/istio pilot/pkg/networking/core/route/route.go BuildHTTPRoutesForVirtualService",
        y,
        shop("/never"),
        json!({"virtual_service": "default/first", "route_index": 0}),
    );
    case(
        "the exact host's virtual host beats the wildcard's",
        GATEWAY_GO,
        y,
        shop("/cart"),
        json!({"virtual_service": "default/second"}),
    );
    case(
        "the wildcard's for other names",
        GATEWAY_GO,
        y,
        at_gateway(
            gw,
            json!({"host": "blog.example.com", "port": 80, "path": "/cart"}),
        ),
        json!({"virtual_service": "default/wild", "destinations": [dest("wild.default.svc.cluster.local", None, 100)]}),
    );
}

#[test]
fn server_hosts_restrict_namespaces_and_names() {
    let y = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["foo/*.example.com", "./admin.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app, namespace: foo}
spec:
  hosts: ["*"]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {host: app}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app, namespace: bar}
spec:
  hosts: [api.example.com, admin.example.com]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {host: app}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: admin, namespace: istio-system}
spec:
  hosts: [admin.example.com]
  gateways: [gw]
  http:
  - route:
    - destination: {host: admin}
"#;
    let gw = "istio-system/gw";
    let at = |host: &str| at_gateway(gw, json!({"host": host, "port": 80, "path": "/"}));
    case(
        "ns/host: a VirtualService of that namespace binds",
        GW_REF,
        y,
        at("api.example.com"),
        json!({"action": "route", "virtual_service": "foo/app",
               "destinations": [dest("app.foo.svc.cluster.local", None, 100)]}),
    );
    case(
        "the wildcard server host limits a * VirtualService",
        "istio/istio pkg/config/host/names.go Intersection",
        y,
        at("example.org"),
        json!({"action": "no_route", "status": 404}),
    );
    case(
        "./host: the Gateway's namespace only (short gateway name qualified there)",
        GW_REF,
        y,
        at("admin.example.com"),
        json!({"virtual_service": "istio-system/admin"}),
    );
}

#[test]
fn match_gateways_and_mesh() {
    let y = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["reviews.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews, reviews.example.com]
  gateways: [mesh, gw]
  http:
  - match:
    - gateways: [gw]
      sourceLabels: {app: nobody}
      uri: {prefix: /}
    route:
    - destination: {host: reviews, subset: v3}
  - match:
    - gateways: [mesh]
    route:
    - destination: {host: reviews, subset: v1}
  - match:
    - sourceLabels: {istio: ingressgateway}
      sourceNamespace: istio-system
    route:
    - destination: {host: reviews, subset: v2}
"#;
    case(
        "at the gateway: the block naming it (sourceLabels not looked at)",
        SOURCE_MATCH_GO,
        y,
        at_gateway(
            "default/gw",
            json!({"host": "reviews.example.com", "port": 80}),
        ),
        json!({"virtual_service": "default/reviews", "route_index": 0,
               "destinations": [dest(REVIEWS, Some("v3"), 100)]}),
    );
    case(
        "from a sidecar: the mesh block",
        VS_REF,
        y,
        json!({"host": "reviews", "port": 9080}),
        json!({"virtual_service": "default/reviews", "route_index": 1}),
    );
    let y2 = y.replace(
        "    - gateways: [gw]\n      sourceLabels: {app: nobody}\n      uri: {prefix: /}\n",
        "    - gateways: [other]\n",
    );
    case(
        "a block for another gateway is dropped; labels and namespace of the gateway workload match",
        SOURCE_MATCH_GO,
        &y2,
        at_gateway(
            "default/gw",
            json!({"host": "reviews.example.com", "port": 80}),
        ),
        json!({"route_index": 2, "destinations": [dest(REVIEWS, Some("v2"), 100)]}),
    );
}

#[test]
fn binding_needs_the_gateway_name_and_visibility() {
    let y = |vs_ns: &str, gateways: &str, export: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: ['*']\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: app, namespace: {vs_ns}}}\nspec:\n  hosts: [app.example.com]\n  {gateways}\n  exportTo: {export}\n  http:\n  - route:\n    - destination: {{host: app}}\n"
        )
    };
    let req = at_gateway(
        "istio-system/gw",
        json!({"host": "app.example.com", "port": 80}),
    );
    case(
        "bound by ns/name",
        VS_FOR_GATEWAY,
        &y("foo", "gateways: [istio-system/gw]", "['*']"),
        req.clone(),
        json!({"action": "route", "virtual_service": "foo/app"}),
    );
    case(
        "a short name is the VirtualService's namespace",
        "istio/istio pilot/pkg/model/config.go resolveGatewayName",
        &y("foo", "gateways: [gw]", "['*']"),
        req.clone(),
        json!({"action": "no_route", "status": 404}),
    );
    case(
        "no gateways: mesh only",
        VS_REF,
        &y("foo", "gateways: []", "['*']"),
        req.clone(),
        json!({"action": "no_route", "status": 404}),
    );
    case(
        "exportTo . hides it from the gateway's namespace",
        VS_FOR_GATEWAY,
        &y("foo", "gateways: [istio-system/gw]", "['.']"),
        req.clone(),
        json!({"action": "no_route", "status": 404}),
    );
    case(
        "exportTo naming the gateway's namespace shows it",
        VS_FOR_GATEWAY,
        &y("foo", "gateways: [istio-system/gw]", "[istio-system]"),
        req,
        json!({"action": "route", "virtual_service": "foo/app"}),
    );
}

#[test]
fn destination_rules_are_looked_up_from_the_gateway_namespace() {
    let y = BOOKINFO_GATEWAY.to_string()
        + "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: pp-from-gateway, namespace: istio-system}\nspec:\n  host: productpage.default.svc.cluster.local\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: productpage, namespace: default}\nspec:\n  host: productpage\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n";
    case(
        "the gateway's namespace first",
        PUSH_GO,
        &y,
        at_gateway(
            "default/bookinfo-gateway",
            json!({"host": "x", "port": 8080, "path": "/productpage"}),
        ),
        json!({"destination_rule": "istio-system/pp-from-gateway", "traffic_policy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
    );
}

#[test]
fn tls_passthrough_by_sni() {
    let y = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: PASSTHROUGH}
    hosts: ["*.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx, namespace: default}
spec:
  hosts: [nginx.example.com]
  gateways: [mygateway]
  tls:
  - match:
    - port: 443
      sniHosts: [nginx.example.com]
    route:
    - destination: {host: my-nginx, port: {number: 443}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: others, namespace: default}
spec:
  hosts: ["*.example.com"]
  gateways: [mygateway]
  tls:
  - match:
    - port: 443
      sniHosts: ["*.example.com"]
    route:
    - destination: {host: catch-all, port: {number: 443}}
"#;
    let tls = |sni: &str| {
        at_gateway(
            "default/mygateway",
            json!({"protocol": "tcp", "host": sni, "sni": sni, "port": 443}),
        )
    };
    case(
        "nginx.example.com",
        SNI_PASSTHROUGH,
        y,
        tls("nginx.example.com"),
        json!({"action": "route", "virtual_service": "default/nginx", "route_index": 0,
               "destinations": [dest_port("my-nginx.default.svc.cluster.local", None, 443, 100)]}),
    );
    case(
        "the exact SNI beats the wildcard",
        GATEWAY_TLS_GO,
        y,
        tls("NGINX.example.com"),
        json!({"virtual_service": "default/nginx"}),
    );
    case(
        "the wildcard for others",
        GATEWAY_TLS_GO,
        y,
        tls("www.example.com"),
        json!({"virtual_service": "default/others"}),
    );
    case(
        "no rule for the SNI closes the connection",
        GATEWAY_TLS_GO,
        y,
        tls("nginx.example.org"),
        json!({"action": "no_route", "virtual_service": null}),
    );
}

#[test]
fn auto_passthrough_routes_to_the_cluster_the_sni_names() {
    let y = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: cross-network, namespace: istio-system}\nspec:\n  selector: {istio: eastwestgateway}\n  servers:\n  - port: {number: 15443, name: tls, protocol: TLS}\n    tls: {mode: AUTO_PASSTHROUGH}\n    hosts: ['*.local']\n";
    let sni = "outbound_.9080_.v1_.reviews.default.svc.cluster.local";
    case(
        "SNI-DNAT",
        GW_REF,
        y,
        json!({"ns": "istio-system", "gateways": ["istio-system/cross-network"], "protocol": "tcp", "host": "x", "sni": sni, "port": 15443}),
        json!({"action": "route", "destinations": [dest_port(REVIEWS, Some("v1"), 9080, 100)]}),
    );
}

#[test]
fn tcp_on_a_gateway() {
    let y = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: tcp-echo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 31400
      name: tcp
      protocol: TCP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - "*"
  gateways:
  - tcp-echo-gateway
  tcp:
  - match:
    - port: 31400
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
      weight: 80
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v2
      weight: 20
"#;
    let echo = "tcp-echo.default.svc.cluster.local";
    case(
        "80/20 on port 31400",
        TCP_SHIFTING,
        y,
        at_gateway(
            "default/tcp-echo-gateway",
            json!({"protocol": "tcp", "host": "192.0.2.10", "port": 31400}),
        ),
        json!({"action": "route", "virtual_service": "default/tcp-echo", "route_index": 0,
               "destinations": [dest_port(echo, Some("v1"), 9000, 80), dest_port(echo, Some("v2"), 9000, 20)]}),
    );
    case(
        "no server on another port",
        GATEWAY_GO,
        y,
        at_gateway(
            "default/tcp-echo-gateway",
            json!({"protocol": "tcp", "host": "192.0.2.10", "port": 31401}),
        ),
        json!({"action": "no_route"}),
    );
}

#[test]
fn tls_terminated_on_a_tls_server_follows_tcp_rules() {
    let y = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: db, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 5432, name: tls-db, protocol: TLS}\n    tls: {mode: SIMPLE, credentialName: db-cert}\n    hosts: [db.example.com]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db, namespace: data}\nspec:\n  hosts: [db.example.com]\n  gateways: [istio-system/db]\n  tcp:\n  - route:\n    - destination: {host: postgres, port: {number: 5432}}\n";
    let want = json!({"action": "route", "virtual_service": "data/db", "route_index": 0,
        "destinations": [dest_port("postgres.data.svc.cluster.local", None, 5432, 100)]});
    let req = |sni: Value| {
        at_gateway(
            "istio-system/db",
            json!({"protocol": "tcp", "host": "db.example.com", "sni": sni, "port": 5432}),
        )
    };
    case(
        "by the SNI's server",
        "istio/istio pilot/pkg/networking/core/gateway.go createGatewayTCPFilterChainOpts",
        y,
        req(json!("db.example.com")),
        want.clone(),
    );
    case(
        "decrypted, without the SNI",
        "istio/istio pilot/pkg/networking/core/gateway.go buildGatewayNetworkFiltersFromTCPRoutes",
        y,
        req(Value::Null),
        want,
    );
}

#[test]
fn each_https_server_has_its_own_virtual_hosts() {
    let y = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-a, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: a}
    hosts: [a.example.com]
  - port: {number: 443, name: https-wild, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: wild}
    hosts: ["*.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: everything, namespace: default}
spec:
  hosts: ["*.example.com"]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {host: wild}
"#;
    let at = |sni: &str, host: &str| {
        at_gateway(
            "istio-system/gw",
            json!({"host": host, "sni": sni, "scheme": "https", "port": 443}),
        )
    };
    case(
        "the server for the SNI: its virtual host a.example.com",
        "istio/istio pilot/pkg/model/gateway.go gatewayRDSRouteName",
        y,
        at("a.example.com", "a.example.com"),
        json!({"action": "route", "virtual_service": "default/everything"}),
    );
    case(
        "another Host on that connection is not that server's",
        "istio/istio pilot/pkg/model/gateway.go gatewayRDSRouteName",
        y,
        at("a.example.com", "b.example.com"),
        json!({"action": "no_route", "status": 404}),
    );
}

#[test]
fn sidecar_tls_routes_by_sni() {
    let y = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api, namespace: default}\nspec:\n  hosts: [api.example.com]\n  tls:\n  - match:\n    - port: 443\n      sniHosts: [api.example.com]\n    route:\n    - destination: {host: api-v2, port: {number: 443}}\n";
    case(
        "tls rule by SNI",
        TLS_GO,
        y,
        json!({"protocol": "tcp", "host": "api.example.com", "sni": "api.example.com", "port": 443}),
        json!({"action": "route", "virtual_service": "default/api", "route_index": 0,
               "destinations": [dest_port("api-v2.default.svc.cluster.local", None, 443, 100)]}),
    );
    case(
        "another SNI: no filter chain",
        TLS_GO,
        y,
        json!({"protocol": "tcp", "host": "api.example.com", "sni": "web.example.com", "port": 443}),
        json!({"action": "no_route", "virtual_service": "default/api"}),
    );
}

#[test]
fn gateway_servers_follow_the_selector_in_istio_order() {
    let y = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: b, namespace: istio-system, creationTimestamp: "2024-01-02T00:00:00Z"}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    name: secure
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem, minProtocolVersion: TLSV1_2}
    hosts: ["./b.example.com"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: a, namespace: apps, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: http}
    hosts: ["*/a.example.com"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: any, namespace: istio-system, creationTimestamp: "2024-01-03T00:00:00Z"}
spec:
  servers:
  - port: {number: 15021, name: tcp, protocol: MONGO}
    hosts: ["*"]
"#;
    let t = table(y);
    let labels = BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]);
    let servers = t.gateway_servers(&labels);
    let names: Vec<&str> = servers.iter().map(|s| s.gateway.as_str()).collect();
    // MODEL_GW: sorted by creation time, then name, then namespace; no selector: all.
    assert_eq!(
        names,
        ["apps/a", "istio-system/b", "istio-system/any"],
        "istio/istio pilot/pkg/model/push_context.go mergeGateways"
    );
    assert_eq!(servers[0].protocol, super::ServerProtocol::Http);
    assert!(servers[0].serves_host("a.example.com") && !servers[0].serves_host("b.example.com"));
    let b = &servers[1];
    assert_eq!(b.name.as_deref(), Some("secure"));
    assert_eq!((b.port, b.port_name.as_str(), b.index), (443, "https", 0));
    assert_eq!(b.hosts, ["istio-system/b.example.com"]);
    let tls = b.tls.as_ref().unwrap();
    assert_eq!(tls.mode, super::TlsMode::Simple);
    assert_eq!(tls.server_certificate.as_deref(), Some("/c.pem"));
    assert_eq!(tls.min_protocol_version.as_deref(), Some("TLSV1_2"));
    assert!(b.is_http() && !b.is_passthrough());
    assert_eq!(servers[2].protocol, super::ServerProtocol::Tcp);
    assert!(servers[2].serves_host("anything.example.org"));
    let egress = t.gateway_servers(&BTreeMap::from([(
        "istio".to_string(),
        "egressgateway".to_string(),
    )]));
    assert_eq!(egress.len(), 2, "{egress:?}");
}

#[test]
fn bad_gateways_are_refused_by_field() {
    let bad = |servers: &str, field: &str, message: &str| {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers: {servers}\n"
        );
        let set = crate::loader::load_str(Path::new("bad.yaml"), &yaml).unwrap();
        let text = RouteTable::build(&set, TableOptions::default())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains("Gateway default/g") && text.contains(field) && text.contains(message),
            "{yaml}\n{text}"
        );
    };
    bad(
        "[{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.com], tls: {mode: SOMETIMES}}]",
        "spec.servers[0].tls.mode",
        "unknown variant `SOMETIMES`",
    );
    bad(
        "[{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.com]}, {port: {number: 81, name: x, protocol: QUIC}, hosts: [a.com]}]",
        "spec.servers[1].port.protocol",
        "not a gateway protocol",
    );
    bad(
        "[{port: {number: 70000, name: http, protocol: HTTP}, hosts: [a.com]}]",
        "spec.servers[0].port.number",
        "1..65535",
    );
    bad(
        "[{hosts: [a.com]}]",
        "spec.servers[0]",
        "missing field `port`",
    );
}
