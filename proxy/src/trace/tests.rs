//! Unit tests of the trace context: the W3C and B3 tables, injection, sampling.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn ids(trace: &str, span: &str) -> SpanIds {
    let t = hex_any::<16>(&format!("{trace:0>32}")).unwrap();
    SpanIds {
        trace_id: t,
        span_id: hex_any::<8>(span).unwrap(),
    }
}

fn tp(v: &str) -> Option<(SpanIds, bool)> {
    extract(&headers(&[("traceparent", v)])).map(|c| (c.parent.unwrap(), c.sampled.unwrap()))
}

#[test]
fn traceparent_valid_per_w3c() {
    // The spec's examples (§3.2.2.x).
    let v = format!("00-{TRACE}-{SPAN}-01");
    assert_eq!(tp(&v), Some((ids(TRACE, SPAN), true)));
    let v = format!("00-{TRACE}-{SPAN}-00");
    assert_eq!(tp(&v), Some((ids(TRACE, SPAN), false)));
    // Unknown flags are ignored; only the sampled bit counts.
    let v = format!("00-{TRACE}-{SPAN}-09");
    assert_eq!(tp(&v), Some((ids(TRACE, SPAN), true)));
    // Optional whitespace around the value.
    let v = format!(" 00-{TRACE}-{SPAN}-01\t");
    assert_eq!(tp(&v), Some((ids(TRACE, SPAN), true)));
    // A later version: parsed by the version-00 layout, more fields after a dash.
    let v = format!("cc-{TRACE}-{SPAN}-01");
    assert_eq!(tp(&v), Some((ids(TRACE, SPAN), true)));
    let v = format!("cc-{TRACE}-{SPAN}-01-what-the-future-will-be-like");
    assert_eq!(tp(&v), Some((ids(TRACE, SPAN), true)));
}

#[test]
fn traceparent_invalid_per_w3c() {
    for v in [
        // Version ff is forbidden; version 00 must be exactly 55 characters.
        format!("ff-{TRACE}-{SPAN}-01"),
        format!("00-{TRACE}-{SPAN}-01-"),
        format!("00-{TRACE}-{SPAN}-01-extra"),
        format!("cc-{TRACE}-{SPAN}-01.extra"),
        // All-zero ids.
        format!("00-00000000000000000000000000000000-{SPAN}-01"),
        format!("00-{TRACE}-0000000000000000-01"),
        // Wrong lengths.
        format!("00-{}-{SPAN}-01", &TRACE[1..]),
        format!("00-{TRACE}0-{SPAN}-01"),
        format!("00-{TRACE}-{}-01", &SPAN[1..]),
        format!("00-{TRACE}-{SPAN}-1"),
        format!("0-{TRACE}-{SPAN}-01"),
        // Bad hex, uppercase, wrong separators.
        format!("00-{}g-{SPAN}-01", &TRACE[1..]),
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        format!("0X-{TRACE}-{SPAN}-01"),
        format!("00-{TRACE}-{SPAN}-0g"),
        format!("00_{TRACE}_{SPAN}_01"),
        format!("00-{TRACE}-{SPAN}.01"),
        String::new(),
        "00".into(),
        // Over the length cap.
        format!("cc-{TRACE}-{SPAN}-01-{}", "a".repeat(300)),
    ] {
        assert_eq!(tp(&v), None, "{v:?}");
    }
    // Two traceparent headers: ambiguous, no context.
    let v = format!("00-{TRACE}-{SPAN}-01");
    assert_eq!(
        extract(&headers(&[("traceparent", &v), ("traceparent", &v)])),
        None
    );
    // Non-ASCII bytes.
    let mut h = HeaderMap::new();
    h.insert(TRACEPARENT, HeaderValue::from_bytes(&[0xc3; 60]).unwrap());
    assert_eq!(extract(&h), None);
}

