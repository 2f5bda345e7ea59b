//! `make images` end to end, without a container daemon: scripts/images.sh
//! builds both OCI layouts (umoci), this test pushes them to a real registry
//! (Debian's `docker-registry`, started here on 127.0.0.1, stopped by PID),
//! pulls them back with skopeo and checks that the digests survive, that the
//! pulled filter's `plugin.wasm` is the built `.wasm` byte for byte and loads
//! in Envoy, and that the controller image runs its binary as non-root.
//! Tools: `scripts/setup.sh images` (make integration runs it).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use canary_tests::{envoy_validate, pid_alive, render_template, root, validate_vars, wasm_path, Proc};

const VERSION: &str = "0.1.0";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The manifest digest the layout's index tags with VERSION.
fn tagged(layout: &Path) -> String {
    let index = json(&layout.join("index.json"));
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == VERSION);
    m.unwrap()["digest"].as_str().unwrap().to_string()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

fn sha256(bytes: &[u8]) -> String {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), bytes).unwrap();
    let out = run(Command::new("sha256sum").arg(tmp.path()));
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

/// `docker-registry serve` on a free 127.0.0.1 port, storing under `dir`.
fn registry(dir: &Path) -> (Proc, String) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: \"{addr}\"}}\n",
            dir.join("storage").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let proc = Proc::spawn(
        "docker-registry",
        Command::new("docker-registry").arg("serve").arg(&config).stdout(log.try_clone().unwrap()).stderr(log),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not listen on {addr} within 15 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, addr)
}

/// `envoy --mode validate` of the sidecar bootstrap with the filter at `wasm`.
fn envoy_validates(wasm: &Path) -> (bool, String) {
    let config = render_template(&root().join("envoy/sidecar.yaml"), &validate_vars(wasm)).unwrap();
    envoy_validate(&config).unwrap()
}

#[test]
fn both_images_survive_a_real_registry_and_the_pulled_filter_loads_in_envoy() {
    for tool in ["umoci", "skopeo", "docker-registry"] {
        let found =
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(tool).is_file());
        assert!(found, "{tool} is missing: run `bash scripts/setup.sh images`");
    }
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    // The release binary when `make images` built it, else the debug one.
    let bin = [root().join("target/release/canary"), root().join("target/debug/canary")]
        .into_iter()
        .find(|p| p.exists())
        .expect("no canary binary: cargo build -p canary-controller");
    let started = Instant::now();
    let built = run(Command::new("bash")
        .arg(root().join("scripts/images.sh"))
        .env("OUT", &images)
        .env("CANARY_BIN", &bin)
        .env("WASM", wasm_path().unwrap()));
    println!("{built}(built in {:?} from {})", started.elapsed(), bin.display());

    let (mut registry, addr) = registry(tmp.path());
    let pid = registry.pid();
    for (name, repo) in [("controller", "canary-controller"), ("filter", "canary-filter")] {
        let layout = images.join(name);
        let digest = tagged(&layout);
        assert!(built.contains(&format!("{name} ")) && built.contains(&digest), "{built}");
        let remote = format!("docker://{addr}/{repo}");
        let started = Instant::now();
        run(Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{VERSION}", layout.display()))
            .arg(format!("{remote}:{VERSION}")));
        let raw = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("{remote}:{VERSION}"))
            .output()
            .unwrap();
        assert!(raw.status.success());
        assert_eq!(sha256(&raw.stdout), digest, "{name}: the registry serves the manifest unchanged");
        let pulled = tmp.path().join(format!("pulled-{name}"));
        run(Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("{remote}@{digest}"))
            .arg(format!("oci:{}:{VERSION}", pulled.display())));
        assert_eq!(tagged(&pulled), digest, "{name}: pulled back by digest");
        println!("{name}: {digest} pushed and pulled in {:?}", started.elapsed());
    }

    // The filter: one layer, /plugin.wasm, the built bytes; Envoy loads it.
    let pulled = tmp.path().join("pulled-filter");
    let manifest = json(&blob(&pulled, &tagged(&pulled)));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "the Wasm image spec's compat variant: one layer");
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let unpacked = tmp.path().join("filter-layer");
    std::fs::create_dir(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("xzf")
        .arg(blob(&pulled, layers[0]["digest"].as_str().unwrap()))
        .arg("-C")
        .arg(&unpacked));
    let wasm = unpacked.join("plugin.wasm");
    assert!(std::fs::read(&wasm).unwrap() == std::fs::read(wasm_path().unwrap()).unwrap(), "plugin.wasm differs");
    let (ok, log) = envoy_validates(&wasm);
    assert!(ok, "Envoy refuses the pulled plugin.wasm:\n{log}");
    // The check bites: a damaged module is refused.
    let damaged = tmp.path().join("damaged.wasm");
    let bytes = std::fs::read(&wasm).unwrap();
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    assert!(!envoy_validates(&damaged).0, "envoy --mode validate accepted half a module");

    // The controller: non-root, `canary operator`, and its binary runs from
    // the image's own files (as root here: chroot into the unpacked image).
    let pulled = tmp.path().join("pulled-controller");
    let manifest = json(&blob(&pulled, &tagged(&pulled)));
    let config = json(&blob(&pulled, manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/local/bin/canary"]));
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["operator"]));
    let bundle = tmp.path().join("controller-bundle");
    run(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:{VERSION}", pulled.display())).arg(&bundle));
    let uid = run(Command::new("id").arg("-u"));
    if uid.trim() == "0" {
        let out = run(Command::new("chroot")
            .arg("--userspec=65532:65532")
            .arg(bundle.join("rootfs"))
            .args(["/usr/local/bin/canary", "--version"]));
        assert!(out.starts_with("canary"), "{out}");
    } else {
        eprintln!("not root: the controller image's binary was not run (chroot needs root)");
    }

    registry.stop();
    assert!(!pid_alive(pid), "docker-registry {pid} still runs");
}
