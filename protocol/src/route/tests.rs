//! Every rule of CONTRACT §3 and §4 as a table of cases, from a request body (and header) to the
//! hop at each stage, plus properties over random pins.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::{ClusterShape, Routing};

/// The target a validated body gives, with the dispatcher's choice for open stages.
fn target(body: Value, header: Option<Value>, shape: &ClusterShape, dispatch: Pins) -> Target {
    let routing = Routing::from_body(body.as_object().unwrap(), header.as_ref()).unwrap();
    let pins = routing.pins(shape).unwrap();
    Target { pins, dispatch, explicit_prefill: routing.disagg_prefill_dp_rank }
}

fn prefill(key: &str) -> Route {
    Route::Prefill(key.into())
}

fn kv(key: &str) -> Route {
    Route::Kv(key.into())
}

struct Case {
    what: &'static str,
    body: Value,
    header: Option<Value>,
    shape: ClusterShape,
    dispatch: Pins,
    /// Hops at: publish; on prefill rank 0 and 1; its handle from prefill rank 1; that handle on
    /// decode rank 0 and 2.
    publish: Route,
    on_prefill: [Route; 2],
    handle_from_1: Route,
    on_decode: [Route; 2],
}

fn none() -> Pins {
    Pins::default()
}

fn cases() -> Vec<Case> {
    let disagg = ClusterShape::disagg(2, 3);
    let colocated = ClusterShape::colocated(3);
    vec![
        Case {
            what: "unpinned, shared queue: any rank runs either stage",
            body: json!({}),
            header: None,
            shape: disagg,
            dispatch: none(),
            publish: prefill("any"),
            on_prefill: [Route::Here, Route::Here],
            handle_from_1: kv("1"),
            on_decode: [Route::Here, Route::Here],
        },
        Case {
            what: "routed_dp_rank pins decode and, alone, prefill too (one body to both stages)",
            body: json!({"routed_dp_rank": 1}),
            header: None,
            shape: disagg,
            dispatch: none(),
            publish: prefill("1"),
            on_prefill: [prefill("1"), Route::Here],
            handle_from_1: kv("1.1"),
            on_decode: [kv("1.1"), kv("1.1")],
        },
        Case {
            what: "both fields: prefill on p, decode on d (an external PD router)",
            body: json!({"routed_dp_rank": 2, "disagg_prefill_dp_rank": 1}),
            header: None,
            shape: disagg,
            dispatch: none(),
            publish: prefill("1"),
            on_prefill: [prefill("1"), Route::Here],
            handle_from_1: kv("1.2"),
            on_decode: [kv("1.2"), Route::Here],
        },
        Case {
            what: "disagg_prefill_dp_rank alone pins prefill; decode stays open",
            body: json!({"disagg_prefill_dp_rank": 1}),
            header: None,
            shape: disagg,
            dispatch: none(),
            publish: prefill("1"),
            on_prefill: [prefill("1"), Route::Here],
            handle_from_1: kv("1"),
            on_decode: [Route::Here, Route::Here],
        },
        Case {
            what: "the deprecated alias acts as routed_dp_rank",
            body: json!({"data_parallel_rank": 0}),
            header: None,
            shape: disagg,
            dispatch: none(),
            publish: prefill("0"),
            on_prefill: [Route::Here, prefill("0")],
            handle_from_1: kv("1.0"),
            on_decode: [Route::Here, kv("1.0")],
        },
        Case {
            what: "the new field beats the alias",
            body: json!({"data_parallel_rank": 0, "routed_dp_rank": 1}),
            header: None,
            shape: disagg,
            dispatch: none(),
            publish: prefill("1"),
            on_prefill: [prefill("1"), Route::Here],
            handle_from_1: kv("1.1"),
            on_decode: [kv("1.1"), kv("1.1")],
        },
        Case {
            what: "the header beats both body fields",
            // Prefill is pinned too: the header's 2 alone would also pin prefill rank 2, which
            // this cluster lacks (`the_header_range_is_checked_for_both_stages`).
            body: json!({"data_parallel_rank": 0, "routed_dp_rank": 1, "disagg_prefill_dp_rank": 1}),
            header: Some(json!("2")),
            shape: disagg,
            dispatch: none(),
            publish: prefill("1"),
            on_prefill: [prefill("1"), Route::Here],
            handle_from_1: kv("1.2"),
            on_decode: [kv("1.2"), Route::Here],
        },
        Case {
            what: "the dispatcher fills open stages",
            body: json!({}),
            header: None,
            shape: disagg,
            dispatch: Pins { prefill: Some(0), decode: Some(2) },
            publish: prefill("0"),
            on_prefill: [Route::Here, prefill("0")],
            handle_from_1: kv("1.2"),
            on_decode: [kv("1.2"), Route::Here],
        },
        Case {
            what: "pins beat the dispatcher",
            body: json!({"routed_dp_rank": 1}),
            header: None,
            shape: disagg,
            dispatch: Pins { prefill: Some(0), decode: Some(2) },
            publish: prefill("1"),
            on_prefill: [prefill("1"), Route::Here],
            handle_from_1: kv("1.1"),
            on_decode: [kv("1.1"), kv("1.1")],
        },
        Case {
            what: "colocated: one rank runs both stages",
            body: json!({"routed_dp_rank": 1}),
            header: None,
            shape: colocated,
            dispatch: Pins { prefill: Some(2), decode: Some(2) },
            publish: prefill("1"),
            on_prefill: [prefill("1"), Route::Here],
            handle_from_1: kv("1.1"),
            on_decode: [kv("1.1"), kv("1.1")],
        },
        Case {
            what: "colocated: disagg_prefill_dp_rank names the one rank too",
            body: json!({"disagg_prefill_dp_rank": 1}),
            header: None,
            shape: colocated,
            dispatch: none(),
            publish: prefill("1"),
            on_prefill: [prefill("1"), Route::Here],
            handle_from_1: kv("1.1"),
            on_decode: [kv("1.1"), kv("1.1")],
        },
    ]
}