#[test]
fn tracestate_follows_a_valid_traceparent_only() {
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let c = extract(&headers(&[
        ("traceparent", &tp),
        ("tracestate", "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"),
        ("tracestate", "x=1"),
    ]))
    .unwrap();
    assert_eq!(
        c.tracestate.as_deref(),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,x=1")
    );
    let c = extract(&headers(&[
        ("traceparent", "00-bad"),
        ("tracestate", "rojo=1"),
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
    ]))
    .unwrap();
    assert_eq!(c.tracestate, None);
    // Over 512 bytes: long members go first, then from the end.
    let long = format!("big={}", "x".repeat(200));
    let mut members = vec![long.clone()];
    members.extend((0..30).map(|i| format!("k{i:02}={}", "v".repeat(20))));
    let c = extract(&headers(&[
        ("traceparent", &tp),
        ("tracestate", &members.join(",")),
    ]))
    .unwrap();
    let kept = c.tracestate.unwrap();
    assert!(kept.len() <= 512 && !kept.contains("big="), "{kept}");
    assert!(kept.starts_with("k00=") && kept.contains("k19="), "{kept}");
    // More than 32 members: dropped whole.
    let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let c = extract(&headers(&[
        ("traceparent", &tp),
        ("tracestate", &many.join(",")),
    ]));
    assert_eq!(c.unwrap().tracestate, None);
}

#[test]
fn w3c_is_preferred_and_the_b3_form_is_kept() {
    let tp = format!("00-{TRACE}-{SPAN}-00");
    let c = extract(&headers(&[
        ("traceparent", &tp),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ]))
    .unwrap();
    assert_eq!(c.parent, Some(ids(TRACE, SPAN)));
    assert_eq!(c.sampled, Some(false));
    assert_eq!(c.b3, B3Form::Single);
    let c = extract(&headers(&[("traceparent", &tp), ("x-b3-sampled", "1")])).unwrap();
    assert_eq!(c.b3, B3Form::Multi);
    // A bad traceparent falls back to B3.
    let c = extract(&headers(&[
        ("traceparent", "00-zz"),
        ("b3", &format!("{TRACE}-{SPAN}-1")),
    ]))
    .unwrap();
    assert_eq!(c.parent, Some(ids(TRACE, SPAN)));
}

#[test]
fn b3_single_variants() {
    let b3 = |v: &str| extract(&headers(&[("b3", v)])).map(|c| (c.parent, c.sampled));
    let t = "80f198ee56343ba864fe8b2a57d3eff7";
    let s = "e457b5a2e4d86bd1";
    let p = "05e3ac9a4f6e3b90";
    let id = Some(ids(t, s));
    assert_eq!(b3(&format!("{t}-{s}-1-{p}")), Some((id, Some(true))));
    assert_eq!(b3(&format!("{t}-{s}-0-{p}")), Some((id, Some(false))));
    assert_eq!(b3(&format!("{t}-{s}-d")), Some((id, Some(true))));
    assert_eq!(b3(&format!("{t}-{s}")), Some((id, None)));
    // 64-bit trace ids are left-padded.
    assert_eq!(
        b3(&format!("a3ce929d0e0e4736-{s}-1")),
        Some((Some(ids("a3ce929d0e0e4736", s)), Some(true)))
    );
    // Uppercase hex is read (as Envoy reads it).
    assert_eq!(
        b3(&format!("{}-{s}-1", t.to_uppercase())),
        Some((id, Some(true)))
    );
    // The bare decisions.
    assert_eq!(b3("0"), Some((None, Some(false))));
    assert_eq!(b3("1"), Some((None, Some(true))));
    assert_eq!(b3("d"), Some((None, Some(true))));
    for bad in [
        String::new(),
        "2".into(),
        "x".into(),
        t.to_owned(),
        format!("{t}-"),
        format!("{t}-{s}-"),
        format!("{t}-{s}-2"),
        format!("{t}-{s}-1-"),
        format!("{t}-{s}-1-{p}-x"),
        format!("{t}-{s}-{p}"),
        format!("{t}-{s}-1-0000000000000000"),
        format!("{t}-0000000000000000-1"),
        format!("00000000000000000000000000000000-{s}-1"),
        format!("{}-{s}-1", &t[1..]),
        format!("{t}0-{s}-1"),
        format!("{t}-{s}0-1"),
        format!("{t}-{}g-1", &s[1..]),
        format!("{t}-{s}-1-{p}{}", "0".repeat(10)),
    ] {
        assert_eq!(b3(&bad), None, "{bad:?}");
    }
}

