//! The route table's case table, written from Istio's reference and task pages (each
//! case names its source) and from istiod's route builders where the pages are silent
//! (`pilot/pkg/networking/core/route/route.go`, `httproute.go`). A case is the config,
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
