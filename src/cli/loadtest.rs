//! `vaultfs loadtest`: the escalation's load against any deployment, verified as it runs.
//!
//! At once, for a duration or a count of uploads: N uploaders (sizes from a weighted mix,
//! SHA-256 declared so the server verifies), downloaders reading back every acknowledged
//! upload and checking its SHA-256, movers issuing opposite moves (a->b while b->a, overwrite
//! on), M sync subscribers checking that the feed is gapless and in order, and a health prober.
//! Memory is bounded: a payload is one seeded 64 KiB block streamed as many times as needed.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::client::{Client, ClientError};

mod feed_socket;
mod observers;
mod report;
use observers::{latest_seq, own_usage, spawn_prober, subscriber, CONNECTING_AT_ONCE};
use report::{lock, Recorder};
pub use report::{EventsReport, KindReport, Latency, LoadToolReport, Report};

const BLOCK: usize = 64 * 1024;
/// Largest payload hashed inline; bigger ones are hashed on the blocking pool.
const INLINE_HASH: u64 = 1 << 20;

/// What [`run`] does: the load's shape, the limits it is judged against, and where it is sent
/// ([`LoadConfig::new`] gives the defaults).
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URL of the server under test, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Concurrent upload workers (default 20).
    pub uploaders: usize,
    /// Concurrent workers downloading every acknowledged upload and checking its SHA-256
    /// (default 8).
    pub downloaders: usize,
    /// Workers issuing opposite moves (a->b while b->a, overwrite on); 0: none (default 4).
    pub movers: usize,
    /// WebSocket sync subscribers checking the feed is gapless and in order (default 10).
    pub subscribers: usize,
    /// How long uploads keep starting (default 30 s); `None`: until `count` uploads have started.
    pub duration: Option<Duration>,
    /// Total uploads to start across all uploaders; `None`: unlimited (bounded by `duration`).
    pub count: Option<u64>,
    /// (bytes, weight)
    pub sizes: Vec<(u64, u32)>,
    /// The run fails if no request completes for longer than this (default 5 s).
    pub stall_limit: Duration,
    /// Print progress to standard error while running (default false).
    pub progress: bool,
    /// Uploads started per second across all uploaders (paced); `None`: as fast as they go.
    pub rate: Option<f64>,
    /// Where the prober sends `GET /healthz` (a probe listener); `None`: `url`.
    pub probe_url: Option<String>,
}

impl LoadConfig {
    /// The default load against `url`: 20 uploaders, 8 downloaders, 4 movers and 10 subscribers
    /// for 30 s, sizes 4 KiB:50, 1 MiB:45, 64 MiB:5, stall limit 5 s, unpaced, no progress.
    pub fn new(url: &str) -> Self {
        LoadConfig {
            url: url.to_string(),
            uploaders: 20,
            downloaders: 8,
            movers: 4,
            subscribers: 10,
            duration: Some(Duration::from_secs(30)),
            count: None,
            sizes: vec![(4 << 10, 50), (1 << 20, 45), (64 << 20, 5)],
            stall_limit: Duration::from_secs(5),
            progress: false,
            rate: None,
            probe_url: None,
        }
    }
}

/// `4KiB:50,1MiB:45,64MiB:5`
pub fn parse_sizes(text: &str) -> Result<Vec<(u64, u32)>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (size, weight) = part
            .split_once(':')
            .ok_or_else(|| format!("{part:?}: expected SIZE:WEIGHT"))?;
        let size = crate::config::parse_size(size).map_err(|e| format!("{part:?}: {e}"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("{part:?}: weight must be a whole number"))?;
        if weight > 0 {
            out.push((size, weight));
        }
    }
    if out.is_empty() {
        return Err("no size with a positive weight".into());
    }
    Ok(out)
}

fn seeded_block(seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(BLOCK);
    while out.len() < BLOCK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(out)
}

fn chunks(block: &Bytes, size: u64) -> impl Iterator<Item = Bytes> + Send + 'static {
    let block = block.clone();
    let full = size / BLOCK as u64;
    let rest = (size % BLOCK as u64) as usize;
    (0..full)
        .map({
            let b = block.clone();
            move |_| b.clone()
        })
        .chain((rest > 0).then(move || block.slice(..rest)))
}