#[test]
fn b3_multi_variants() {
    let m = |pairs: &[(&str, &str)]| extract(&headers(pairs)).map(|c| (c.parent, c.sampled, c.b3));
    let t = "463ac35c9f6413ad48485a3953bb6124";
    let s = "a2fb4a1d1a96d312";
    let id = Some(ids(t, s));
    let multi = B3Form::Multi;
    assert_eq!(
        m(&[
            ("x-b3-traceid", t),
            ("x-b3-spanid", s),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "1")
        ]),
        Some((id, Some(true), multi))
    );
    assert_eq!(
        m(&[
            ("x-b3-traceid", t),
            ("x-b3-spanid", s),
            ("x-b3-sampled", "0")
        ]),
        Some((id, Some(false), multi))
    );
    assert_eq!(
        m(&[("x-b3-traceid", t), ("x-b3-spanid", s)]),
        Some((id, None, multi))
    );
    // Debug is sampled, whatever x-b3-sampled says.
    assert_eq!(
        m(&[("x-b3-traceid", t), ("x-b3-spanid", s), ("x-b3-flags", "1")]),
        Some((id, Some(true), multi))
    );
    assert_eq!(
        m(&[
            ("x-b3-traceid", "48485a3953bb6124"),
            ("x-b3-spanid", s),
            ("x-b3-sampled", "true")
        ]),
        Some((Some(ids("48485a3953bb6124", s)), Some(true), multi))
    );
    // A decision alone.
    assert_eq!(
        m(&[("x-b3-sampled", "0")]),
        Some((None, Some(false), multi))
    );
    for bad in [
        vec![("x-b3-traceid", t)],
        vec![("x-b3-spanid", s)],
        vec![("x-b3-traceid", t), ("x-b3-spanid", "a2fb4a1d1a96d31")],
        vec![("x-b3-traceid", &t[2..]), ("x-b3-spanid", s)],
        vec![
            ("x-b3-traceid", t),
            ("x-b3-spanid", s),
            ("x-b3-sampled", "2"),
        ],
        vec![("x-b3-traceid", t), ("x-b3-spanid", s), ("x-b3-flags", "2")],
        vec![
            ("x-b3-traceid", t),
            ("x-b3-spanid", s),
            ("x-b3-parentspanid", "x"),
        ],
        vec![("x-b3-traceid", t), ("x-b3-traceid", t), ("x-b3-spanid", s)],
        vec![("x-b3-flags", "0")],
    ] {
        assert_eq!(m(&bad), None, "{bad:?}");
    }
}

#[test]
fn no_trace_headers_is_no_context() {
    assert_eq!(extract(&headers(&[("x-request-id", "abc")])), None);
}

#[test]
fn sampling_honours_the_caller_and_the_percentage() {
    let never = Sampler::new(0.0);
    let always = Sampler::new(100.0);
    assert!(never.decide(Some(true)));
    assert!(!always.decide(Some(false)));
    assert!((0..1000).all(|_| always.decide(None)));
    assert!((0..1000).all(|_| !never.decide(None)));
    assert_eq!(Sampler::new(250.0).percent(), 100.0);
    assert_eq!(Sampler::new(-1.0).percent(), 0.0);
    assert_eq!(Sampler::new(f64::NAN).percent(), 0.0);
    let ten = Sampler::new(10.0);
    let hits = (0..100_000).filter(|_| ten.decide(None)).count();
    assert!((9_000..11_000).contains(&hits), "{hits}");
}