#[test]
fn every_stage_of_every_case() {
    for c in cases() {
        let t = target(c.body.clone(), c.header.clone(), &c.shape, c.dispatch);
        let what = c.what;
        assert_eq!(route(At::Publish, &t), c.publish, "{what}: publish");
        for (rank, want) in c.on_prefill.iter().enumerate() {
            let got = route(At::Prefill { rank: rank as u32 }, &t);
            assert_eq!(&got, want, "{what}: on prefill rank {rank}");
        }
        assert_eq!(route(At::Prefilled { prefill: 1 }, &t), c.handle_from_1, "{what}: handle");
        for (i, rank) in [0u32, 2].into_iter().enumerate() {
            let got = route(At::Decode { rank, prefill: 1 }, &t);
            assert_eq!(got, c.on_decode[i], "{what}: on decode rank {rank}");
        }
    }
}

#[test]
fn the_header_range_is_checked_for_both_stages() {
    let shape = ClusterShape::disagg(2, 3);
    let routing = Routing::from_body(json!({}).as_object().unwrap(), Some(&json!("2"))).unwrap();
    let e = routing.pins(&shape).unwrap_err();
    assert_eq!(e.to_string(), "routed_dp_rank=2 out of range [0, 2)");
}

#[test]
fn a_handle_that_disagrees_with_an_explicit_prefill_rank_is_refused() {
    let shape = ClusterShape::disagg(2, 3);
    let t = target(json!({"disagg_prefill_dp_rank": 0}), None, &shape, none());
    let Route::Refuse(e) = route(At::Decode { rank: 0, prefill: 1 }, &t) else { panic!("refused") };
    assert_eq!(e.code, "prefill_rank_mismatch");
    assert_eq!(e.message, "KV handle names prefill rank 1 but the request pins disagg_prefill_dp_rank=0");
    // routed_dp_rank alone also pins prefill, but only the explicit field is checked against
    // the handle (CONTRACT §3: "an explicit disagg_prefill_dp_rank").
    let t = target(json!({"routed_dp_rank": 0}), None, &shape, none());
    assert_eq!(route(At::Decode { rank: 0, prefill: 1 }, &t), Route::Here);
}