async fn payload_sha(block: &Bytes, size: u64) -> Result<String, ClientError> {
    let block = block.clone();
    let hash = move || {
        let mut h = Sha256::new();
        for c in chunks(&block, size) {
            h.update(&c);
        }
        Ok(hex::encode(h.finalize()))
    };
    if size <= INLINE_HASH {
        hash().map_err(|e: std::io::Error| ClientError::Other(e.to_string()))
    } else {
        crate::blocking::run(hash)
            .await
            .map_err(|e| ClientError::Other(e.to_string()))
    }
}

struct Uploaded {
    id: String,
    sha256: String,
    size: u64,
}

struct Shared {
    client: Client,
    cfg: LoadConfig,
    rec: Recorder,
    stop: AtomicBool,
    tickets: AtomicU64,
    run_id: String,
    total_weight: u32,
}

impl Shared {
    fn pick_size(&self, n: u64) -> u64 {
        let mut r = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32 % self.total_weight.max(1);
        for (size, w) in &self.cfg.sizes {
            if r < *w {
                return *size;
            }
            r -= w;
        }
        self.cfg.sizes.first().map_or(4096, |s| s.0)
    }

    /// With `--rate`, waits until upload `n` is due (`n / rate` seconds after the start).
    async fn pace(&self, n: u64, began: Instant) {
        if let Some(rate) = self.cfg.rate.filter(|r| *r > 0.0) {
            let due = began + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
    }

    /// Whether another upload may start.
    fn take_ticket(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let n = self.tickets.fetch_add(1, Ordering::Relaxed);
        match self.cfg.count {
            Some(c) if n >= c => None,
            _ => Some(n),
        }
    }
}

async fn upload_one(
    sh: &Shared,
    path: &str,
    seed: u64,
    size: u64,
) -> Result<Uploaded, ClientError> {
    let block = seeded_block(seed);
    let sha = payload_sha(&block, size).await?;
    let stream = futures_util::stream::iter(chunks(&block, size).map(Ok::<Bytes, std::io::Error>));
    let body = reqwest::Body::wrap_stream(stream);
    let meta = sh
        .client
        .upload(path, body, Some(size), Some(&sha), false)
        .await?;
    if meta.sha256 != sha || meta.size != size {
        return Err(ClientError::Other(format!(
            "{path}: server acknowledged sha {} size {}, sent {sha} size {size}",
            meta.sha256, meta.size
        )));
    }
    Ok(Uploaded {
        id: meta.id,
        sha256: sha,
        size,
    })
}

async fn uploader(sh: Arc<Shared>, worker: usize, verify: mpsc::Sender<Uploaded>, began: Instant) {
    while let Some(n) = sh.take_ticket() {
        sh.pace(n, began).await;
        if sh.stop.load(Ordering::Relaxed) {
            return;
        }
        let size = sh.pick_size(n);
        let path = format!("loadtest/{}/u{worker}/{n}.bin", sh.run_id);
        let started = Instant::now();
        sh.rec.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = upload_one(&sh, &path, n ^ 0x5EED, size).await;
        sh.rec.in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(up) => {
                sh.rec.ok("upload", started.elapsed(), size);
                if verify.send(up).await.is_err() {
                    return; // downloaders gone: the run is ending
                }
            }
            Err(e) => sh.rec.err("upload", &e),
        }
    }
}

async fn download_one(sh: &Shared, up: &Uploaded) -> Result<(), ClientError> {
    let resp = sh
        .client
        .http()
        .get(sh.client.url(&format!("/api/v1/files/{}", up.id)))
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(Client::api_error(resp).await);
    }
    let mut body = resp.bytes_stream();
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    let got = hex::encode(h.finalize());
    if got != up.sha256 || n != up.size {
        return Err(ClientError::Other(format!(
            "read back {} ({n} bytes): sha {got}, expected {} ({} bytes)",
            up.id, up.sha256, up.size
        )));
    }
    Ok(())
}