#[test]
fn ids_are_distinct_and_nonzero() {
    let mut seen = HashSet::new();
    for _ in 0..100_000 {
        assert!(seen.insert(new_span_id()));
    }
    let other = std::thread::spawn(|| (0..100_000).map(|_| new_span_id()).collect::<Vec<_>>())
        .join()
        .unwrap();
    assert!(other.into_iter().all(|id| seen.insert(id)));
    assert!(!seen.contains(&[0; 8]));
    assert_ne!(new_trace_id(), new_trace_id());
}

fn round_trip(incoming: &HeaderMap) -> (Span, HeaderMap, TraceContext) {
    let ctx = extract(incoming);
    let span = Span::start(
        SpanKind::Server,
        "svc:80/*",
        ctx.as_ref(),
        &Sampler::new(0.0),
    );
    let mut out = incoming.clone();
    span.inject(&mut out);
    let next = extract(&out).unwrap();
    (span, out, next)
}

#[test]
fn inject_continues_w3c_alone() {
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let (span, out, next) = round_trip(&headers(&[
        ("traceparent", &tp),
        ("tracestate", "rojo=1,congo=2"),
        ("x-request-id", "r1"),
    ]));
    assert_eq!(span.trace_id, ids(TRACE, SPAN).trace_id);
    assert_eq!(span.parent_span_id, Some(ids(TRACE, SPAN).span_id));
    assert!(span.sampled);
    assert_ne!(span.span_id, ids(TRACE, SPAN).span_id);
    assert_eq!(
        out["traceparent"],
        format!("00-{TRACE}-{}-01", hex(&span.span_id)).as_str()
    );
    assert_eq!(out["tracestate"], "rojo=1,congo=2");
    // W3C came in: W3C goes on, as Envoy's OpenTelemetry tracer propagates it.
    assert!(!out.contains_key("x-b3-traceid") && !out.contains_key("b3"));
    assert_eq!(out["x-request-id"], "r1");
    assert_eq!(
        next.parent,
        Some(SpanIds {
            trace_id: span.trace_id,
            span_id: span.span_id
        })
    );
    assert_eq!(next.sampled, Some(true));
}

#[test]
fn inject_keeps_the_b3_single_form() {
    let t = "a3ce929d0e0e4736";
    let (span, out, next) = round_trip(&headers(&[("b3", &format!("{t}-{SPAN}-1"))]));
    let b3 = out["b3"].to_str().unwrap();
    // A 64-bit trace id stays 64-bit; our parent is the caller's span.
    assert_eq!(b3, format!("{t}-{}-1-{SPAN}", hex(&span.span_id)));
    assert!(!out.contains_key("x-b3-traceid"));
    assert_eq!(
        out["traceparent"],
        format!("00-{t:0>32}-{}-01", hex(&span.span_id)).as_str()
    );
    assert_eq!(next.b3, B3Form::Single);
    assert_eq!(next.parent.unwrap().span_id, span.span_id);
}

#[test]
fn inject_keeps_the_b3_multi_form_and_drops_stale_headers() {
    let (span, out, next) = round_trip(&headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-parentspanid", "0020000000000001"),
        ("x-b3-flags", "1"),
        ("tracestate", "stale=1"),
    ]));
    assert!(span.sampled);
    assert_eq!(out["x-b3-traceid"], TRACE);
    assert_eq!(out["x-b3-parentspanid"], SPAN);
    assert_eq!(out["x-b3-sampled"], "1");
    assert!(!out.contains_key("x-b3-flags"));
    // A tracestate without a traceparent is not ours to pass on.
    assert!(!out.contains_key("tracestate"));
    assert_eq!(out.get_all("x-b3-spanid").iter().count(), 1);
    assert_eq!(next.b3, B3Form::Multi);
}

