//! `strip: envoy`, in a real Envoy running the built .wasm with
//! `envoy/sidecar.yaml`: the connection manager's early header mutation
//! removes client-sent owned headers before any filter runs, so the filter
//! skips its own removal of the unkeyed header on keyed requests. Responses
//! carry the same tags as with `strip: filter`, a client still cannot pick or
//! forge any owned header, and local replies are tagged as documented.

use canary_core::config::Strip;
use canary_core::split::{arm_for, Salt};
use canary_core::{Arm, Weight};
use canary_tests::{client, filter_config, get, users, Reply, Rig, CHALLENGER, CHAMPION};

fn expected_version(rollout: &str, weight_bp: u64, user: &str) -> &'static str {
    match arm_for(Salt::new(rollout).bucket(user.as_bytes()), Weight::from_bp(weight_bp).unwrap()) {
        Arm::Champion => CHAMPION,
        Arm::Challenger => CHALLENGER,
    }
}

fn envoy_strip(rollout: &str, epoch: u64, weight_bp: u64) -> canary_core::FilterConfig {
    let mut config = filter_config(rollout, epoch, weight_bp);
    config.strip = Strip::Envoy;
    config
}

/// The owned headers the model server received.
fn seen(reply: &Reply) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let s = &body["seen"];
    (s["x-model-version"].clone(), s["x-canary-stage"].clone(), s["x-canary-unkeyed"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_envoy_stripping_forged_headers_never_reach_the_model_and_tags_are_unchanged() {
    let rig = Rig::start().await.unwrap();
    let c = client();
    let url = rig.envoy.url("/predict");
    // Same users, `strip: filter` then `strip: envoy`: the same tags on every response.
    let ids = users("tags-user", 400);
    let filter_mode = filter_config("tags", 1, 5000);
    let envoy_mode = envoy_strip("tags", 2, 5000);
    let mut by_mode = vec![];
    for config in [&filter_mode, &envoy_mode] {
        rig.envoy.push(config).await.unwrap();
        let mut tags = vec![];
        for user in &ids {
            // Every owned header forged by the client, and a keyed request.
            let forged = [
                ("x-user-id", user.as_str()),
                ("x-model-version", CHALLENGER),
                ("x-canary-stage", "forged"),
                ("x-canary-unkeyed", "1"),
            ];
            let reply = get(&c, &url, &forged).await.unwrap();
            assert_eq!(reply.status, 200, "{reply:?}");
            let version = expected_version("tags", 5000, user);
            assert_eq!(reply.version.as_deref(), Some(version), "{user} ({:?}): {reply:?}", config.strip);
            assert_eq!(reply.served_by.as_deref(), Some(version), "tagged and served by must agree: {reply:?}");
            assert_eq!(reply.stage.as_deref(), Some("w5000"), "{reply:?}");
            assert!(!reply.unkeyed, "a keyed request's response is marked unkeyed: {reply:?}");
            // What reached the model: the filter's tags, never the client's.
            let (v, stage, unkeyed) = seen(&reply);
            assert_eq!((v, stage, unkeyed), (version.into(), "w5000".into(), serde_json::Value::Null), "{user}");
            tags.push((reply.version, reply.stage, reply.unkeyed));
        }
        by_mode.push(tags);
    }
    assert_eq!(by_mode[0], by_mode[1], "the tags differ between strip: filter and strip: envoy");
    let on_challenger = by_mode[1].iter().filter(|t| t.0.as_deref() == Some(CHALLENGER)).count();
    assert!((120..280).contains(&on_challenger), "{on_challenger} of 400 on the challenger at 50 %");

    // Unkeyed requests: marked on the request (for the model) and the response.
    for forged in [None, Some("0"), Some("forged")] {
        let mut headers = vec![("x-model-version", CHALLENGER)];
        headers.extend(forged.map(|f| ("x-canary-unkeyed", f)));
        let reply = get(&c, &url, &headers).await.unwrap();
        assert_eq!((reply.version.as_deref(), reply.unkeyed), (Some(CHAMPION), true), "{reply:?}");
        assert_eq!(seen(&reply), (CHAMPION.into(), "w5000".into(), "1".into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_are_tagged_when_the_filter_routed_the_request() {
    let mut rig = Rig::start().await.unwrap();
    let c = client();
    let url = rig.envoy.url("/predict");
    rig.envoy.push(&envoy_strip("local", 1, 10_000)).await.unwrap();
    let reply = get(&c, &url, &[("x-user-id", "someone")]).await.unwrap();
    assert_eq!((reply.status, reply.version.as_deref()), (200, Some(CHALLENGER)));

    // The challenger's server is gone: Envoy's router answers 503 itself; the
    // reply passes through the filter, which tags it.
    rig.challenger.proc.stop();
    let reply = get(&c, &url, &[("x-user-id", "someone"), ("x-model-version", CHAMPION)]).await.unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.served_by.is_none(), "{reply:?}");
    assert_eq!((reply.version.as_deref(), reply.stage.as_deref()), (Some(CHALLENGER), Some("w10000")), "{reply:?}");
    assert!(!reply.unkeyed);
    let reply = get(&c, &url, &[]).await.unwrap();
    assert_eq!((reply.status, reply.version.as_deref(), reply.unkeyed), (200, Some(CHAMPION), true), "{reply:?}");

    // A reply Envoy sends before any filter runs (request headers over the
    // limit: 431) has no tags, in either mode: no version was chosen.
    let big = "a".repeat(70 * 1024);
    for config in [envoy_strip("local", 2, 10_000), filter_config("local", 3, 10_000)] {
        rig.envoy.push(&config).await.unwrap();
        let reply = get(&c, &url, &[("x-user-id", "someone"), ("x-big", &big)]).await.unwrap();
        assert_eq!(reply.status, 431, "{reply:?}");
        assert_eq!((reply.version, reply.stage, reply.unkeyed), (None, None, false), "{:?}", config.strip);
    }
}
