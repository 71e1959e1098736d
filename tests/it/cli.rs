//! The command line: `eddy check`, and the shipped example configuration.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

pub(crate) fn eddy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
}

/// `eddy check --config PATH`, run to the end.
fn check(path: &std::path::Path) -> std::process::Output {
    eddy()
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run eddy check")
}

pub(crate) fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("eddy-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("eddy.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_names_an_unknown_key_with_its_position() {
    let path = write_temp("unknown", "[pool]\nmax_idle_per_hots = 3\n");
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2:1:", path.display())), "{err}");
    assert!(err.contains("max_idle_per_hots"), "{err}");
}

#[test]
fn check_rejects_a_bad_duration() {
    let path = write_temp("duration", "[pool]\nidle_timeout = \"30 sec\"\n");
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2:16:"), "{err}");
    assert!(err.contains("pool.idle_timeout"), "names the key: {err}");
    assert!(err.contains("30 sec"), "{err}");
}

/// A forward listener reachable from other hosts with no `allow_hosts` is
/// an open proxy: `eddy check` says so (and eddy warns at start), without
/// refusing a configuration that may be what the operator means. Checked
/// without binding anything.
#[test]
fn check_warns_about_an_open_forward_proxy() {
    let path = write_temp(
        "open-proxy",
        "[[listener]]\nname = \"wide\"\nlisten = \"0.0.0.0:3128\"\n",
    );
    let out = check(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning:") && err.contains("open forward proxy") && err.contains("\"wide\""),
        "{err}"
    );
    // The shipped example binds loopback: no warning.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/eddy.toml");
    let out = eddy()
        .args(["check", "--config", example])
        .output()
        .expect("run eddy");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every mistake in a file, in one run, each at its key's position and in
/// the user's terms (no Rust type names), with a suggestion for a misspelt
/// key.
#[test]
fn check_reports_every_mistake_in_one_run() {
    let path = write_temp(
        "five-mistakes",
        "[pool]\nmax_idle_totl = 10\nidle_timeout = \"30 seconds\"\nmax_connections_per_host = \"lots\"\n\n\
         [retry]\nstale_retries = -1\n\n[drain]\nmax_bytes = \"12 furlongs\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:3128\"\n",
    );
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 5, "{err}");
    for (line, (at, says)) in lines.iter().zip([
        (":2:1:", "did you mean `max_idle_total`?"),
        (":3:16:", "\"30s\""),
        (":4:28:", "expected a whole number"),
        (":7:17:", "expected a whole number"),
        (":10:13:", "unknown unit \"furlongs\""),
    ]) {
        assert!(line.contains(at) && line.contains(says), "{line}");
    }
    for rust in ["usize", "u64", "u16", "i64"] {
        assert!(!err.contains(rust), "{err}");
    }
}

/// A value out of range is shown at its key's line, not at its table's
/// or at 1:1.
#[test]
fn range_errors_point_at_their_key() {
    for (name, text, at) in [
        (
            "range-pool",
            "[pool]\nidle_timeout = \"30s\"\nmax_connections_per_host = 0\n",
            ":3:1:",
        ),
        (
            "range-listener",
            "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:3128\"\nmax_client_connections = 0\n",
            ":4:1:",
        ),
        (
            "range-retry",
            "shutdown_grace = \"5s\"\n[retry]\nstale_retries = 1\nretry_body_buffer = \"1GiB\"\n",
            ":4:1:",
        ),
    ] {
        let path = write_temp(name, text);
        let out = check(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(at), "{name}: {err}");
    }
}

#[test]
fn check_names_unnamed_listeners_and_settings_that_do_nothing() {
    let two = write_temp(
        "two-unnamed",
        "[[listener]]\nlisten = \"127.0.0.1:3128\"\n[[listener]]\nlisten = \"127.0.0.1:3129\"\n",
    );
    let out = check(&two);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("has no `name`"), "{err}");
    let noop = write_temp(
        "noop",
        "[pool]\nmax_idle_per_host = 50\nmax_connections_per_host = 8\n\
         [[upstream]]\nmatch = \"a.test\"\n[upstream.pool]\nmax_idle_total = 5\n",
    );
    let out = check(&noop);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("max_idle_total has no effect under [upstream.pool]"),
        "{err}"
    );
    assert!(
        err.contains("max_idle_per_host (50) is above max_connections_per_host (8)"),
        "{err}"
    );
    // A file far larger than any configuration is refused before parsing.
    let big = write_temp("big", &"# padding\n".repeat(200_000));
    let out = check(&big);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("at most"), "{err}");
}

/// The committed JSON Schema is the one the configuration types generate
/// (regenerate it with `eddy schema > config/eddy.schema.json`), and the
/// example configuration points editors at it.
#[test]
fn the_committed_schema_is_the_generated_one() {
    let out = eddy().arg("schema").output().expect("run eddy");
    assert_eq!(out.status.code(), Some(0));
    let generated = String::from_utf8(out.stdout).expect("utf-8");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/eddy.schema.json"
    ))
    .expect("config/eddy.schema.json");
    assert!(
        generated == committed,
        "config/eddy.schema.json is out of date: run `cargo run -- schema > config/eddy.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&committed).expect("JSON");
    assert_eq!(schema["additionalProperties"], false);
    assert!(schema["definitions"]["Pool"]["properties"]["max_idle_total"].is_object());
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/eddy.toml"))
        .expect("example");
    assert!(example.starts_with("#:schema ./eddy.schema.json\n"));
}

