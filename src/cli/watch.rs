//! `vaultfs watch`: prints changes as JSON lines; reconnects and resumes after the last
//! printed seq, and says so when the server no longer has the events it missed.

use std::process::ExitCode;

/// Flags of `vaultfs watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Server URL
    #[arg(long, env = "VAULTFS_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Start after this seq (replaying what was missed); without it, from now
    #[arg(long)]
    pub since: Option<i64>,
    /// Only paths under this prefix
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Bearer token (once the server requires one)
    #[arg(long, env = "VAULTFS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file instead (keeps it out of the process list)
    /// [env: VAULTFS_TOKEN_FILE]
    #[arg(long, env = "VAULTFS_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,
}

/// `vaultfs watch`: runs until Ctrl-C, a closed standard output or a refused subscription.
pub async fn run(args: WatchArgs) -> ExitCode {
    use std::io::Write;
    let options = crate::client::ClientOptions {
        token: args.token.clone(),
        read_timeout: None,
    };
    let client = match crate::client::Client::with_options(&args.server, &options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vaultfs: {e}");
            return ExitCode::from(2);
        }
    };
    let mut since = args.since;
    loop {
        let printer = |event: &serde_json::Value| {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{event}").is_ok() && out.flush().is_ok()
        };
        let end = tokio::select! {
            end = crate::client::watch(&client, since, &args.prefix, printer) => end,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        match end {
            crate::client::WatchEnd::ResyncRequired { latest } => {
                eprintln!(
                    "vaultfs: the server no longer has events after seq {since:?}; re-list, then \
                     continuing from seq {latest}"
                );
                println!(
                    "{}",
                    serde_json::json!({"kind": "resync_required", "latest_seq": latest})
                );
                since = Some(latest);
            }
            // stdout closed (e.g. piped into `head`): done.
            crate::client::WatchEnd::Stopped => return ExitCode::SUCCESS,
            crate::client::WatchEnd::Disconnected(_) => {}
            crate::client::WatchEnd::Refused(why) => {
                eprintln!("vaultfs: the server refused the subscription: {why}");
                return ExitCode::FAILURE;
            }
        }
    }
}
