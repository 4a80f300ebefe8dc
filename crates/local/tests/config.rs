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
    assert_eq!(c.services[0].green[0].as_str(), "http://127.0.0.1:9003");

    let missing = ProxyConfig::from_file(&dir.join("nope.toml")).unwrap_err();
    assert!(
        missing.to_string().contains("cannot read the proxy config"),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_error_far_along_a_long_line_is_shown_with_an_excerpt_not_a_panic() {
    // The caret was once padded with a format width, which panics past
    // column 65535.
    let pad = " ".repeat(70_000);
    let text = format!(
        "[blue]\nupstreams = [\"http://127.0.0.1:9001\"]\n[green]\nupstreams = [\"http://127.0.0.1:9003\"]\n{pad}timeout = \"1s\"\n"
    );
    let e = ProxyConfig::from_toml_str(&text, "long.toml").unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.starts_with("long.toml:5:70001: unknown key `timeout`"),
        "{}",
        &shown[..200.min(shown.len())]
    );
    let lines: Vec<&str> = shown.lines().collect();
    let (excerpt, caret) = (lines[lines.len() - 2], lines[lines.len() - 1]);
    assert!(
        excerpt.len() < 120 && excerpt.contains("…") && excerpt.contains("timeout"),
        "{excerpt}"
    );
    // The caret sits under the `t` of `timeout`.
    let at = caret.chars().count() - 1;
    assert_eq!(excerpt.chars().nth(at), Some('t'), "{excerpt}\n{caret}");
}

#[test]
fn an_upstream_port_out_of_range_is_refused_not_sent_to_port_80() {
    for (port, ok) in [
        ("99999", false),
        ("0", false),
        ("65536", false),
        ("65535", true),
        ("9001", true),
    ] {
        let text = format!(
            "[blue]\nupstreams = [\"http://127.0.0.1:{port}\"]\n[green]\nupstreams = [\"http://127.0.0.1:9003\"]\n"
        );
        match ProxyConfig::from_toml_str(&text, "p.toml") {
            Ok(_) => assert!(ok, "port {port} accepted"),
            Err(e) => {
                assert!(!ok, "port {port}: {e}");
                let shown = e.to_string();
                assert!(
                    shown.contains(&format!("port `{port}` is not a port (1 to 65535)")),
                    "{shown}"
                );
                assert!(shown.starts_with("p.toml:2:"), "{shown}");
            }
        }
    }
    // IPv6 literals keep their colons.
    ProxyConfig::from_toml_str(
        "[blue]\nupstreams = [\"http://[::1]:9001\"]\n[green]\nupstreams = [\"http://[::1]\"]\n",
        "p.toml",
    )
    .unwrap();
}