async fn downloader(sh: Arc<Shared>, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Uploaded>>>) {
    loop {
        // The queue's async mutex is held only while waiting for the next item.
        let next = { queue.lock().await.recv().await };
        let Some(up) = next else { return };
        let started = Instant::now();
        sh.rec.in_flight.fetch_add(1, Ordering::Relaxed);
        let r = download_one(&sh, &up).await;
        sh.rec.in_flight.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(()) => sh.rec.ok("download", started.elapsed(), up.size),
            Err(e) => sh.rec.err("download", &e),
        }
    }
}

async fn mover(sh: Arc<Shared>, worker: usize) {
    let base = format!("loadtest/{}/m{worker}", sh.run_id);
    let (pa, pb) = (format!("{base}/a"), format!("{base}/b"));
    let mut round = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        round += 1;
        let seed = (worker as u64) << 40 | round << 1;
        let (a, b) = tokio::join!(
            upload_one(&sh, &pa, seed, 1024),
            upload_one(&sh, &pb, seed | 1, 1024)
        );
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                sh.rec.err("move", &e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let started = Instant::now();
        let (r1, r2) = tokio::join!(
            sh.client.move_file(&a.id, &pb, true),
            sh.client.move_file(&b.id, &pa, true)
        );
        let took = started.elapsed();
        let mut ok = 0;
        for r in [r1, r2] {
            match r {
                Ok(_) => {
                    ok += 1;
                    sh.rec.ok("move", took, 0);
                }
                // The other move of the pair overwrote this file first: expected.
                Err(ClientError::Api { status: 404, .. }) => sh.rec.ok("move", took, 0),
                Err(e) => sh.rec.err("move", &e),
            }
        }
        if ok == 0 {
            sh.rec
                .fail(format!("{base}: neither of two opposite moves succeeded"));
        }
    }
}

