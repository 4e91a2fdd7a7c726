//! The deployment files agree with the server: probes and scrape paths are real endpoints
//! that answer, ports match the default listen port, the data volume is where the server
//! writes, and the kubelet waits longer than the server's own shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Reading two small files from the checkout; nothing else runs on this test's runtime.
#![allow(clippy::disallowed_methods)]

use crate::common;

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
    // The share-link secret too comes from a Secret, not from the manifest.
    let key = container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("VAULTFS_SECRET_KEY"))
        .expect("the server secret comes from a Secret");
    assert!(key["value"].is_badvalue());
    assert_eq!(
        key["valueFrom"]["secretKeyRef"]["name"].as_str(),
        Some(secret.0)
    );
    let bootstrap = vaultfs::services::auth::Auth::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The probes have a listener of their own (issue 15: never behind the connection cap).
    let probe_listen: std::net::SocketAddr = env_of(container, "VAULTFS_PROBE_LISTEN")
        .expect("the probes have their own listener")
        .parse()
        .unwrap();
    assert_ne!(probe_listen.port(), listen.port());
    let probe_port = i64::from(probe_listen.port());
    let mut config = Config::for_data_dir(dir.path());
    config.listen = listen;
    config.probe_listen = Some(probe_listen);
    config.bootstrap_token = Some(bootstrap.clone());
    let (s, probe_addr) = TestServer::start_with_probes(config).await;
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
            probe_port,
            "{probe} goes to the probe listener"
        );
        // The kubelet sends no token; the probe answers on the probe listener, and on the
        // API listener too.
        let r = s
            .client
            .get(format!("http://{probe_addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{probe} {path} on the probe listener");
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

/// The multi-replica manifest: several replicas, backends and credentials from Secrets, the
/// same probes and port, an emptyDir for staging only, shutdown inside the kubelet's wait; and
/// a server configured the way it is starts with the variables it sets.
#[tokio::test]
async fn the_replica_manifest_runs_stateless_replicas_on_shared_backends() {
    let default_port = i64::from(Config::default().listen.port());
    let k8s = docs("k8s/vaultfs-replicas.yaml");
    let deployment = kind(&k8s, "Deployment");
    assert!(deployment["spec"]["replicas"].as_i64().unwrap() > 1);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let secret_of = |name: &str| -> (String, String) {
        let e = container["env"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{name} is set"));
        assert!(
            e["value"].is_badvalue(),
            "{name} must come from a Secret, not the manifest"
        );
        let r = &e["valueFrom"]["secretKeyRef"];
        (
            r["name"].as_str().unwrap().to_string(),
            r["key"].as_str().unwrap().to_string(),
        )
    };
    for name in [
        "VAULTFS_METADATA_URL",
        "VAULTFS_BLOB_STORE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "VAULTFS_BOOTSTRAP_TOKEN",
        "VAULTFS_SECRET_KEY",
    ] {
        secret_of(name);
    }
    // One secret for every replica: share links signed by one verify on all.
    assert_eq!(
        secret_of("VAULTFS_SECRET_KEY").0,
        secret_of("VAULTFS_BOOTSTRAP_TOKEN").0
    );
    let listen: std::net::SocketAddr = env_of(container, "VAULTFS_LISTEN")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(i64::from(listen.port()), default_port);
    let probe_listen: std::net::SocketAddr = env_of(container, "VAULTFS_PROBE_LISTEN")
        .expect("the probes have their own listener")
        .parse()
        .unwrap();
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"].as_str(), Some(path));
        assert_eq!(
            resolve_port(container, &container[probe]["httpGet"]["port"]),
            i64::from(probe_listen.port())
        );
    }
    // The data dir only stages uploads: an emptyDir, not a claim per replica.
    let data_dir = env_of(container, "VAULTFS_DATA_DIR").unwrap();
    let mount = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(data_dir.as_str()))
        .expect("the data dir is mounted");
    let volume = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("its volume");
    assert!(!volume["emptyDir"].is_badvalue());
    let drain =
        parse_duration(&env_of(container, "VAULTFS_SHUTDOWN_DRAIN_DELAY").unwrap()).unwrap();
    let grace = parse_duration(&env_of(container, "VAULTFS_SHUTDOWN_GRACE").unwrap()).unwrap();
    assert!(
        pod["terminationGracePeriodSeconds"].as_i64().unwrap() as u64 > (drain + grace).as_secs()
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let svc = kind(&k8s, "Service");
    assert_eq!(
        resolve_port(container, &svc["spec"]["ports"][0]["targetPort"]),
        default_port
    );
    // The variables the manifest sets are ones the server reads.
    let env = |k: &str| match k {
        "VAULTFS_METADATA_URL" => Some("postgres://u:p@db:5432/v".to_string()),
        "VAULTFS_BLOB_STORE" => Some("s3://bucket?region=eu-west-1".to_string()),
        other => env_of(container, other),
    };
    let o = vaultfs::config::Overrides::from_env(&env);
    let c = vaultfs::config::resolve(None, &o, &vaultfs::config::Overrides::default()).unwrap();
    assert_eq!(c.metadata_url.as_deref(), Some("postgres://u:p@db:5432/v"));
    assert_eq!(
        c.blob_store.as_deref(),
        Some("s3://bucket?region=eu-west-1")
    );
    assert_eq!(c.data_dir, std::path::PathBuf::from(data_dir));
    assert_eq!(c.probe_listen, Some(probe_listen));
}
