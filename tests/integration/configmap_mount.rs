//! The ConfigMap sink's data reaches a real Envoy through a mounted
//! ConfigMap's layout: the kubelet's `..data` symlink swap, reproduced
//! here step by step, is caught by Envoy's `watched_directory`.

use std::os::unix::fs::symlink;
use std::path::Path;

use canary_controller::sink::ConfigMapSink;
use canary_tests::{client, filter_config, route_users, users, wasm_path, Rig, CHALLENGER, CHAMPION};

/// What the ConfigMap sink writes under `canary.json` for this configuration.
fn configmap_data(epoch: u64, weight_bp: u64) -> String {
    let sink = ConfigMapSink::new("shop", "canary-ecds", "canary.json", &wasm_path().unwrap());
    let patch = sink.patch_body(&filter_config("swap", epoch, weight_bp));
    patch["data"]["canary.json"].as_str().unwrap().to_string()
}

/// The kubelet's update: data in a new timestamped directory, `..data_tmp`
/// pointing at it, renamed over `..data` (one atomic rename), the old
/// directory removed.
fn kubelet_update(mount: &Path, stamp: &str, text: &str, old: Option<&str>) {
    let dir = mount.join(stamp);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("canary.json"), text).unwrap();
    symlink(stamp, mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(mount.join(old)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_applied_by_envoys_watched_directory() {
    let rig = Rig::start().await.unwrap();
    let mount = rig.envoy.sink.path().parent().unwrap().to_path_buf();

    // First mount: the key is a symlink through `..data`, as the kubelet lays it out.
    kubelet_update(&mount, "..2026_11_22_00_00_01.000000001", &configmap_data(1, 0), None);
    symlink("..data/canary.json", mount.join(".canary.json.link")).unwrap();
    std::fs::rename(mount.join(".canary.json.link"), mount.join("canary.json")).unwrap();
    rig.envoy.wait_version("swap/1").await.unwrap();
    let replies = route_users(&client(), &rig.envoy.url("/predict"), &users("u", 200), 8).await.unwrap();
    assert!(replies.iter().all(|r| r.version.as_deref() == Some(CHAMPION)), "weight 0 sends everyone to the champion");

    // An update: only `..data` moves; canary.json itself never changes.
    kubelet_update(
        &mount,
        "..2026_11_22_00_01_01.000000002",
        &configmap_data(2, 5000),
        Some("..2026_11_22_00_00_01.000000001"),
    );
    rig.envoy.wait_version("swap/2").await.unwrap();
    let replies = route_users(&client(), &rig.envoy.url("/predict"), &users("u", 200), 8).await.unwrap();
    let challenger = replies.iter().filter(|r| r.version.as_deref() == Some(CHALLENGER)).count();
    assert!((60..=140).contains(&challenger), "50 % should reach the challenger, got {challenger}/200");
    assert!(std::fs::symlink_metadata(mount.join("canary.json")).unwrap().file_type().is_symlink());
}
