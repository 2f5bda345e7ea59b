//! The split, in a real Envoy running the built .wasm: sticky, accurate,
//! monotonic, not spoofable, with a documented fallback for unkeyed requests.

use std::collections::HashMap;

use canary_core::metrics::Counter;
use canary_core::split::{arm_for, Salt};
use canary_core::{Arm, Weight};
use canary_tests::{client, filter_config, get, route_users, users, Reply, Rig, CHALLENGER, CHAMPION};

const CONCURRENCY: usize = 32;

fn expected_version(rollout: &str, weight_bp: u64, user: &str) -> &'static str {
    match arm_for(Salt::new(rollout).bucket(user.as_bytes()), Weight::from_bp(weight_bp).unwrap()) {
        Arm::Champion => CHAMPION,
        Arm::Challenger => CHALLENGER,
    }
}

/// The tag on the response and the backend that really answered agree.
fn version_of(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{reply:?}");
    let version = reply.version.clone().expect("response has no x-model-version tag");
    assert_eq!(reply.served_by.as_ref(), Some(&version), "tagged {version} but served by {:?}", reply.served_by);
    version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_user_same_version_on_every_request_and_every_envoy() {
    let rig = Rig::start().await.unwrap();
    let second = rig.second_envoy().await.unwrap();
    let config = filter_config("sticky", 1, 5000);
    rig.envoy.push(&config).await.unwrap();
    second.push(&config).await.unwrap();
    assert_ne!(rig.envoy.proc.pid(), second.proc.pid());

    let ids = users("sticky-user", 10_000);
    let c = client();
    let first = route_users(&c, &rig.envoy.url("/predict"), &ids, CONCURRENCY).await.unwrap();
    let other = route_users(&c, &second.url("/predict"), &ids, CONCURRENCY).await.unwrap();
    let third = route_users(&c, &rig.envoy.url("/predict"), &ids, CONCURRENCY).await.unwrap();

    let mut flips = 0;
    let mut on_challenger = 0;
    for (i, user) in ids.iter().enumerate() {
        let v = [version_of(&first[i]), version_of(&other[i]), version_of(&third[i])];
        if v[0] != v[1] || v[0] != v[2] {
            flips += 1;
        }
        // The filter computes exactly the documented formula.
        assert_eq!(v[0], expected_version("sticky", 5000, user), "user {user}");
        on_challenger += usize::from(v[0] == CHALLENGER);
    }
    assert_eq!(flips, 0, "{flips} of 10000 users changed version");
    // Both versions really served traffic (the check above is not vacuous).
    assert!((4000..6000).contains(&on_challenger), "{on_challenger} on challenger at 50%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenger_share_is_within_one_point_of_the_weight() {
    let rig = Rig::start().await.unwrap();
    let c = client();
    for (epoch, weight_bp) in [(1u64, 500u64), (2, 2000)] {
        let config = filter_config("accuracy", epoch, weight_bp);
        rig.envoy.push(&config).await.unwrap();
        let ids = users(&format!("acc{weight_bp}"), 20_000);
        let replies = route_users(&c, &rig.envoy.url("/"), &ids, CONCURRENCY).await.unwrap();
        let challenger = replies.iter().filter(|r| version_of(r) == CHALLENGER).count();
        let share = challenger as f64 / ids.len() as f64;
        let target = weight_bp as f64 / 10_000.0;
        println!("weight {:.0}%: challenger share {:.3}% over {} users", target * 100.0, share * 100.0, ids.len());
        assert!((share - target).abs() <= 0.01, "share {share} vs weight {target}");

        // Envoy's stats count exactly what the clients saw, per version and epoch.
        let count = |v: &'static str, counter| {
            let config = config.clone();
            let envoy = &rig.envoy;
            async move { envoy.canary_counter(&config, v, counter).await.unwrap() }
        };
        assert_eq!(count(CHALLENGER, Counter::RqTotal).await, challenger as u64);
        assert_eq!(count(CHALLENGER, Counter::Rq2xx).await, challenger as u64);
        assert_eq!(count(CHAMPION, Counter::RqTotal).await, (ids.len() - challenger) as u64);
        assert_eq!(count(CHAMPION, Counter::Rq5xx).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_weight_never_moves_a_user_back_to_the_champion() {
    let rig = Rig::start().await.unwrap();
    let c = client();
    let ids = users("ramp", 5000);
    let mut on_challenger: HashMap<String, bool> = HashMap::new();
    let mut shares = vec![];
    for (epoch, percent) in [1u64, 5, 20, 50, 100].into_iter().enumerate() {
        rig.envoy.push(&filter_config("ramp", epoch as u64 + 1, percent * 100)).await.unwrap();
        let replies = route_users(&c, &rig.envoy.url("/"), &ids, CONCURRENCY).await.unwrap();
        let mut moved_back = 0;
        for (user, reply) in ids.iter().zip(&replies) {
            let now = version_of(reply) == CHALLENGER;
            if on_challenger.get(user) == Some(&true) && !now {
                moved_back += 1;
            }
            on_challenger.insert(user.clone(), now);
        }
        assert_eq!(moved_back, 0, "{moved_back} users moved back to the champion at {percent}%");
        shares.push(on_challenger.values().filter(|v| **v).count());
    }
    assert!(shares.windows(2).all(|w| w[0] <= w[1]), "{shares:?}");
    assert_eq!(shares.last(), Some(&ids.len()), "not everyone on the challenger at 100%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sent_version_header_does_not_pick_the_version() {
    let rig = Rig::start().await.unwrap();
    let c = client();
    for (epoch, weight_bp, forged, real) in [(1u64, 0u64, CHALLENGER, CHAMPION), (2, 10_000, CHAMPION, CHALLENGER)] {
        rig.envoy.push(&filter_config("spoof", epoch, weight_bp)).await.unwrap();
        for i in 0..200 {
            let user = format!("spoofer-{i}");
            let reply = get(
                &c,
                &rig.envoy.url("/"),
                &[
                    ("x-user-id", &user),
                    ("x-model-version", forged),
                    ("x-canary-stage", "forged"),
                    ("x-canary-unkeyed", "1"),
                ],
            )
            .await
            .unwrap();
            assert_eq!(version_of(&reply), real, "forged {forged} at {weight_bp} bp");
            // What reached the model server: the filter's tags, not the client's.
            let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(body["seen"]["x-model-version"], real);
            assert_eq!(body["seen"]["x-canary-stage"], format!("w{weight_bp}"));
            assert_eq!(body["seen"]["x-canary-unkeyed"], serde_json::Value::Null);
            assert_eq!(reply.stage.as_deref(), Some(format!("w{weight_bp}").as_str()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_requests_follow_the_fallback_and_are_marked() {
    let rig = Rig::start().await.unwrap();
    let c = client();
    let config = filter_config("unkeyed", 1, 5000);
    rig.envoy.push(&config).await.unwrap();
    for _ in 0..300 {
        let reply = get(&c, &rig.envoy.url("/"), &[]).await.unwrap();
        assert_eq!(version_of(&reply), CHAMPION);
        assert!(reply.unkeyed, "unkeyed request not marked: {reply:?}");
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["seen"]["x-canary-unkeyed"], "1");
    }
    assert_eq!(rig.envoy.canary_counter(&config, CHAMPION, Counter::RqUnkeyed).await.unwrap(), 300);
    assert_eq!(rig.envoy.canary_counter(&config, CHALLENGER, Counter::RqTotal).await.unwrap(), 0);

    // A keyed request is not marked.
    let keyed = get(&c, &rig.envoy.url("/"), &[("x-user-id", "someone")]).await.unwrap();
    assert!(!keyed.unkeyed);

    // The cookie is the second key source: same user, same version as by header.
    for i in 0..300 {
        let user = format!("cookie-user-{i}");
        let by_cookie = get(&c, &rig.envoy.url("/"), &[("cookie", &format!("theme=dark; uid={user}"))]).await.unwrap();
        assert!(!by_cookie.unkeyed);
        assert_eq!(version_of(&by_cookie), expected_version("unkeyed", 5000, &user));
    }

    // The other policy: split by Envoy's request id, at the weight, still marked.
    let mut by_request_id = config.clone();
    by_request_id.epoch = 2;
    by_request_id.unkeyed = canary_core::config::UnkeyedPolicy::SplitByRequestId;
    rig.envoy.push(&by_request_id).await.unwrap();
    let mut challenger = 0;
    for _ in 0..2000 {
        let reply = get(&c, &rig.envoy.url("/"), &[]).await.unwrap();
        assert!(reply.unkeyed);
        challenger += usize::from(version_of(&reply) == CHALLENGER);
    }
    assert!((800..1200).contains(&challenger), "{challenger} of 2000 unkeyed requests on the challenger at 50%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_configuration_everyone_gets_the_champion() {
    let rig = Rig::start().await.unwrap();
    let c = client();
    for i in 0..500 {
        let reply =
            get(&c, &rig.envoy.url("/"), &[("x-user-id", &format!("early-{i}")), ("x-model-version", CHALLENGER)])
                .await
                .unwrap();
        assert_eq!(version_of(&reply), CHAMPION);
        assert_eq!(reply.stage.as_deref(), Some("default"));
    }
}
