//! `vaultfs token create|list|revoke` and `vaultfs share`.
//!
//! Token commands work on a data directory (the default; also while a server uses it, since
//! the server reloads its token table every second) or, with `--server`, through a running
//! server's admin API (an admin token is needed then).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::CommonArgs;
use crate::api::{CreatedToken, TokenInfo};
use crate::client::{Client, ClientOptions};
use crate::services::auth::Auth;
use crate::services::metadata::sqlite::SqliteMetadata;
use crate::services::metadata::MetadataStore;

/// Flags of `vaultfs token`: the subcommand and where the token table is (a data directory, or a
/// server's admin API).
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub(crate) command: TokenCommand,
    /// Data directory whose token table to change [env: VAULTFS_DATA_DIR]
    #[arg(
        long,
        env = "VAULTFS_DATA_DIR",
        default_value = "./vaultfs-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Work through this running server instead (needs --token with the admin scope)
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Admin token for --server [env: VAULTFS_TOKEN]
    #[arg(long, env = "VAULTFS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file instead (keeps it out of the process list)
    /// [env: VAULTFS_TOKEN_FILE]
    #[arg(
        long,
        env = "VAULTFS_TOKEN_FILE",
        conflicts_with = "token",
        global = true
    )]
    pub token_file: Option<PathBuf>,
    /// Print JSON
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token; it is printed once, on standard output, and stored only as a hash.
    Create {
        /// Scopes, comma-separated: read, write, admin (admin includes read and write)
        #[arg(long, required = true)]
        scope: String,
        /// Limit the token to paths under this prefix, e.g. ci/
        #[arg(long, default_value = "")]
        prefix: String,
        /// A name to recognise it by
        #[arg(long, default_value = "")]
        label: String,
        /// Expire after this long, e.g. 90d (default: never)
        #[arg(long)]
        expires: Option<String>,
        /// Also print the token's S3 access key id and secret access key
        #[arg(long)]
        s3: bool,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id; share links it made stop working too.
    Revoke { id: String },
    /// Print a new random token without storing it: for VAULTFS_BOOTSTRAP_TOKEN in a
    /// deployment's Secret (the server installs it as an admin token at start).
    Generate,
}

enum Backend {
    Local(Auth, Arc<dyn MetadataStore>),
    Remote(Client),
}

async fn backend(args: &TokenArgs) -> Result<Backend, String> {
    if let Some(server) = &args.server {
        let options = ClientOptions {
            token: args.token.clone(),
            read_timeout: Some(Duration::from_secs(60)),
        };
        return Client::with_options(server, &options)
            .map(Backend::Remote)
            .map_err(|e| e.to_string());
    }
    tokio::fs::create_dir_all(&args.data_dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
    let meta: Arc<dyn MetadataStore> = Arc::new(
        SqliteMetadata::open(&args.data_dir, Duration::from_secs(10), 1)
            .await
            .map_err(|e| format!("{}: {e}", args.data_dir.display()))?,
    );
    // The server's own secret (environment, key file, or the data directory's key file), so
    // that `--s3` key pairs are the ones the server derives.
    let env_secret = std::env::var("VAULTFS_SECRET_KEY").ok();
    let key_file = std::env::var_os("VAULTFS_SECRET_KEY_FILE").map(std::path::PathBuf::from);
    let secret = crate::services::secret::ServerSecret::load(
        env_secret.as_deref().filter(|s| !s.trim().is_empty()),
        key_file.as_deref(),
        &args.data_dir,
    )
    .await
    .map_err(|e| e.to_string())?;
    let auth = Auth::open(Arc::clone(&meta), secret)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Backend::Local(auth, meta))
}

async fn remote(client: &Client, req: reqwest::RequestBuilder) -> Result<Value, String> {
    let _ = client;
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if resp.status() == reqwest::StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
    Client::parse::<Value>(resp)
        .await
        .map_err(|e| e.to_string())
}

async fn token_with_backend(args: TokenArgs) -> ExitCode {
    let backend = match backend(&args).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("vaultfs token: {e}");
            return ExitCode::from(2);
        }
    };
    let result = run_token(&args, &backend).await;
    if let Backend::Local(_, meta) = &backend {
        meta.close().await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vaultfs token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `vaultfs token`: creates, lists or revokes tokens in the data directory or through `--server`,
/// or generates one offline; exit 1 on failure.
pub async fn token(args: TokenArgs) -> ExitCode {
    if matches!(args.command, TokenCommand::Generate) {
        return match Auth::generate() {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vaultfs token: {e}");
                ExitCode::FAILURE
            }
        };
    }
    token_with_backend(args).await
}

