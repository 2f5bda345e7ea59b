//! Hostile clients against the real Envoy + filter: forged tags and override
//! headers, huge and invalid keys and cookies, oversized bodies. Nobody picks
//! their version without the QA secret, and the filter never causes a 5xx.

use canary_core::split::{arm_for, Salt};
use canary_core::{Arm, FilterConfig, Weight};
use canary_tests::{client, filter_config, Rig, CHALLENGER, CHAMPION};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

const SECRET: &str = "qa-secret-0123456789";

fn config() -> FilterConfig {
    let mut v: serde_json::Value = serde_json::from_str(&filter_config("hostile", 1, 2000).to_json()).unwrap();
    v["override"] = serde_json::json!({"header": "x-canary-override", "secret": SECRET});
    FilterConfig::from_json(v.to_string().as_bytes()).unwrap()
}

fn expected(key: &[u8]) -> &'static str {
    match arm_for(Salt::new("hostile").bucket(key), Weight::from_bp(2000).unwrap()) {
        Arm::Champion => CHAMPION,
        Arm::Challenger => CHALLENGER,
    }
}

async fn send(
    rig: &Rig,
    headers: Vec<(&str, Vec<u8>)>,
    body: Option<Vec<u8>>,
) -> (u16, Option<String>, Option<String>) {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_bytes(&v).unwrap());
    }
    let c = client();
    let req = match body {
        Some(b) => c.post(rig.envoy.url("/predict")).body(b),
        None => c.get(rig.envoy.url("/predict")),
    };
    let r = req.headers(h).send().await.unwrap();
    let tag = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    (r.status().as_u16(), tag("x-model-version"), tag("x-served-by"))
}

/// (name, request headers, request body, the version it must get)
type Case = (String, Vec<(&'static str, Vec<u8>)>, Option<Vec<u8>>, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_the_hashed_version_and_never_a_5xx_from_the_filter() {
    let rig = Rig::start().await.unwrap();
    rig.envoy.push(&config()).await.unwrap();

    let big_id = vec![b'u'; 16 * 1024];
    let binary_id: Vec<u8> = (0x80..=0xff).collect();
    let huge_cookie = format!("a={}; uid=cookie-user", "x".repeat(30 * 1024)).into_bytes();
    let bad_cookie = b"uid=\"; ;;; =; uid2".to_vec();
    let forged_tags = |user: &str| {
        vec![
            ("x-user-id", user.as_bytes().to_vec()),
            ("x-model-version", CHALLENGER.as_bytes().to_vec()),
            ("x-canary-stage", b"forged".to_vec()),
            ("x-canary-unkeyed", b"1".to_vec()),
            ("x-canary-override", format!("wrong-secret-xxxxxxx:{CHALLENGER}").into_bytes()),
        ]
    };
    let mut cases: Vec<Case> = vec![];
    for i in 0..200 {
        let user = format!("hostile-{i}");
        cases.push((format!("forged tags {user}"), forged_tags(&user), None, expected(user.as_bytes())));
    }
    cases.push(("16 KiB user id".into(), vec![("x-user-id", big_id.clone())], None, expected(&big_id)));
    cases.push(("binary user id".into(), vec![("x-user-id", binary_id.clone())], None, expected(&binary_id)));
    cases.push(("30 KiB cookie".into(), vec![("cookie", huge_cookie)], None, expected(b"cookie-user")));
    cases.push(("broken cookie".into(), vec![("cookie", bad_cookie)], None, CHAMPION));
    cases.push((
        "override without a version".into(),
        vec![("x-canary-override", SECRET.as_bytes().to_vec())],
        None,
        CHAMPION,
    ));
    cases.push((
        "override for an unknown version".into(),
        vec![("x-canary-override", format!("{SECRET}:v9").into_bytes())],
        None,
        CHAMPION,
    ));
    cases.push((
        "1 MiB body".into(),
        vec![("x-user-id", b"body-user".to_vec())],
        Some(vec![b'z'; 1 << 20]),
        expected(b"body-user"),
    ));
    for (name, headers, body, want) in cases {
        let (status, tag, served) = send(&rig, headers, body).await;
        if status >= 500 {
            std::thread::sleep(std::time::Duration::from_millis(500));
            panic!("{name}: status {status}; access log: {:?}", rig.envoy.access_log().last());
        }
        assert_eq!(tag.as_deref(), Some(want), "{name}");
        assert_eq!(served.as_deref(), Some(want), "{name}: routed elsewhere than tagged");
    }

    // The QA override with the secret works, and only with it.
    for want in [CHALLENGER, CHAMPION] {
        let (status, tag, served) = send(
            &rig,
            vec![("x-user-id", b"qa-user".to_vec()), ("x-canary-override", format!("{SECRET}:{want}").into_bytes())],
            None,
        )
        .await;
        assert_eq!((status, tag.as_deref(), served.as_deref()), (200, Some(want), Some(want)));
    }
}