/// Runs the load and returns the report. Fails only when the server cannot be reached at all.
pub async fn run(cfg: LoadConfig) -> Result<Report, ClientError> {
    if let Err(e) = rlimit::increase_nofile_limit(65_536) {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    let client = Client::new(&cfg.url)?;
    client.health().await?;
    let start_seq = latest_seq(&client).await?;
    let total_weight = cfg.sizes.iter().map(|s| s.1).sum();
    let sh = Arc::new(Shared {
        client,
        cfg: cfg.clone(),
        rec: Recorder::default(),
        stop: AtomicBool::new(false),
        tickets: AtomicU64::new(0),
        run_id: uuid::Uuid::new_v4().simple().to_string(),
        total_weight,
    });
    let cpu_before = own_usage().await;

    // One channel per subscriber: 10,000 waiting on one shared channel would take its lock
    // at each of their events.
    let mut targets = Vec::with_capacity(cfg.subscribers);
    let mut subs = tokio::task::JoinSet::new();
    let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
    for _ in 0..cfg.subscribers {
        let (target_tx, target_rx) = tokio::sync::oneshot::channel();
        targets.push(target_tx);
        subs.spawn(subscriber(
            Arc::clone(&sh),
            start_seq,
            target_rx,
            Arc::clone(&connecting),
        ));
    }
    let probe_done = Arc::new(AtomicBool::new(false));
    let probe = match spawn_prober(Arc::clone(&sh), Arc::clone(&probe_done)) {
        Ok(p) => Some(p),
        Err(e) => {
            sh.rec
                .fail(format!("cannot start the prober's thread: {e}"));
            None
        }
    };

    // Every subscriber subscribed (or failed) before the load starts: otherwise the events
    // of the first seconds reach late subscribers through the replay, and their delivery
    // latency would measure the connection ramp.
    let ramp = Instant::now();
    while (sh.rec.settled.load(Ordering::Relaxed) as usize) < cfg.subscribers
        && ramp.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if cfg.progress && cfg.subscribers > 0 {
        eprintln!(
            "{} of {} subscribers connected in {:.1?}",
            sh.rec.connected.load(Ordering::Relaxed),
            cfg.subscribers,
            ramp.elapsed()
        );
    }
    let started = Instant::now();
    let (verify_tx, verify_rx) = mpsc::channel::<Uploaded>(10_000);
    let queue = Arc::new(tokio::sync::Mutex::new(verify_rx));
    let mut downloaders = tokio::task::JoinSet::new();
    for _ in 0..cfg.downloaders.max(1) {
        downloaders.spawn(downloader(Arc::clone(&sh), Arc::clone(&queue)));
    }
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..cfg.uploaders.max(1) {
        workers.spawn(uploader(Arc::clone(&sh), w, verify_tx.clone(), started));
    }
    drop(verify_tx);
    let mut movers = tokio::task::JoinSet::new();
    for w in 0..cfg.movers {
        movers.spawn(mover(Arc::clone(&sh), w));
    }

    // Progress, stall detection, and the duration limit.
    let mut longest_stall = Duration::ZERO;
    let mut last_completions = 0;
    let mut last_change = Instant::now();
    let mut last_print = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let c = sh.rec.completions.load(Ordering::Relaxed);
        if c != last_completions {
            last_completions = c;
            last_change = now;
        } else if sh.rec.in_flight.load(Ordering::Relaxed) > 0 {
            longest_stall = longest_stall.max(now - last_change);
        } else {
            last_change = now;
        }
        if cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            sh.stop.store(true, Ordering::Relaxed);
        }
        if cfg.progress && now - last_print >= Duration::from_secs(1) {
            last_print = now;
            let secs = started.elapsed().as_secs_f64();
            let line = format!(
                "[{secs:6.1}s] uploads {} ({:.0}/s)  downloads {}  moves {}  in flight {}  events {}  failures {}",
                sh.rec.count("upload"),
                sh.rec.count("upload") as f64 / secs,
                sh.rec.count("download"),
                sh.rec.count("move"),
                sh.rec.in_flight.load(Ordering::Relaxed),
                sh.rec.events.load(Ordering::Relaxed),
                sh.rec.failure_count(),
            );
            if tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
        }
        if workers.is_empty() && downloaders.is_empty() {
            break;
        }
        while let Some(r) = workers.try_join_next() {
            if let Err(e) = r {
                sh.rec.fail(format!("uploader task failed: {e}"));
            }
        }
        while let Some(r) = downloaders.try_join_next() {
            if let Err(e) = r {
                sh.rec.fail(format!("downloader task failed: {e}"));
            }
        }
    }
    sh.stop.store(true, Ordering::Relaxed);
    while movers.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    if cfg.progress && tty {
        eprintln!();
    }

    // Every subscriber must reach the final seq.
    let final_seq = latest_seq(&sh.client).await.unwrap_or(start_seq);
    for target in targets {
        // Err: that subscriber already ended.
        let _ = target.send(final_seq.max(1));
    }
    let mut complete = 0;
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = subs.join_next().await {
            if matches!(r, Ok(last) if last >= final_seq) {
                complete += 1;
            }
        }
    })
    .await;
    if drained.is_err() {
        sh.rec.fail(format!(
            "subscribers did not reach seq {final_seq} within 60 s"
        ));
    }
    probe_done.store(true, Ordering::Relaxed);
    if let Some(probe) = probe {
        let _ = tokio::time::timeout(Duration::from_secs(15), probe).await;
    }
    let cpu_after = own_usage().await;
    if complete < cfg.subscribers {
        sh.rec.fail(format!(
            "{} of {} subscribers did not receive every event up to seq {final_seq}",
            cfg.subscribers - complete,
            cfg.subscribers
        ));
    }
    if longest_stall > cfg.stall_limit {
        sh.rec.fail(format!(
            "no request completed for {:.2?} (limit {:.2?})",
            longest_stall, cfg.stall_limit
        ));
    }

    let secs = elapsed.as_secs_f64().max(1e-9);
    let mut kinds = BTreeMap::new();
    let mut event_latency = Latency::default();
    for (name, k) in lock(&sh.rec.kinds).iter_mut() {
        let latency = Latency::of(&mut k.samples);
        if *name == "event" {
            event_latency = latency.clone();
        }
        kinds.insert(
            (*name).to_string(),
            KindReport {
                count: k.count,
                errors: k.errors,
                per_sec: k.count as f64 / secs,
                mib_per_sec: k.bytes as f64 / secs / f64::from(1u32 << 20),
                latency,
            },
        );
    }
    let failures = lock(&sh.rec.failures).clone();
    let errors_by_status = lock(&sh.rec.errors).clone();
    Ok(Report {
        url: cfg.url.clone(),
        seconds: secs,
        uploaders: cfg.uploaders,
        downloaders: cfg.downloaders,
        movers: cfg.movers,
        kinds,
        longest_stall_seconds: longest_stall.as_secs_f64(),
        events: EventsReport {
            subscribers: cfg.subscribers,
            expected_per_subscriber: final_seq - start_seq,
            delivered: sh.rec.events.load(Ordering::Relaxed),
            subscribers_complete: complete,
            gaps: sh.rec.gaps.load(Ordering::Relaxed),
            delivery_latency: event_latency,
            connected: sh.rec.connected.load(Ordering::Relaxed),
        },
        load_tool: LoadToolReport::between(cpu_before, cpu_after, secs),
        passed: failures.is_empty() && errors_by_status.is_empty(),
        errors_by_status,
        failures,
    })
}