#[test]
fn a_key_that_names_no_prefill_queue_is_refused_with_the_contracts_message() {
    let t = Target::default();
    for key in ["7", "2", "-1", "all", ""] {
        let Route::Refuse(e) = route(At::Arrived { key, prefill_dp: 2 }, &t) else { panic!("{key:?} refused") };
        assert_eq!(
            e.message,
            format!("`routing key` '{key}' names no prefill queue: use 'any' or a prefill rank in [0, 2)")
        );
    }
    for key in ["any", "0", "1"] {
        assert_eq!(route(At::Arrived { key, prefill_dp: 2 }, &t), Route::Here, "{key}");
    }
}

fn shapes() -> impl Strategy<Value = ClusterShape> {
    prop_oneof![
        (1u32..5, 1u32..5).prop_map(|(p, d)| ClusterShape::disagg(p, d)),
        (1u32..5).prop_map(ClusterShape::colocated),
    ]
}

proptest! {
    /// Following the hops from publish to decode always ends on the pinned ranks, and a message
    /// is forwarded at most once per stage.
    #[test]
    fn hops_end_on_the_pinned_ranks(
        shape in shapes(),
        routed in proptest::option::of(0u32..5),
        explicit in proptest::option::of(0u32..5),
        dispatch_p in proptest::option::of(0u32..5),
        dispatch_d in proptest::option::of(0u32..5),
        first_prefill in 0u32..5,
        first_decode in 0u32..5,
    ) {
        let mut body = serde_json::Map::new();
        if let Some(r) = routed { body.insert("routed_dp_rank".into(), json!(r)); }
        if let Some(p) = explicit { body.insert("disagg_prefill_dp_rank".into(), json!(p)); }
        let routing = Routing::from_body(&body, None).unwrap();
        let Ok(pins) = routing.pins(&shape) else { return Ok(()) };
        let dispatch = Pins {
            prefill: dispatch_p.filter(|&p| p < shape.prefill_dp),
            decode: dispatch_d.filter(|&d| d < shape.decode_dp),
        };
        let t = Target { pins, dispatch, explicit_prefill: routing.disagg_prefill_dp_rank };
        // Prefill: from the published key, or from whichever rank took it off the shared queue.
        let mut rank = match route(At::Publish, &t) {
            Route::Prefill(k) if k == "any" => first_prefill % shape.prefill_dp,
            Route::Prefill(k) => k.parse().unwrap(),
            other => panic!("publish gave {other:?}"),
        };
        if let Route::Prefill(k) = route(At::Prefill { rank }, &t) {
            rank = k.parse().unwrap();
        }
        prop_assert_eq!(route(At::Prefill { rank }, &t), Route::Here);
        if let Some(p) = pins.prefill { prop_assert_eq!(rank, p); }
        let prefill = rank;
        // Decode: from the handle's key, or any decoder when it names none.
        let mut rank = match route(At::Prefilled { prefill }, &t) {
            Route::Kv(k) => match k.split_once('.') {
                Some((_, d)) => d.parse().unwrap(),
                None => first_decode % shape.decode_dp,
            },
            other => panic!("handle gave {other:?}"),
        };
        if let Route::Kv(k) = route(At::Decode { rank, prefill }, &t) {
            rank = k.split_once('.').unwrap().1.parse().unwrap();
        }
        prop_assert_eq!(route(At::Decode { rank, prefill }, &t), Route::Here);
        if let Some(d) = pins.decode { prop_assert_eq!(rank, d); }
        if shape.mode == crate::Mode::Colocated && pins.prefill.is_some() {
            prop_assert_eq!(pins.prefill, pins.decode);
        }
    }
}