async fn run_token(args: &TokenArgs, backend: &Backend) -> Result<(), String> {
    match &args.command {
        TokenCommand::Create {
            scope,
            prefix,
            label,
            expires,
            s3,
        } => {
            let mut s3_keys = None;
            let created: CreatedToken = match backend {
                Backend::Local(auth, _) => {
                    let expires_in = expires
                        .as_deref()
                        .map(crate::config::parse_duration)
                        .transpose()
                        .map_err(|e| format!("--expires: {e}"))?;
                    let created = auth
                        .create(label, scope, prefix, expires_in)
                        .await
                        .map_err(|e| e.to_string())?;
                    if *s3 {
                        s3_keys = Some(crate::handlers::s3::auth::keys_for(auth, &created.info.id));
                    }
                    created
                }
                Backend::Remote(c) => {
                    let body = json!({"label": label, "scopes": scope, "prefix": prefix,
                        "expires_in": expires, "s3": s3});
                    let v =
                        remote(c, c.http().post(c.url("/api/v1/admin/tokens")).json(&body)).await?;
                    if *s3 {
                        s3_keys = serde_json::from_value(v["s3"].clone()).ok();
                    }
                    serde_json::from_value(v).map_err(|e| e.to_string())?
                }
            };
            if args.json {
                let mut out = serde_json::to_value(&created).unwrap_or_default();
                if let Some(k) = &s3_keys {
                    out["s3"] = serde_json::to_value(k).unwrap_or_default();
                }
                println!("{out}");
            } else {
                println!("{}", created.token);
                if let Some(k) = &s3_keys {
                    println!("AWS_ACCESS_KEY_ID={}", k.access_key_id);
                    println!("AWS_SECRET_ACCESS_KEY={}", k.secret_access_key);
                }
                eprintln!(
                    "created token {} (scopes {}, prefix {:?}{}); it is shown only this once",
                    created.info.id,
                    created.info.scopes,
                    created.info.prefix,
                    created
                        .info
                        .expires_at
                        .as_deref()
                        .map(|e| format!(", expires {e}"))
                        .unwrap_or_default()
                );
            }
        }
        TokenCommand::List => {
            let tokens: Vec<TokenInfo> = match backend {
                Backend::Local(auth, _) => auth.list().await.map_err(|e| e.to_string())?,
                Backend::Remote(c) => {
                    let v = remote(c, c.http().get(c.url("/api/v1/admin/tokens"))).await?;
                    serde_json::from_value(v["tokens"].clone()).map_err(|e| e.to_string())?
                }
            };
            if args.json {
                for t in &tokens {
                    println!("{}", serde_json::to_string(t).unwrap_or_default());
                }
            } else {
                println!(
                    "{:<12}  {:<16}  {:<20}  {:<8}  {:<24}  LABEL",
                    "ID", "SCOPES", "PREFIX", "STATUS", "CREATED"
                );
                for t in &tokens {
                    let status = if t.revoked_at.is_some() {
                        "revoked"
                    } else if t.active {
                        "active"
                    } else {
                        "expired"
                    };
                    let prefix = if t.prefix.is_empty() { "*" } else { &t.prefix };
                    println!(
                        "{:<12}  {:<16}  {:<20}  {:<8}  {:<24}  {}",
                        t.id, t.scopes, prefix, status, t.created_at, t.label
                    );
                }
            }
        }
        TokenCommand::Revoke { id } => {
            match backend {
                Backend::Local(auth, _) => auth.revoke(id).await.map_err(|e| e.to_string())?,
                Backend::Remote(c) => {
                    let url = c.url(&format!(
                        "/api/v1/admin/tokens/{}",
                        crate::api::encode_path(id)
                    ));
                    remote(c, c.http().delete(url)).await?;
                }
            }
            if !args.json {
                eprintln!("revoked token {id}");
            }
        }
        TokenCommand::Generate => {}
    }
    Ok(())
}

/// Flags of `vaultfs share`.
#[derive(Debug, clap::Args)]
pub struct ShareArgs {
    /// Remote path of the file to share
    pub path: String,
    /// How long the link works, e.g. 30m, 1h, 7d (at most 7d)
    #[arg(long, default_value = "1h")]
    pub expires: String,
    /// Server, token, retries and output options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Prints a link that downloads PATH without a token until it expires.
pub async fn share(args: ShareArgs) -> ExitCode {
    let client = match args.common.client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vaultfs share: {e}");
            return ExitCode::from(2);
        }
    };
    let body = json!({"path": args.path, "expires_in": args.expires});
    let req = client.http().post(client.url("/api/v1/share")).json(&body);
    match remote(&client, req).await {
        Ok(v) => {
            let url = client.url(v["link"].as_str().unwrap_or_default());
            if args.common.json {
                println!(
                    "{}",
                    json!({"url": url, "path": v["path"], "expires_at": v["expires_at"]})
                );
            } else {
                println!("{url}");
                eprintln!("expires {}", v["expires_at"].as_str().unwrap_or("?"));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vaultfs share: {e}");
            ExitCode::FAILURE
        }
    }
}