/// Flags of `vaultfs loadtest`; turned into a [`LoadConfig`] by [`command`].
#[derive(Debug, clap::Args)]
pub struct LoadtestArgs {
    /// Server URL
    #[arg(long, env = "VAULTFS_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Concurrent uploaders
    #[arg(long, default_value_t = 50)]
    pub uploaders: usize,
    /// Concurrent downloaders reading back every upload [default: uploaders/4, at least 1]
    #[arg(long)]
    pub downloaders: Option<usize>,
    /// Workers issuing opposite moves (a->b while b->a)
    #[arg(long, default_value_t = 4)]
    pub movers: usize,
    /// Sync subscribers checking the feed
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// How long to run, e.g. 30s (ignored with --count)
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// Run this many uploads instead of a duration
    #[arg(long)]
    pub count: Option<u64>,
    /// Weighted size mix
    #[arg(long, default_value = "4KiB:50,1MiB:45,64MiB:5")]
    pub sizes: String,
    /// Fail when no request completes for this long
    #[arg(long, default_value = "5s")]
    pub stall_limit: String,
    /// Also write the report as JSON to FILE (`-` for standard output)
    #[arg(long)]
    pub json: Option<String>,
    /// Start at most this many uploads per second in total (e.g. 100 for a feed at 100
    /// events/s with --movers 0) [default: unpaced]
    #[arg(long)]
    pub rate: Option<f64>,
    /// Probe /healthz here instead of on --url (the server's --probe-listen address)
    #[arg(long)]
    pub probe_url: Option<String>,
}

/// `vaultfs loadtest`: runs the load, prints the report; exit 1 on any failure, 2 on bad flags.
pub async fn command(args: LoadtestArgs) -> ExitCode {
    use crate::config::parse_duration;
    let parsed = (|| -> Result<LoadConfig, String> {
        Ok(LoadConfig {
            url: args.url.clone(),
            uploaders: args.uploaders.max(1),
            downloaders: args.downloaders.unwrap_or((args.uploaders / 4).max(1)),
            movers: args.movers,
            subscribers: args.subscribers,
            duration: match args.count {
                Some(_) => None,
                None => {
                    Some(parse_duration(&args.duration).map_err(|e| format!("--duration: {e}"))?)
                }
            },
            count: args.count,
            sizes: parse_sizes(&args.sizes).map_err(|e| format!("--sizes: {e}"))?,
            stall_limit: parse_duration(&args.stall_limit)
                .map_err(|e| format!("--stall-limit: {e}"))?,
            progress: true,
            rate: match args.rate {
                Some(r) if r.is_nan() || r <= 0.0 || r.is_infinite() => {
                    return Err("--rate must be a positive number".into())
                }
                r => r,
            },
            probe_url: args.probe_url.clone(),
        })
    })();
    let config = match parsed {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vaultfs loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match run(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vaultfs loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.text());
    if let Some(target) = &args.json {
        let json = match serde_json::to_string_pretty(&report) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("vaultfs loadtest: {e}");
                return ExitCode::FAILURE;
            }
        };
        if target == "-" {
            println!("{json}");
        } else if let Err(e) = tokio::fs::write(target, json).await {
            eprintln!("vaultfs loadtest: cannot write {target}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
