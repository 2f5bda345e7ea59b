//! Local replies and the filter's tags, in a real Envoy running the built
//! .wasm with `envoy/sidecar.yaml`: what docs/filter-and-envoy.md says about
//! them. A reply Envoy's router sends itself (the version's cluster cannot be
//! reached) passes through the filter and is tagged with the version it was
//! routed to; a reply Envoy sends before any HTTP filter runs is not tagged.

use canary_tests::{client, filter_config, get, Rig, CHALLENGER, CHAMPION};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_replies_are_tagged_and_replies_before_the_filter_are_not() {
    let mut rig = Rig::start().await.unwrap();
    let c = client();
    let url = rig.envoy.url("/predict");
    rig.envoy.push(&filter_config("local", 1, 10_000)).await.unwrap();
    let reply = get(&c, &url, &[("x-user-id", "someone")]).await.unwrap();
    assert_eq!((reply.status, reply.version.as_deref()), (200, Some(CHALLENGER)));

    // The challenger's server is gone: Envoy's router answers 503 itself; the
    // reply passes through the filter, which tags it (and a forged version
    // header changed nothing).
    rig.challenger.proc.stop();
    let reply = get(&c, &url, &[("x-user-id", "someone"), ("x-model-version", CHAMPION)]).await.unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.served_by.is_none(), "{reply:?}");
    assert_eq!((reply.version.as_deref(), reply.stage.as_deref()), (Some(CHALLENGER), Some("w10000")), "{reply:?}");
    assert!(!reply.unkeyed);
    // Unkeyed requests still reach the champion, marked.
    let reply = get(&c, &url, &[("x-canary-unkeyed", "forged")]).await.unwrap();
    assert_eq!((reply.status, reply.version.as_deref(), reply.unkeyed), (200, Some(CHAMPION), true), "{reply:?}");
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["seen"]["x-canary-unkeyed"], "1");

    // A reply Envoy sends before any HTTP filter runs (request headers over
    // the limit: 431) has no tags: no version was chosen.
    let big = "a".repeat(70 * 1024);
    let reply = get(&c, &url, &[("x-user-id", "someone"), ("x-big", &big)]).await.unwrap();
    assert_eq!(reply.status, 431, "{reply:?}");
    assert_eq!((reply.version, reply.stage, reply.unkeyed), (None, None, false));
}
