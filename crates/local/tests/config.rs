//! Reading proxy config files: errors name file, line and column.

use cutover_local::ProxyConfig;

#[test]
fn config_files_report_where_they_are_wrong() {
    let dir = std::env::temp_dir().join(format!("cutover-local-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:8080\"\n[blue]\nupstreams = [\"http://127.0.0.1:9001\"]\n[green]\nupstreams = [\"http://127.0.0.1:9003\"]\ntimeout = \"1s\"\n",
    )
    .unwrap();
    let e = ProxyConfig::from_file(&path).unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("{}:6:1: unknown key `timeout`", path.display())),
        "{shown}"
    );
    assert!(
        shown.contains("expected `upstreams`"),
        "says what is expected: {shown}"
    );

    std::fs::write(&path, "[blue]\nupstreams = [\"http://127.0.0.1:9001\"]\n[green]\nupstreams = [\"http://127.0.0.1:9003\"]\n").unwrap();
    let c = ProxyConfig::from_file(&path).unwrap();
    assert_eq!(c.green[0].as_str(), "http://127.0.0.1:9003");

    let missing = ProxyConfig::from_file(&dir.join("nope.toml")).unwrap_err();
    assert!(
        missing.to_string().contains("cannot read the proxy config"),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
