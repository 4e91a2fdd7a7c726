//! The deployment files agree with the server: probes and scrape paths are real endpoints
//! that answer, ports match the default listen port, the data volume is where the server
//! writes, and the kubelet waits longer than the server's own shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Reading two small files from the checkout; nothing else runs on this test's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use common::TestServer;
use vaultfs::config::{parse_duration, Config};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy_file(rel: &str) -> String {
    std::fs::read_to_string(format!("{}/deploy/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn docs(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&deploy_file(rel)).unwrap()
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn env_of(container: &Yaml, name: &str) -> Option<String> {
    container["env"]
        .as_vec()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

/// A probe's port: a number, or the name of a container port.
fn resolve_port(container: &Yaml, port: &Yaml) -> i64 {
    if let Some(n) = port.as_i64() {
        return n;
    }
    let name = port.as_str().expect("port is a number or a name");
    container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

#[tokio::test]
async fn manifests_point_at_real_endpoints_and_the_default_port() {
    let default_port = i64::from(Config::default().listen.port());
    let k8s = docs("k8s/vaultfs.yaml");
    let sts = kind(&k8s, "StatefulSet");
    assert_eq!(
        sts["spec"]["replicas"].as_i64(),
        Some(1),
        "single replica on SQLite"
    );
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // The server listens where the manifest says, on the default port.
    let listen = env_of(container, "VAULTFS_LISTEN").unwrap();
    let listen: std::net::SocketAddr = listen.parse().unwrap();
    assert_eq!(i64::from(listen.port()), default_port);
    assert!(container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .any(|p| p["containerPort"].as_i64() == Some(default_port)));

    // The server as the manifest runs it: exposed address, first token from the Secret.
    let secret_ref = &container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("VAULTFS_BOOTSTRAP_TOKEN"))
        .expect("the bootstrap token comes from a Secret")["valueFrom"]["secretKeyRef"];
    let secret = (
        secret_ref["name"].as_str().unwrap(),
        secret_ref["key"].as_str().unwrap(),
    );
    let bootstrap = vaultfs::services::auth::Auth::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path());
    config.listen = listen;
    config.bootstrap_token = Some(bootstrap.clone());
    let s = TestServer::start_with(config).await;
    let mut probed = Vec::new();
    for (probe, expect_path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &container[probe]["httpGet"];
        let path = get["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{probe} has no path"));
        assert_eq!(path, expect_path, "{probe}");
        assert_eq!(
            resolve_port(container, &get["port"]),
            default_port,
            "{probe}"
        );
        // The kubelet sends no token.
        let (status, body) = s.get_json(path).await;
        assert_eq!(status, 200, "{probe} {path}: {body}");
        probed.push(path);
    }
    assert_eq!(s.get_json("/api/v1/list").await.0, 401, "closed by default");

    // Prometheus scraping: the ServiceMonitor names a real text endpoint and sends the token
    // from the same Secret (annotations cannot carry one).
    let svc = kind(&k8s, "Service");
    for meta in [&svc["metadata"], &sts["spec"]["template"]["metadata"]] {
        assert!(meta["annotations"]["prometheus.io/scrape"].is_badvalue());
    }
    // The Service routes to the container's port.
    let target = &svc["spec"]["ports"][0]["targetPort"];
    assert_eq!(resolve_port(container, target), default_port);
    let monitor = kind(&docs("k8s/servicemonitor.yaml"), "ServiceMonitor").clone();
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    let credentials = &endpoint["authorization"]["credentials"];
    assert_eq!(endpoint["authorization"]["type"].as_str(), Some("Bearer"));
    assert_eq!(
        (credentials["name"].as_str(), credentials["key"].as_str()),
        (Some(secret.0), Some(secret.1))
    );
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .client
        .get(s.url("/metrics"))
        .bearer_auth(&bootstrap)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("# TYPE vaultfs_"));
    assert_eq!(
        endpoint["port"].as_str(),
        svc["spec"]["ports"][0]["name"].as_str()
    );

    // Data goes to the persistent volume.
    let data_dir = env_of(container, "VAULTFS_DATA_DIR").unwrap();
    let mount = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(data_dir.as_str()))
        .expect("the data dir is a volume mount");
    let claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].as_str();
    assert_eq!(
        mount["name"].as_str(),
        claim,
        "mounted from the PVC template"
    );

    // Requests are set; the kubelet waits longer than drain + grace.
    assert!(!container["resources"]["requests"]["cpu"].is_badvalue());
    assert!(!container["resources"]["requests"]["memory"].is_badvalue());
    let drain =
        parse_duration(&env_of(container, "VAULTFS_SHUTDOWN_DRAIN_DELAY").unwrap()).unwrap();
    let grace = parse_duration(&env_of(container, "VAULTFS_SHUTDOWN_GRACE").unwrap()).unwrap();
    let kubelet = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        (kubelet as u64) > (drain + grace).as_secs(),
        "terminationGracePeriodSeconds {kubelet} must exceed drain + grace"
    );
    // Non-root.
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    s.stop().await;
    assert_eq!(probed.len(), 3);
}

#[test]
fn the_dockerfile_runs_non_root_on_the_default_port_with_a_data_volume() {
    let df = deploy_file("Dockerfile");
    let port = Config::default().listen.port();
    assert!(df.contains(&format!("EXPOSE {port}")));
    assert!(df.contains(&format!("VAULTFS_LISTEN=0.0.0.0:{port}")));
    assert!(df.contains("VAULTFS_DATA_DIR=/data") && df.contains("VOLUME [\"/data\"]"));
    let user = df
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "runs as {user}"
    );
    assert!(df.matches("FROM ").count() >= 2, "multi-stage");
    // Everything the build copies exists.
    for line in df
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<_> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            let p = format!("{}/{src}", env!("CARGO_MANIFEST_DIR"));
            assert!(std::path::Path::new(&p).exists(), "{line}: {src} missing");
        }
    }
}
