//! SPEC section 1: `eddy check`, and the shipped example configuration.

use std::process::Command;

fn eddy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
}

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("eddy-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("eddy.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_names_an_unknown_key_with_its_position() {
    let path = write_temp("unknown", "[pool]\nmax_idle_per_hots = 3\n");
    let out = eddy()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run eddy");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2:1:", path.display())), "{err}");
    assert!(err.contains("max_idle_per_hots"), "{err}");
}

#[test]
fn check_rejects_a_bad_duration() {
    let path = write_temp("duration", "[pool]\nidle_timeout = \"30 sec\"\n");
    let out = eddy()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run eddy");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2:16:"), "{err}");
    assert!(err.contains("30 sec"), "{err}");
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
