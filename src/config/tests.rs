//! Unit tests of the configuration: defaults, precedence, validation, sizes and durations.

use super::*;

fn env_of(pairs: &[(&str, &str)]) -> Overrides {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Overrides::from_env(&move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
}

#[test]
fn defaults_are_zero_config() {
    let c = resolve(None, &Overrides::default(), &Overrides::default());
    let c = c.map_err(|e| e.to_string());
    assert_eq!(c, Ok(Config::default()));
    assert_eq!(Config::default().listen.to_string(), "127.0.0.1:8080");
}

#[test]
fn precedence_file_env_flags() {
    let path = Path::new("vaultfs.toml");
    let file = Overrides::from_toml(
        "listen = \"127.0.0.1:9000\"\ndata_dir = \"/file\"\nmax_upload_size = 1024\nlock_timeout = \"3s\"\n",
        path,
    )
    .map_err(|e| e.to_string());
    let file = file.unwrap_or_else(|e| panic!("{e}"));
    let env = env_of(&[("VAULTFS_DATA_DIR", "/env"), ("VAULTFS_LOCK_TIMEOUT", "4s")]);
    let flags = Overrides {
        lock_timeout: Some("5s".into()),
        ..Overrides::default()
    };
    let c = resolve(Some((path, file)), &env, &flags).map_err(|e| e.to_string());
    let c = c.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(c.data_dir, PathBuf::from("/env"));
    assert_eq!(c.max_upload_size, 1024);
    assert_eq!(c.lock_timeout, Duration::from_secs(5));
}

#[test]
fn invalid_values_name_the_setting() {
    let env = env_of(&[("VAULTFS_LISTEN", "not-an-address")]);
    let err = resolve(None, &env, &Overrides::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("`listen`") && err.contains("VAULTFS_"),
        "{err}"
    );

    let flags = Overrides {
        max_upload_size: Some(SizeValue::Text("12 parsecs".into())),
        ..Overrides::default()
    };
    let err = resolve(None, &Overrides::default(), &flags)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("`max_upload_size`") && err.contains("command line"),
        "{err}"
    );

    let bad_file = Overrides::from_toml("colour = \"blue\"", Path::new("x.toml"));
    assert!(bad_file.is_err());
}

#[test]
fn operations_settings() {
    let env = env_of(&[
        ("VAULTFS_SHUTDOWN_DRAIN_DELAY", "0"),
        ("VAULTFS_HEADER_READ_TIMEOUT", "2s"),
        ("VAULTFS_MAX_QUEUED_UPLOADS", "0"),
        ("VAULTFS_MAX_CONNECTIONS", "500"),
        ("VAULTFS_LIVENESS_WINDOW", "2m"),
    ]);
    let c = resolve(None, &env, &Overrides::default()).map_err(|e| e.to_string());
    let c = c.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.shutdown_drain_delay, Duration::ZERO);
    assert_eq!(c.header_read_timeout, Duration::from_secs(2));
    assert_eq!((c.max_queued_uploads, c.max_connections), (0, 500));
    assert_eq!(c.liveness_window, Duration::from_secs(120));
    for (k, v) in [
        ("VAULTFS_MAX_CONNECTIONS", "0"),
        ("VAULTFS_SHUTDOWN_GRACE", "0"),
        ("VAULTFS_BODY_IDLE_TIMEOUT", "later"),
    ] {
        let err = resolve(None, &env_of(&[(k, v)]), &Overrides::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let setting = k.trim_start_matches("VAULTFS_").to_ascii_lowercase();
        assert!(err.contains(&format!("`{setting}`")), "{k}={v}: {err}");
    }
}

#[test]
fn retention_settings() {
    let path = Path::new("vaultfs.toml");
    let text = "versions_keep = \"all\"\ntrash_retention = \"1d\"\n\
                [[retention]]\nprefix = \"ci/\"\nversions_keep = 0\ntrash_retention = \"1h\"\n\
                [[retention]]\nprefix = \"ci/keep/\"\nversions_keep = 3\n";
    let file = Overrides::from_toml(text, path).map_err(|e| e.to_string());
    let file = file.unwrap_or_else(|e| panic!("{e}"));
    let c = resolve(
        Some((path, file)),
        &Overrides::default(),
        &Overrides::default(),
    );
    let c = c
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let p = c.retention_policy();
    assert_eq!(p.versions_keep_for("x"), VersionsKeep::All);
    assert_eq!(p.versions_keep_for("ci/a"), VersionsKeep::Newest(0));
    assert_eq!(p.versions_keep_for("ci/keep/a"), VersionsKeep::Newest(3));
    assert_eq!(p.trash_retention_for("x"), Some(86_400_000));
    assert_eq!(p.trash_retention_for("ci/a"), Some(3_600_000));
    // The longest prefix wins; what it leaves out falls back to the global setting.
    assert_eq!(p.trash_retention_for("ci/keep/a"), Some(86_400_000));
    let d = Config::default();
    assert_eq!(
        (d.versions_keep, d.trash_retention, d.allow_permanent_delete),
        (
            VersionsKeep::Newest(10),
            Some(Duration::from_secs(604_800)),
            false
        )
    );
    let env = env_of(&[
        ("VAULTFS_TRASH_RETENTION", "off"),
        ("VAULTFS_VERSIONS_KEEP", "x"),
    ]);
    assert!(resolve(None, &env, &Overrides::default()).is_err());
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("16GiB"), Ok(16 << 30));
    assert_eq!(parse_size("10 MB"), Ok(10_000_000));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("-1").is_err());
    assert!(parse_size("99999999999999999999").is_err());
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("0s").is_err());
    assert!(parse_duration("soon").is_err());
    assert!(
        parse_duration("999999999999999999d").is_err(),
        "overflow is refused"
    );
}
