//! The admin-API stats source against real Envoys running the filter: sums
//! across Envoys, dead / hanging / garbage endpoints, the accuracy of a p99
//! from merged histograms, and counts kept across an Envoy restart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_controller::sink::EcdsFileSink;
use canary_controller::source::{AdminSource, AdminSourceConfig};
use canary_judge::window::Window;
use canary_tests::{
    client, counters_settled, filter_config, get, route_users, users, Backend, Envoy, EnvoyOptions, Reply, Rig,
    CHALLENGER, CHAMPION,
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const CONCURRENCY: usize = 32;

fn admin(envoy: &Envoy) -> String {
    format!("http://127.0.0.1:{}", envoy.admin_port)
}

fn source(endpoints: Vec<String>, timeout: Duration) -> AdminSource {
    AdminSource::new(AdminSourceConfig { endpoints, timeout, max_concurrency: 8 })
}

/// Per version: (requests, 2xx) as the clients saw them.
type Tally = BTreeMap<String, (u64, u64)>;

fn tally(replies: &[Reply], into: &mut Tally) {
    for r in replies {
        let version = r.version.clone().unwrap_or_else(|| panic!("untagged reply {r:?}"));
        let slot = into.entry(version).or_default();
        slot.0 += 1;
        slot.1 += u64::from(r.status == 200);
    }
}

/// The window's (requests, 2xx) per version, in the same shape.
fn counted(w: &Window) -> Tally {
    w.versions.iter().map(|(v, n)| (v.clone(), (n.requests, n.responses[1]))).collect()
}

/// Histograms reach `/stats` only at Envoy's stats flush (1 s here): reads
/// until every version's latency count equals its request count.
async fn read_until_histograms_flushed(source: &mut AdminSource, rollout: &str, epoch: u64, version: &str) -> Window {
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let w = source.read(rollout, epoch, version).await;
        let flushed = w.versions.values().all(|v| v.latency_us.count() == v.requests);
        if flushed || Instant::now() > deadline {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A local TCP server running `serve` on every connection; stopped when dropped.
struct LocalServer {
    port: u16,
    task: JoinHandle<()>,
}

impl LocalServer {
    async fn start<F, Fut>(serve: F) -> LocalServer
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        LocalServer { port, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts and never answers.
async fn hanging_server() -> LocalServer {
    LocalServer::start(|stream| async move {
        let _held = stream;
        std::future::pending::<()>().await;
    })
    .await
}

/// Answers every request with a 200 whose body is not stats.
async fn garbage_server() -> LocalServer {
    LocalServer::start(|mut stream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ =
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nhello world").await;
        let _ = stream.shutdown().await;
    })
    .await
}

/// A TCP relay to whichever admin port is current: one endpoint string for
/// two successive Envoy processes, as a restarted Envoy keeps its address.
async fn relay(target: Arc<AtomicU16>) -> LocalServer {
    LocalServer::start(move |mut inbound| {
        let to = target.load(Ordering::SeqCst);
        async move {
            if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        }
    })
    .await
}

/// A port nobody listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_envoys_add_up_to_exactly_what_the_clients_saw() {
    let rig = Rig::start().await.unwrap();
    let second = rig.second_envoy().await.unwrap();
    let config = filter_config("source-sum", 1, 3000);
    let version = EcdsFileSink::version_info(&config);
    rig.envoy.push(&config).await.unwrap();
    second.push(&config).await.unwrap();

    let c = client();
    let mut want = Tally::new();
    let first = route_users(&c, &rig.envoy.url("/"), &users("sum-a", 3000), CONCURRENCY).await.unwrap();
    let other = route_users(&c, &second.url("/"), &users("sum-b", 1700), CONCURRENCY).await.unwrap();
    tally(&first, &mut want);
    tally(&other, &mut want);
    assert_eq!(want.values().map(|v| v.0).sum::<u64>(), 4700);
    assert!(want.contains_key(CHAMPION) && want.contains_key(CHALLENGER), "{want:?}");

    let mut source = source(vec![admin(&rig.envoy), admin(&second)], Duration::from_secs(2));
    // Counters are live: the first read already has every request.
    counters_settled().await;
    let w = source.read("source-sum", 1, &version).await;
    println!("per version (requests, 2xx): clients {want:?}, source {:?}", counted(&w));
    assert_eq!(counted(&w), want);
    assert_eq!(w.epoch, 1);
    assert_eq!((w.coverage.endpoints, w.coverage.answered, w.coverage.applied), (2, 2, 2));
    assert!(w.coverage.failures.is_empty(), "{:?}", w.coverage.failures);
    assert!(w.coverage.resets.is_empty());
    assert_eq!(w.version(CHAMPION).responses[4], 0);

    // After a stats flush, every request also has its latency sample, and
    // reading again changes nothing else.
    let w = read_until_histograms_flushed(&mut source, "source-sum", 1, &version).await;
    for (v, (requests, _)) in &want {
        assert_eq!(w.version(v).latency_us.count(), *requests, "latency samples of {v}");
    }
    assert_eq!(counted(&w), want);
    assert!(w.coverage.resets.is_empty());

    // Another epoch of the same rollout is a different window.
    let empty = source.read("source-sum", 2, "source-sum/2").await;
    assert!(empty.versions.is_empty());
    assert_eq!((empty.coverage.answered, empty.coverage.applied), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_hanging_and_garbage_endpoints_fail_with_their_reasons_within_the_timeout() {
    let rig = Rig::start().await.unwrap();
    let config = filter_config("source-faults", 4, 5000);
    let version = EcdsFileSink::version_info(&config);
    rig.envoy.push(&config).await.unwrap();
    let mut want = Tally::new();
    tally(&route_users(&client(), &rig.envoy.url("/"), &users("faults", 800), CONCURRENCY).await.unwrap(), &mut want);

    let hanging = hanging_server().await;
    let garbage = garbage_server().await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let timeout = Duration::from_millis(500);
    let mut source = source(vec![dead.clone(), hanging.url(), admin(&rig.envoy), garbage.url()], timeout);

    let start = Instant::now();
    counters_settled().await;
    let w = source.read("source-faults", 4, &version).await;
    let took = start.elapsed();
    println!("read took {took:?} with a {timeout:?} timeout; failures:");
    for f in &w.coverage.failures {
        println!("  {}: {}", f.endpoint, f.error);
    }
    assert!(took < timeout + Duration::from_millis(500), "read took {took:?}");

    // The good Envoy's numbers, whole.
    assert_eq!(counted(&w), want);
    assert_eq!((w.coverage.endpoints, w.coverage.answered, w.coverage.applied), (4, 1, 1));
    let reasons: BTreeMap<&str, &str> =
        w.coverage.failures.iter().map(|f| (f.endpoint.as_str(), f.error.as_str())).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[dead.as_str()].starts_with("cannot connect: "), "{reasons:?}");
    assert!(reasons[dead.as_str()].contains("refused"), "{reasons:?}");
    assert_eq!(reasons[hanging.url().as_str()], "no complete answer within 500ms (endpoint hanging or too slow)");
    assert!(reasons[garbage.url().as_str()].starts_with("unparseable stats: not JSON"), "{reasons:?}");

    // One deadline for the whole read: even one endpoint at a time, a
    // hanging one costs one timeout wherever it sits. An endpoint that waits
    // for the slot behind it gets what is left of the deadline (here none):
    // reported as timed out, never counted as healthy.
    for (endpoints, good_counted) in
        [(vec![admin(&rig.envoy), hanging.url()], true), (vec![hanging.url(), admin(&rig.envoy)], false)]
    {
        let mut serial =
            AdminSource::new(AdminSourceConfig { endpoints: endpoints.clone(), timeout, max_concurrency: 1 });
        let start = Instant::now();
        counters_settled().await;
        let w = serial.read("source-faults", 4, &version).await;
        assert!(start.elapsed() < timeout + Duration::from_millis(500), "{endpoints:?}: {:?}", start.elapsed());
        let failed: Vec<&str> = w.coverage.failures.iter().map(|f| f.endpoint.as_str()).collect();
        if good_counted {
            assert_eq!(counted(&w), want);
            assert_eq!(failed, [hanging.url().as_str()]);
        } else {
            assert_eq!(w.coverage.answered, 0, "{failed:?}");
            assert_eq!(failed.len(), 2, "{failed:?}");
        }
    }
}

/// Exact p99 of samples (nearest rank).
fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p99_from_merged_histograms_is_within_5_percent_of_what_clients_measured() {
    // Log-normal model latency: median 100 ms, sigma 0.5 (p99 ≈ 320 ms).
    let champion = Backend::start(CHAMPION, &["--latency-ms", "100", "--latency-sigma", "0.5"]).unwrap();
    let challenger = Backend::start(CHALLENGER, &[]).unwrap();
    let opts = EnvoyOptions::new(&champion, &challenger);
    let envoys = [Envoy::start(&opts).await.unwrap(), Envoy::start(&opts).await.unwrap()];
    // Weight 0: every request on the champion, through either Envoy.
    let config = filter_config("source-latency", 1, 0);
    let version = EcdsFileSink::version_info(&config);
    for e in &envoys {
        e.push(&config).await.unwrap();
    }

    const REQUESTS: usize = 2000;
    let c = client();
    let urls = [envoys[0].url("/"), envoys[1].url("/")];
    let started = Instant::now();
    let mut latencies_us: Vec<f64> = futures::stream::iter(0..REQUESTS)
        .map(|i| {
            let (c, url) = (&c, &urls[i % 2]);
            async move {
                let user = format!("lat-{i}");
                let start = Instant::now();
                let reply = get(c, url, &[("x-user-id", &user)]).await.unwrap();
                let took = start.elapsed();
                assert_eq!((reply.status, reply.version.as_deref()), (200, Some(CHAMPION)));
                took.as_secs_f64() * 1e6
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    println!("{REQUESTS} requests in {:?}", started.elapsed());
    latencies_us.sort_by(f64::total_cmp);

    let mut source = source(envoys.iter().map(admin).collect(), Duration::from_secs(2));
    let w = read_until_histograms_flushed(&mut source, "source-latency", 1, &version).await;
    let h = &w.version(CHAMPION).latency_us;
    assert_eq!(h.count(), REQUESTS as u64, "latency samples in the merged histogram");
    assert_eq!(w.coverage.applied, 2);

    for (q, tolerance) in [(0.5, 0.05), (0.99, 0.05)] {
        let exact = exact_quantile(&latencies_us, q);
        let from_source = h.quantile(q).unwrap();
        let error = (from_source - exact) / exact;
        println!(
            "p{}: clients {:.1} ms, source (merged Envoy histograms) {:.1} ms, error {:+.2}%",
            q * 100.0,
            exact / 1000.0,
            from_source / 1000.0,
            error * 100.0
        );
        assert!(error.abs() <= tolerance, "p{} off by {:.2}%", q * 100.0, error * 100.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_an_envoy_restart_behind_the_same_endpoint() {
    let Rig { champion, challenger, envoy } = Rig::start().await.unwrap();
    let config = filter_config("source-restart", 1, 5000);
    let version = EcdsFileSink::version_info(&config);
    envoy.push(&config).await.unwrap();
    let target = Arc::new(AtomicU16::new(envoy.admin_port));
    let relay = relay(target.clone()).await;
    let mut source = source(vec![relay.url()], Duration::from_secs(2));

    let c = client();
    let mut want = Tally::new();
    tally(&route_users(&c, &envoy.url("/"), &users("before", 1200), CONCURRENCY).await.unwrap(), &mut want);
    let w = read_until_histograms_flushed(&mut source, "source-restart", 1, &version).await;
    assert_eq!(counted(&w), want);
    assert_eq!(w.versions.values().map(|v| v.latency_us.count()).sum::<u64>(), 1200);
    assert!(w.coverage.resets.is_empty());
    let first_pid = envoy.proc.pid();

    // The Envoy goes away; a new process with the same configuration takes
    // its place behind the same admin endpoint, and serves fewer requests
    // than the old one had counted.
    drop(envoy);
    let envoy = Envoy::start(&EnvoyOptions::new(&champion, &challenger)).await.unwrap();
    assert_ne!(envoy.proc.pid(), first_pid);
    envoy.push(&config).await.unwrap();
    target.store(envoy.admin_port, Ordering::SeqCst);
    tally(&route_users(&c, &envoy.url("/"), &users("after", 300), CONCURRENCY).await.unwrap(), &mut want);

    counters_settled().await;
    let w = source.read("source-restart", 1, &version).await;
    println!("after the restart: clients {want:?}, source {:?}, resets {:?}", counted(&w), w.coverage.resets);
    assert_eq!(w.coverage.resets, vec![relay.url()]);
    assert_eq!(counted(&w), want, "counts before the restart lost or counted twice");
    assert_eq!(w.coverage.applied, 1);

    // Once the new process flushes its histograms: every latency sample,
    // old and new, once; and no second reset.
    let w = read_until_histograms_flushed(&mut source, "source-restart", 1, &version).await;
    assert_eq!(w.versions.values().map(|v| v.latency_us.count()).sum::<u64>(), 1500);
    assert_eq!(counted(&w), want);
    assert!(w.coverage.resets.is_empty());
    assert_eq!(source.tracker().resets(&relay.url()), 1);

    // The tracker persists (in its shards, as the controller saves it): a
    // controller restarted with it still counts from before.
    let saved: Vec<String> = (0..canary_judge::evidence::tracker::SHARDS)
        .map(|i| serde_json::to_string(&source.tracker().shard(i)).unwrap())
        .collect();
    let mut restarted = AdminSource::new(source.config().clone());
    let shards = saved.iter().map(|s| serde_json::from_str(s).unwrap());
    restarted.set_tracker(canary_judge::evidence::tracker::ResetTracker::from_shards(shards).unwrap());
    assert_eq!(counted(&restarted.read("source-restart", 1, &version).await), want);
}