/// `eddy check` reads the TLS files a configuration names, as a start
/// would: a missing `ca_file` is an error before deployment, not at start.
#[test]
fn check_reads_the_tls_files() {
    let path = write_temp(
        "missing-ca",
        "[[upstream]]\nmatch = \"a.test\"\nconnect = \"https://a.test\"\nca_file = \"/nonexistent/ca.pem\"\n",
    );
    let out = check(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

#[test]
fn check_accepts_the_example_config_and_prints_toml() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/eddy.toml");
    let out = eddy()
        .args(["check", "--config", example])
        .output()
        .expect("run eddy");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let reparsed = eddy::Config::from_toml(&printed, "printed").expect("printed TOML parses");
    let original = eddy::Config::load(example.as_ref()).expect("example parses");
    assert_eq!(reparsed, original);
}

#[test]
fn check_uses_eddy_config_from_the_environment() {
    let path = write_temp("env", "[pool]\nmax_connections_per_host = 7\n");
    let out = eddy()
        .arg("check")
        .env("EDDY_CONFIG", &path)
        .output()
        .expect("run eddy");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_connections_per_host = 7"));
}

#[test]
fn check_without_a_file_prints_the_embedded_default() {
    let out = eddy()
        .arg("check")
        .env_remove("EDDY_CONFIG")
        .output()
        .expect("run eddy");
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("listen = \"127.0.0.1:3128\""), "{printed}");
    assert!(printed.contains("listen = \"127.0.0.1:9901\""), "{printed}");
}

/// An eddy process that is killed when the test ends, failed or not. Its
/// standard error is read for panics: a task that panics inside eddy only
/// closes its socket, which many tests accept as an answer, so the process
/// must not be allowed to panic silently. Dropping it fails the test if
/// eddy printed a panic.
pub(crate) struct Spawned {
    child: std::process::Child,
    /// The configuration file it runs on (rewrite it, then SIGHUP).
    pub(crate) config_path: std::path::PathBuf,
    panics: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for Spawned {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.child
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.child
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(reader) = self.stderr.take() {
            let _ = reader.join();
        }
        let panics = self.panics.lock().map(|p| p.clone()).unwrap_or_default();
        if !panics.is_empty() && !std::thread::panicking() {
            panic!("eddy panicked: {panics:?}");
        }
    }
}

/// Starts the eddy binary on `config` and returns it with a line reader on
/// its standard output (where its logs go).
pub(crate) fn spawn_eddy(
    config: &str,
    name: &str,
    envs: &[(&str, &str)],
) -> (Spawned, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let path = write_temp(name, config);
    let mut cmd = eddy();
    cmd.arg("--config").arg(&path).env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start eddy");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take().expect("stderr");
    let panics = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = panics.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("panicked at") {
                if let Ok(mut p) = seen.lock() {
                    p.push(line);
                }
            }
        }
    });
    let spawned = Spawned {
        child,
        config_path: path,
        panics,
        stderr: Some(reader),
    };
    (spawned, rx)
}

/// Reads eddy's log (`log.format = "json"`) until it names its proxy and
/// admin addresses.
pub(crate) fn addresses(rx: &std::sync::mpsc::Receiver<String>) -> (SocketAddr, SocketAddr) {
    let (mut proxy, mut admin) = (None, None);
    while proxy.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("eddy logs its addresses");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let field = |name: &str| v[name].as_str().and_then(|a| a.parse().ok());
        match v["message"].as_str() {
            Some("listening") => proxy = field("addr"),
            Some("admin listening") => admin = field("admin_addr"),
            _ => {}
        }
    }
    (
        proxy.unwrap_or_else(|| unreachable!()),
        admin.unwrap_or_else(|| unreachable!()),
    )
}

/// Sends signal `name` (`-HUP`, `-TERM`, ...) to `pid`.
pub(crate) fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

pub(crate) fn next_line(rx: &std::sync::mpsc::Receiver<String>) -> Option<String> {
    rx.recv_timeout(std::time::Duration::from_secs(10)).ok()
}

#[test]
fn rust_log_overrides_the_configured_level() {
    let config = "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\nformat = \"json\"\n\
                  [[listener]]\nlisten = \"127.0.0.1:0\"\n";
    let (mut child, rx) = spawn_eddy(config, "rustlog", &[("RUST_LOG", "debug")]);
    let mut saw_debug = false;
    while let Some(line) = next_line(&rx) {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["level"] == "DEBUG" {
            saw_debug = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        saw_debug,
        "RUST_LOG=debug shows debug lines despite level = \"warn\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_is_honoured_without_rust_log() {
    // The control for the test above: the same file without RUST_LOG
    // prints nothing below WARN, not even the start-up lines or the
    // access log (INFO).
    let admin = crate::support::closed_port();
    let config = format!(
        "[admin]\nlisten = \"{admin}\"\n[log]\nlevel = \"warn\"\nformat = \"json\"\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\n"
    );
    let (mut child, rx) = spawn_eddy(&config, "loglevel", &[]);
    crate::support::eventually("eddy is up", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(admin).await.is_ok()
    })
    .await;
    let r = crate::support::eddy::admin_get(admin, "/healthz").await;
    assert_eq!(r.status, 200);
    let _ = child.kill();
    let _ = child.wait();
    // Until the reader thread has seen the pipe close.
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        lines.push(line);
    }
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"] == "WARN" || v["level"] == "ERROR",
            "level = \"warn\" printed {line}"
        );
    }
}
