//! The `vaultfs` client commands, driven as a real binary against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{data, sha256_hex, TestServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn command(server: &str, cwd: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"));
    cmd.args(args)
        .current_dir(cwd)
        .env("VAULTFS_URL", server)
        .env_remove("VAULTFS_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn vaultfs(server: &str, cwd: &Path, args: &[&str]) -> Output {
    let child = command(server, cwd, args).spawn().unwrap();
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the CLI did not finish within 120 s")
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// Every regular file under `root`, by relative path with `/`.
async fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut rd = tokio::fs::read_dir(&dir).await.unwrap();
        while let Some(e) = rd.next_entry().await.unwrap() {
            let p = e.path();
            if e.file_type().await.unwrap().is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, tokio::fs::read(&p).await.unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_of_200_files_round_trips_byte_for_byte() {
    let (_d, s) = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("build");
    for i in 0..200usize {
        let dir = src.join(format!("m{}", i % 7)).join(format!("s{}", i % 3));
        tokio::fs::create_dir_all(&dir).await.unwrap();
        // Sizes from empty to 300 KiB; one larger file.
        let len = if i == 0 {
            3 << 20
        } else {
            (i * 1537) % 300_000
        };
        tokio::fs::write(dir.join(format!("f{i}.bin")), data(len, i as u64))
            .await
            .unwrap();
    }
    let up = vaultfs(
        &s.base,
        work.path(),
        &["upload", "build", "ci/", "-j", "16", "--json"],
    )
    .await;
    assert!(up.status.success(), "{}", stderr(&up));
    let lines = json_lines(&up);
    let results: Vec<_> = lines.iter().filter(|l| l["summary"] != true).collect();
    assert_eq!(results.len(), 200);
    for r in &results {
        assert_eq!(r["op"], "upload");
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["target"].as_str().unwrap().starts_with("ci/build/m"));
        assert_eq!(r["file"]["version"], 1);
    }
    let summary = lines.last().unwrap();
    assert_eq!(
        (
            summary["summary"].as_bool(),
            summary["succeeded"].as_u64(),
            summary["failed"].as_u64()
        ),
        (Some(true), Some(200), Some(0))
    );

    let down = vaultfs(
        &s.base,
        work.path(),
        &["download", "ci/build", "back", "-j", "16", "-q"],
    )
    .await;
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(stdout(&down).lines().count(), 200, "one line per file");
    let (a, b) = (tree(&src).await, tree(&work.path().join("back")).await);
    assert_eq!(a.len(), 200);
    assert!(a == b, "downloaded tree differs from the uploaded one");
    assert!(
        stderr(&down).contains("200 succeeded, 0 failed"),
        "{}",
        stderr(&down)
    );

    // Again with --if-absent: identical files count as done and keep their version; a file
    // that differs is refused with the server's code. Each answer arrives on the first
    // attempt, although the server answers before reading the body (lingering close).
    let changed = src.join("m0/s0/f21.bin");
    tokio::fs::write(&changed, b"different").await.unwrap();
    let again = vaultfs(
        &s.base,
        work.path(),
        &["upload", "build/m0", "ci/build/", "--if-absent", "--json"],
    )
    .await;
    assert_eq!(again.status.code(), Some(1));
    let items: Vec<_> = json_lines(&again)
        .into_iter()
        .filter(|l| l["summary"] != true)
        .collect();
    assert!(items.len() > 20);
    for l in &items {
        assert_eq!(l["attempts"], 1, "{l}");
        if l["target"] == "ci/build/m0/s0/f21.bin" {
            assert_eq!(l["error"]["code"], "precondition_failed", "{l}");
        } else {
            assert_eq!(l["note"], "already present with identical content", "{l}");
            assert_eq!(l["file"]["version"], 1, "{l}");
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_download_is_reported_and_not_written() {
    let (_d, s) = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let content = data(200_000, 7);
    let meta = s.put("rel/app.bin", &content).await;
    let sha = meta["sha256"].as_str().unwrap().to_string();
    // Damage the stored blob behind the server's back.
    let blob = s.data_dir.join("blobs").join(&sha[..2]).join(&sha);
    let mut bytes = tokio::fs::read(&blob).await.unwrap();
    bytes[1000] ^= 0xff;
    let mut perm = tokio::fs::metadata(&blob).await.unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    tokio::fs::set_permissions(&blob, perm).await.unwrap();
    tokio::fs::write(&blob, &bytes).await.unwrap();

    let out = vaultfs(
        &s.base,
        work.path(),
        &["download", "rel/app.bin", "app.bin"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("checksum_mismatch"),
        "{}",
        stderr(&out)
    );
    assert!(
        !work.path().join("app.bin").exists(),
        "nothing under the final name"
    );
    assert!(
        !work.path().join("app.bin.vaultfs-part").exists(),
        "no temp file left"
    );

    // JSON mode reports the same failure as an object.
    let out = vaultfs(&s.base, work.path(), &["download", "rel/app.bin", "--json"]).await;
    let lines = json_lines(&out);
    assert_eq!(lines[0]["ok"], false);
    assert_eq!(lines[0]["error"]["code"], "checksum_mismatch");
    assert_eq!(sha256_hex(&content), sha);
    s.stop().await;
}

async fn wait_for_len(path: &Path, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(m) = tokio::fs::metadata(path).await {
            if m.len() >= at_least {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never reached {at_least} bytes",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_download_resumes_with_a_range_request() {
    let (_d, s) = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let content = data(6 << 20, 11);
    s.put("big/disk.img", &content).await;
    let part = work.path().join("disk.img.vaultfs-part");

    let mut child = command(
        &s.base,
        work.path(),
        &["download", "big/disk.img", "--limit-rate", "4MiB"],
    )
    .spawn()
    .unwrap();
    wait_for_len(&part, 1 << 20).await;
    child.kill().await.unwrap(); // SIGKILL: no chance to clean up
    let _ = child.wait().await;
    let kept = tokio::fs::metadata(&part).await.unwrap().len();
    assert!(kept > 0 && kept < content.len() as u64, "partial: {kept}");
    assert!(
        !work.path().join("disk.img").exists(),
        "nothing under the final name"
    );

    let out = vaultfs(
        &s.base,
        work.path(),
        &["download", "big/disk.img", "--resume", "--json"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let r = &json_lines(&out)[0];
    let resumed = r["resumed_from"].as_u64().expect("resumed_from");
    assert!(
        resumed >= kept - (1 << 20) && resumed > 0,
        "resumed at {resumed}, kept {kept}"
    );
    assert_eq!(
        tokio::fs::read(work.path().join("disk.img")).await.unwrap(),
        content
    );
    assert!(!part.exists());

    // A part file from other content is detected by the checksum and downloaded whole.
    let other = work.path().join("again.img.vaultfs-part");
    tokio::fs::write(&other, b"not the start of disk.img")
        .await
        .unwrap();
    let out = vaultfs(
        &s.base,
        work.path(),
        &[
            "download",
            "big/disk.img",
            "again.img",
            "--resume",
            "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(json_lines(&out)[0]["note"]
        .as_str()
        .unwrap()
        .contains("downloaded whole"));
    assert_eq!(
        tokio::fs::read(work.path().join("again.img"))
            .await
            .unwrap(),
        content
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_aborts_transfers_removes_temp_files_and_summarizes() {
    let (_d, s) = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    s.put("big/a.img", &data(4 << 20, 1)).await;
    s.put("big/b.img", &data(4 << 20, 2)).await;
    let child = command(
        &s.base,
        work.path(),
        &["download", "big/", "out", "--limit-rate", "2MiB"],
    )
    .spawn()
    .unwrap();
    wait_for_len(&work.path().join("out/a.img.vaultfs-part"), 256 << 10).await;
    let pid = child.id().unwrap().to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    let left = tree(&work.path().join("out")).await;
    assert!(
        left.is_empty(),
        "left behind: {:?}",
        left.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_pages_through_2500_entries() {
    let (_d, s) = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("many");
    tokio::fs::create_dir_all(&src).await.unwrap();
    for i in 0..2500 {
        tokio::fs::write(src.join(format!("f{i:05}.txt")), format!("{i}"))
            .await
            .unwrap();
    }
    let up = vaultfs(
        &s.base,
        work.path(),
        &["upload", "many", "/", "-j", "32", "-q"],
    )
    .await;
    assert!(up.status.success(), "{}", stderr(&up));
    s.put("many-other/x", b"x").await;

    // The server's pages hold 1000 entries: three pages.
    let out = vaultfs(&s.base, work.path(), &["ls", "-l", "many"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 2500);
    for (i, line) in lines.iter().enumerate() {
        let cols: Vec<_> = line.split_whitespace().collect();
        assert_eq!(cols.len(), 5, "{line}");
        let body = format!("{i}");
        assert_eq!(cols[0], body.len().to_string(), "size: {line}");
        assert_eq!(cols[1], "v1");
        assert!(cols[2].ends_with('Z'), "time: {line}");
        assert_eq!(cols[3], sha256_hex(body.as_bytes()));
        assert_eq!(cols[4], format!("many/f{i:05}.txt"));
    }

    // --json: one FileMeta per line; smaller pages give the same listing.
    let out = vaultfs(
        &s.base,
        work.path(),
        &["ls", "many/", "--json", "--page-size", "333"],
    )
    .await;
    let metas = json_lines(&out);
    assert_eq!(metas.len(), 2500);
    assert_eq!(metas[2499]["path"], "many/f02499.txt");

    // The root level rolls up directories.
    let out = vaultfs(&s.base, work.path(), &["ls"]).await;
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["many-other/", "many/"]
    );
    // A missing prefix is an error (exit 1), an existing file is listed alone.
    let out = vaultfs(&s.base, work.path(), &["ls", "nothing-here"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not_found"));
    let out = vaultfs(&s.base, work.path(), &["ls", "many-other/x"]).await;
    assert_eq!(stdout(&out).trim(), "many-other/x");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_rm_mv_cp_and_exit_codes() {
    let (_d, s) = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let meta = s.put("a/one.txt", b"one").await;
    s.put("a/two.txt", b"two").await;
    s.put("d/x/1", b"1").await;
    s.put("d/x/2", b"2").await;

    let out = vaultfs(&s.base, w, &["stat", "a/one.txt", "--json"]).await;
    assert!(out.status.success());
    assert_eq!(json_lines(&out)[0], meta);
    // By id too.
    let out = vaultfs(&s.base, w, &["stat", meta["id"].as_str().unwrap()]).await;
    assert!(
        stdout(&out).contains("path:         a/one.txt"),
        "{}",
        stdout(&out)
    );

    let out = vaultfs(&s.base, w, &["mv", "a/one.txt", "b/"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("moved a/one.txt -> b/one.txt"));
    let out = vaultfs(&s.base, w, &["mv", "a/two.txt", "b/one.txt"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already_exists"), "{}", stderr(&out));
    let out = vaultfs(
        &s.base,
        w,
        &["cp", "a/two.txt", "b/one.txt", "--overwrite", "--json"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["file"]["sha256"], sha256_hex(b"two"));

    // rm: a directory needs -r; a missing path fails that item only.
    let out = vaultfs(&s.base, w, &["rm", "d/x"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is_a_directory"));
    let out = vaultfs(
        &s.base,
        w,
        &["rm", "-r", "d/x", "a/two.txt", "nope", "--json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    let ok: Vec<_> = lines
        .iter()
        .filter(|l| l["ok"] == true)
        .map(|l| l["source"].as_str().unwrap())
        .collect();
    assert_eq!(ok.len(), 3, "{lines:?}");
    assert!(lines
        .iter()
        .any(|l| l["source"] == "nope" && l["error"]["code"] == "not_found"));
    let (status, _) = s.get_json("/api/v1/stat?path=d/x/1").await;
    assert_eq!(status, 404);

    // Usage errors exit 2.
    for args in [
        &["upload", "only-one"][..],
        &["upload", "a", "b", "-j", "0"],
        &["frobnicate"],
    ] {
        let out = vaultfs(&s.base, w, args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let out = vaultfs("ftp://nowhere", w, &["ls"]).await;
    assert_eq!(out.status.code(), Some(2));
    s.stop().await;
}

/// A fake server: answers each request with the next canned response, counting requests.
async fn canned_server(responses: Vec<String>) -> (String, tokio::task::JoinHandle<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        let mut served = 0;
        for response in responses {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            sock.write_all(response.as_bytes()).await.unwrap();
            sock.shutdown().await.unwrap();
            served += 1;
        }
        served
    });
    (base, handle)
}

fn http(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_and_honour_retry_after() {
    let busy = http(
        "503 Service Unavailable",
        "retry-after: 1\r\n",
        r#"{"error":{"code":"lock_timeout","message":"busy path"}}"#,
    );
    let ok = http(
        "200 OK",
        "",
        r#"{"id":"0123456789abcdef0123456789abcdef","path":"p","size":1,"sha256":"00","version":3,"content_type":"x","created_at":"t","modified_at":"t"}"#,
    );
    let work = tempfile::tempdir().unwrap();
    let (base, server) = canned_server(vec![busy.clone(), busy.clone(), ok]).await;
    let started = Instant::now();
    let out = vaultfs(&base, work.path(), &["stat", "p", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["version"], 3);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited Retry-After twice"
    );
    assert_eq!(server.await.unwrap(), 3);

    // Retries spent: the server's code and message, exit 1.
    let (base, server) = canned_server(vec![busy.clone(), busy.clone()]).await;
    let out = vaultfs(&base, work.path(), &["stat", "p", "--retries", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("lock_timeout: busy path (HTTP 503)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.await.unwrap(), 2);

    // Not retryable: one request only.
    let bad = http(
        "400 Bad Request",
        "",
        r#"{"error":{"code":"invalid_path","message":"no"}}"#,
    );
    let (base, server) = canned_server(vec![bad]).await;
    let out = vaultfs(&base, work.path(), &["stat", "p"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(server.await.unwrap(), 1);
}

/// Forwards connections to `upstream`; the first connection's response is swallowed and the
/// connection cut, as when a network drops an answer after the server acted.
async fn answer_eating_proxy(upstream: std::net::SocketAddr) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let eat = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                if eat {
                    let mut buf = vec![0u8; 4096];
                    let _ = sr.read(&mut buf).await; // the answer arrives, and is dropped
                    up.abort();
                    drop(cw);
                } else {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                }
            });
        }
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_if_absent_retry_after_a_lost_answer_makes_one_version() {
    let (_d, s) = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("artifact.tar");
    tokio::fs::write(&file, data(100_000, 3)).await.unwrap();
    let proxy = answer_eating_proxy(s.addr).await;
    let out = vaultfs(
        &proxy,
        work.path(),
        &[
            "upload",
            "artifact.tar",
            "ci/artifact.tar",
            "--if-absent",
            "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let r = &json_lines(&out)[0];
    assert!(r["attempts"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(r["note"], "already present with identical content", "{r}");
    let (_, meta) = s.get_json("/api/v1/stat?path=ci/artifact.tar").await;
    assert_eq!(meta["version"], 1, "one intended upload, one version");
    let (_, events) = s.get_json("/api/v1/events?since=0").await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walk_through_works_verbatim() {
    let (_d, s) = TestServer::start().await;
    let readme = tokio::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .await
        .unwrap();
    let section = readme.split("## Command-line client").nth(1).unwrap();
    let script = section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    tokio::fs::create_dir_all(&bin).await.unwrap();
    tokio::fs::symlink(env!("CARGO_BIN_EXE_vaultfs"), bin.join("vaultfs"))
        .await
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(work.path())
        .env("PATH", path)
        .env("VAULTFS_URL", &s.base)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("identical"));
    let (_, list) = s.get_json("/api/v1/list?prefix=").await;
    assert_eq!(
        list["entries"].as_array().unwrap().len(),
        0,
        "the walk-through cleans up"
    );
    s.stop().await;
}

// `vaultfs publish` and `vaultfs lease run` (issue 21).

/// Writes files number `range` of `len` bytes under `root` (in two subdirectories),
/// contents seeded from `seed`: (relative path, contents), sorted.
async fn write_build(
    root: &Path,
    range: std::ops::Range<usize>,
    len: usize,
    seed: u64,
) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for i in range {
        let rel = format!("{}/f{i:02}.bin", if i % 2 == 0 { "bin" } else { "doc" });
        let body = data(len, seed + i as u64);
        let path = root.join(&rel);
        tokio::fs::create_dir_all(path.parent().unwrap())
            .await
            .unwrap();
        tokio::fs::write(&path, &body).await.unwrap();
        files.push((rel, body));
    }
    files.sort();
    files
}

/// (path, sha256) of every live file under `prefix`.
async fn remote_tree(s: &TestServer, prefix: &str) -> Vec<(String, String)> {
    let (status, page) = s
        .get_json(&format!("/api/v1/list?prefix={}", common::enc(prefix)))
        .await;
    assert_eq!(status, 200, "{page}");
    let mut out: Vec<(String, String)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn expected_tree(prefix: &str, files: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = files
        .iter()
        .map(|(rel, body)| (format!("{prefix}{rel}"), sha256_hex(body)))
        .collect();
    out.sort();
    out
}

fn one_json(o: &Output) -> Value {
    let lines = json_lines(o);
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines.into_iter().next().unwrap()
}

/// publish: a tree appears all at once as one commit; a run killed halfway leaves nothing
/// visible, and the same command again reuses the commit and skips what was staged;
/// `--replace` deletes (to the trash) what the tree no longer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_atomic_resumes_after_a_kill_and_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(vaultfs::config::Config {
        trash_retention: Some(Duration::from_secs(3600)),
        ..vaultfs::config::Config::for_data_dir(dir.path())
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let prefix = "releases/latest/";

    // First build: 30 files, one commit, 30 events that each name it.
    let old = write_build(&w.join("build"), 0..30, 20_000, 0).await;
    let before = s.get_json("/api/v1/events?limit=1").await.1["next_since"]
        .as_i64()
        .unwrap();
    let out = vaultfs(&s.base, w, &["publish", "build", prefix]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let done = one_json(&out);
    assert_eq!(
        (done["op"].as_str(), done["files"].as_u64()),
        (Some("publish"), Some(30)),
        "{done}"
    );
    assert_eq!(done["already_staged"], 0);
    assert_eq!(remote_tree(&s, prefix).await, expected_tree(prefix, &old));
    let (_, page) = s
        .get_json(&format!("/api/v1/events?since={before}&limit=100"))
        .await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 30);
    assert!(events
        .iter()
        .all(|e| e["commit"] == done["commit"] && e["commit_size"] == 30));

    // Second build (files 5 to 44), larger, published with one upload at a time: frozen
    // (SIGSTOP) once a few files are staged, then SIGKILLed. Nothing of it is visible.
    tokio::fs::remove_dir_all(w.join("build")).await.unwrap();
    let new = write_build(&w.join("build"), 5..45, 400_000, 1000).await;
    let blobs_before = s.blob_count().await;
    let mut child = command(&s.base, w, &["publish", "build", prefix, "-j", "1"])
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    let staged_some = common::eventually(Duration::from_secs(60), || async {
        s.blob_count().await >= blobs_before + 3
    })
    .await;
    assert!(staged_some, "the publish staged nothing");
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(stop.success());
    assert!(
        child.try_wait().unwrap().is_none(),
        "the publish finished before it could be stopped (a larger tree is needed)"
    );
    // Requests already sent complete on the server meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let staged_at_kill = s.blob_count().await - blobs_before;
    child.kill().await.unwrap();
    let _ = child.wait().await;
    assert!(staged_at_kill < 40, "{staged_at_kill}");
    assert_eq!(
        remote_tree(&s, prefix).await,
        expected_tree(prefix, &old),
        "a killed publish left something visible"
    );

    // The same command again: the same commit, the staged files are not sent again.
    let out = vaultfs(&s.base, w, &["publish", "build", prefix, "-j", "4"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let done = one_json(&out);
    assert_eq!(done["files"], 40, "{done}");
    let reused = done["already_staged"].as_u64().unwrap();
    assert!(
        reused >= staged_at_kill as u64 && reused < 40,
        "already_staged {reused}, {staged_at_kill} staged before the kill"
    );
    // Not --replace: the old build's files the new one does not have (0 to 4) stay.
    let mut want = expected_tree(prefix, &new);
    let kept: Vec<(String, String)> = expected_tree(prefix, &old)
        .into_iter()
        .filter(|(p, _)| !want.iter().any(|(q, _)| q == p))
        .collect();
    assert_eq!(kept.len(), 5);
    want.extend(kept);
    want.sort();
    assert_eq!(remote_tree(&s, prefix).await, want);
    for (rel, body) in new.iter().take(3) {
        let (status, got) = s.get_bytes(&format!("/api/v1/fs/{prefix}{}", rel)).await;
        assert_eq!((status, &got), (200, body), "{rel}");
    }

    // --replace: two files gone from the tree, one new; the remote prefix is exactly the
    // tree, and what it no longer has (those two, the old build's 0 to 4) is in the trash.
    let gone = ["bin/f06.bin", "doc/f07.bin"];
    for g in gone {
        tokio::fs::remove_file(w.join("build").join(g))
            .await
            .unwrap();
    }
    tokio::fs::write(w.join("build/bin/extra.txt"), b"extra")
        .await
        .unwrap();
    let mut third: Vec<(String, Vec<u8>)> = new
        .iter()
        .filter(|(rel, _)| !gone.contains(&rel.as_str()))
        .cloned()
        .collect();
    third.push(("bin/extra.txt".into(), b"extra".to_vec()));
    let out = vaultfs(&s.base, w, &["publish", "build", prefix, "--replace"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(one_json(&out)["files"], 39);
    assert_eq!(remote_tree(&s, prefix).await, expected_tree(prefix, &third));
    let (_, trash) = s
        .get_json(&format!("/api/v1/trash?prefix={}", common::enc(prefix)))
        .await;
    let trashed: Vec<&str> = trash["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for g in gone
        .iter()
        .chain(&["bin/f00.bin", "doc/f01.bin", "bin/f04.bin"])
    {
        assert!(
            trashed.contains(&format!("{prefix}{g}").as_str()),
            "{g} not in the trash: {trashed:?}"
        );
    }
    s.stop().await;
}

/// POST /api/v1/leases from the test: (status, answer).
async fn take_lease(s: &TestServer, path: &str, ttl: &str) -> (u16, Value) {
    let r = s
        .client
        .post(s.url("/api/v1/leases"))
        .json(&serde_json::json!({"path": path, "ttl": ttl}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn live_leases(s: &TestServer) -> Vec<Value> {
    let (status, listed) = s.get_json("/api/v1/admin/leases").await;
    assert_eq!(status, 200, "{listed}");
    listed["leases"].as_array().unwrap().clone()
}

/// An upload from the test process: its status and error code.
async fn unfenced_upload(s: &TestServer, path: &str) -> (u16, Value) {
    let r = s.upload(path, "outsider").await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// lease run: exports the fence and lease id, renews past the ttl while COMMAND runs,
/// passes its exit status on and releases; 75 when the lease is held (`--wait 0s`) or lost;
/// `vaultfs upload` under it sends the fence, a write without it is `locked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_run_fences_renews_releases_and_exits_75() {
    let (_d, s) = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let bin = env!("CARGO_BIN_EXE_vaultfs");

    // A command that outlives the 2 s ttl: the lease is renewed, outside writes are
    // locked all along, the exit status (7) comes through, the lease is released.
    let script = r#"echo "fence=$VAULTFS_FENCE lease=$VAULTFS_LEASE"; sleep 3.5; exit 7"#;
    let child = command(
        &s.base,
        w,
        &[
            "lease", "run", "rel/", "--ttl", "2s", "--", "sh", "-c", script,
        ],
    )
    .spawn()
    .unwrap();
    let held = common::eventually(Duration::from_secs(10), || async {
        live_leases(&s).await.len() == 1
    })
    .await;
    if !held {
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "the lease was not taken: {:?}\n{}\n{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
    }
    let lease = live_leases(&s).await.remove(0);
    assert_eq!(lease["path"], "rel/");
    assert_eq!(unfenced_upload(&s, "rel/early.txt").await.0, 423);
    // Past the first ttl: still held (renewed), still locked.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let leases = live_leases(&s).await;
    assert_eq!(leases.len(), 1, "the lease lapsed while the command ran");
    assert_eq!(leases[0]["lease_id"], lease["lease_id"]);
    let (status, err) = unfenced_upload(&s, "rel/late.txt").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (423, Some("locked"))
    );
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "fence={} lease={}",
            lease["fence"],
            lease["lease_id"].as_str().unwrap()
        )
    );
    assert!(live_leases(&s).await.is_empty(), "not released");
    assert_eq!(
        unfenced_upload(&s, "rel/after.txt").await.0,
        201,
        "open again"
    );

    // `vaultfs upload` under the lease sends VAULTFS_FENCE; the same upload without it
    // (from inside the command, the variable removed) is refused as `locked`.
    tokio::fs::write(w.join("a.txt"), b"fenced").await.unwrap();
    tokio::fs::write(w.join("b.txt"), b"unfenced")
        .await
        .unwrap();
    let script = r#""$0" upload a.txt up/ --json || exit 10
env -u VAULTFS_FENCE "$0" upload b.txt up/ --json && exit 11
exit 0"#;
    let out = vaultfs(
        &s.base,
        w,
        &[
            "lease", "run", "up/", "--ttl", "5s", "--", "sh", "-c", script, bin,
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let lines = json_lines(&out);
    assert!(
        lines
            .iter()
            .any(|l| l["ok"] == true && l["target"] == "up/a.txt"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["ok"] == false && l["error"]["code"] == "locked"),
        "{lines:?}"
    );
    assert_eq!(
        s.get_bytes("/api/v1/fs/up/a.txt").await,
        (200, b"fenced".to_vec())
    );
    assert_eq!(s.get_bytes("/api/v1/fs/up/b.txt").await.0, 404);

    // Held by someone else: 75 at once with --wait 0s, and COMMAND does not run.
    let (status, other) = take_lease(&s, "held/", "30s").await;
    assert_eq!(status, 201, "{other}");
    let out = vaultfs(
        &s.base,
        w,
        &[
            "lease", "run", "held/x", "--wait", "0s", "--", "touch", "ran",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stderr(&out).contains("lease_held"), "{}", stderr(&out));
    assert!(!w.join("ran").exists(), "the command ran without the lease");
    // With --wait longer than the holder's ttl, it waits and then runs.
    let (status, _) = take_lease(&s, "brief/", "1s").await;
    assert_eq!(status, 201);
    let out = vaultfs(
        &s.base,
        w,
        &[
            "lease", "run", "brief/", "--wait", "10s", "--", "touch", "ran",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(w.join("ran").exists());

    // Lost while COMMAND runs (released behind its back): SIGTERM to COMMAND, exit 75.
    let script = r#"trap 'echo terminated; exit 0' TERM; echo "$VAULTFS_LEASE"; sleep 20 & wait"#;
    let mut child = command(
        &s.base,
        w,
        &[
            "lease", "run", "lost/", "--ttl", "1500ms", "--", "sh", "-c", script,
        ],
    )
    .spawn()
    .unwrap();
    let mut line = String::new();
    {
        use tokio::io::AsyncBufReadExt;
        let mut reader = tokio::io::BufReader::new(child.stdout.as_mut().unwrap());
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
    }
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/leases/{}", line.trim())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stdout(&out).contains("terminated"), "{}", stdout(&out));
    s.stop().await;
}
