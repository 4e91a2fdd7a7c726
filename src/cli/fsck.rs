//! `vaultfs fsck`: the offline check of a stopped server's data directory, or the online
//! check through a running server's admin API (`--server`).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::api::FsckReport;
use crate::client::{Client, ClientOptions};

/// Flags of `vaultfs fsck`.
#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    /// Data directory [default: ./vaultfs-data; env VAULTFS_DATA_DIR]
    #[arg(long, env = "VAULTFS_DATA_DIR", default_value = "./vaultfs-data")]
    pub data_dir: PathBuf,
    /// Remove orphan blobs and leftover temp files (damaged files are only reported)
    #[arg(long)]
    pub repair: bool,
    /// Check through this running server (online) instead of a stopped --data-dir
    #[arg(long)]
    pub server: Option<String>,
    /// Bearer token for --server (needs the admin scope) [env: VAULTFS_TOKEN]
    #[arg(long, env = "VAULTFS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file instead (keeps it out of the process list)
    /// [env: VAULTFS_TOKEN_FILE]
    #[arg(long, env = "VAULTFS_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

async fn fsck_online(
    server: &str,
    token: Option<String>,
    repair: bool,
) -> Result<FsckReport, String> {
    // Hashing every blob takes as long as it takes: no read timeout.
    let options = ClientOptions {
        token,
        read_timeout: None,
    };
    let client = Client::with_options(server, &options).map_err(|e| e.to_string())?;
    let url = client.url(&format!("/api/v1/admin/fsck?repair={repair}"));
    let resp = client
        .http()
        .post(url)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Client::parse(resp).await.map_err(|e| e.to_string())
}

/// `vaultfs fsck`: prints the report (or JSON); exit 0 clean, 1 damaged or unrepaired, 2 when
/// the check could not run.
pub async fn run(args: FsckArgs) -> ExitCode {
    let result = match &args.server {
        Some(server) => fsck_online(server, args.token.clone(), args.repair).await,
        None => crate::services::fsck::run(&args.data_dir, args.repair)
            .await
            .map_err(|e| e.to_string()),
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vaultfs fsck: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("vaultfs fsck: {e}"),
        }
    } else {
        for d in &report.damaged {
            println!("DAMAGED {}  (sha256 {}): {}", d.path, d.sha256, d.problem);
        }
        for p in &report.metadata_problems {
            println!("INCONSISTENT {} {}: {}", p.kind, p.path, p.detail);
        }
        let action = if report.repaired { "removed" } else { "found" };
        let temp = if report.online {
            "temp files not checked online".to_string()
        } else {
            format!("{} temp files {action}", report.temp_files)
        };
        println!(
            "{} files, {} blobs checked ({} bytes hashed), {} damaged, {} events checked \
             (latest seq {}), {} metadata problems, {} orphan blobs {action}, {temp}",
            report.files,
            report.blobs_checked,
            report.bytes_checked,
            report.damaged.len(),
            report.events,
            report.latest_seq,
            report.metadata_problems.len(),
            report.orphan_blobs.len(),
        );
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