#[test]
fn a_new_trace_writes_w3c() {
    let (span, out, next) = round_trip(&headers(&[("b3", "garbage")]));
    // Not sampled at 0% and no parent; the malformed b3 header is removed and a
    // new trace gets W3C.
    assert!(!span.sampled);
    assert_eq!(span.parent_span_id, None);
    assert!(out["traceparent"].to_str().unwrap().ends_with("-00"));
    assert!(!out.contains_key("b3") && !out.contains_key("x-b3-sampled"));
    assert_eq!(next.sampled, Some(false));
    assert_eq!(next.b3, B3Form::None);

    let span = Span::start(SpanKind::Client, "a:80/*", None, &Sampler::new(100.0));
    let mut out = HeaderMap::new();
    span.inject(&mut out);
    assert!(span.sampled);
    assert!(out["traceparent"].to_str().unwrap().ends_with("-01"));
    assert!(!out.contains_key("x-b3-traceid"));
    assert!(!out.contains_key("b3"));
}

#[test]
fn a_bare_deny_starts_an_unsampled_trace() {
    let (span, out, _) = round_trip(&headers(&[("b3", "0")]));
    assert!(!span.sampled);
    assert_eq!(span.parent_span_id, None);
    let b3 = out["b3"].to_str().unwrap().to_owned();
    assert!(b3.ends_with("-0") && b3.split('-').count() == 3, "{b3}");
    // Even at 100%, the caller's deny is honoured.
    let ctx = extract(&headers(&[("b3", "0")]));
    let span = Span::start(SpanKind::Server, "a", ctx.as_ref(), &Sampler::new(100.0));
    assert!(!span.sampled);
}

#[test]
fn child_spans_share_the_trace() {
    let server = Span::start(SpanKind::Server, "in", None, &Sampler::new(100.0));
    let client = server.child(SpanKind::Client, "out");
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.parent_span_id, Some(server.span_id));
    assert_ne!(client.span_id, server.span_id);
    assert!(client.sampled);
}

#[test]
fn istio_tags() {
    let mut span = Span::start(
        SpanKind::Server,
        operation_name("reviews.bookinfo.svc.cluster.local", 9080),
        None,
        &Sampler::new(100.0),
    );
    span.set_istio(&IstioAttributes {
        canonical_service: "reviews",
        canonical_revision: "v2",
        mesh_id: "cluster.local",
        namespace: "bookinfo",
        node_id: "sidecar~10.0.0.7~reviews-v2-1.bookinfo~bookinfo.svc.cluster.local",
        request_id: Some("r-1"),
        url: "http://reviews:9080/reviews/0",
        method: "GET",
        protocol: "HTTP/1.1",
        status_code: Some(503),
        peer_address: "10.0.0.3:41234",
        request_size: 0,
        response_size: 19,
        upstream_cluster: Some("inbound|9080||"),
        source_principal: Some("spiffe://cluster.local/ns/bookinfo/sa/productpage"),
        ..Default::default()
    });
    assert_eq!(span.name, "reviews.bookinfo.svc.cluster.local:9080/*");
    let s = |k| span.get(k).cloned();
    assert_eq!(s("http.status_code"), Some("503".into()));
    assert_eq!(s("error"), Some("true".into()));
    assert!(span.status_error);
    assert_eq!(s("component"), Some("proxy".into()));
    assert_eq!(s("response_flags"), Some("-".into()));
    assert_eq!(s("user_agent"), Some("-".into()));
    assert_eq!(s("guid:x-request-id"), Some("r-1".into()));
    assert_eq!(s("upstream_cluster.name"), Some("inbound|9080||".into()));
    assert_eq!(s("warden.destination_principal"), None);
    assert_eq!(
        s("warden.source_principal"),
        Some("spiffe://cluster.local/ns/bookinfo/sa/productpage".into())
    );
    assert_eq!(service_name("reviews", "bookinfo"), "reviews.bookinfo");

    let mut ok = span.child(SpanKind::Client, "x");
    ok.set_istio(&IstioAttributes {
        status_code: Some(200),
        ..Default::default()
    });
    assert!(!ok.status_error && ok.get("error").is_none());
}
