//! A real browser for tests of pages Warden serves: Debian's `chromium`, headless, no
//! npm. [`Chromium::dump_dom`] gives the DOM after the page's scripts ran (for a
//! virtual-time budget), [`Chromium::screenshot`] a PNG kept under
//! `target/test-artifacts/`; [`tags`] finds elements and their attributes in the dump.
//!
//! ```ignore
//! let Some(browser) = Chromium::or_skip("my_test") else { return };
//! let dom = browser.dump_dom("http://127.0.0.1:15000/", 5000);
//! let edges = tags(&dom, "g").into_iter().filter(|t| t.has_class("edge"));
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where Debian installs it (`apt-get install chromium`).
pub const DEFAULT_PATH: &str = "/usr/bin/chromium";

/// How long one browser run may take before it is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// A headless Chromium.
#[derive(Debug, Clone)]
pub struct Chromium {
    path: PathBuf,
}

impl Chromium {
    /// `$WARDEN_CHROMIUM`, else [`DEFAULT_PATH`], if it exists.
    pub fn find() -> Option<Self> {
        let path = std::env::var_os("WARDEN_CHROMIUM")
            .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from);
        path.exists().then_some(Self { path })
    }

    /// The browser, or `None` after saying loudly on stderr that `test` is skipped;
    /// under `CI=true` a missing browser fails the test instead.
    pub fn or_skip(test: &str) -> Option<Self> {
        if let Some(c) = Self::find() {
            return Some(c);
        }
        let msg = format!(
            "{test}: SKIPPED: no browser at {DEFAULT_PATH} (or $WARDEN_CHROMIUM): apt-get install chromium"
        );
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{msg} (CI=true: failing)"
        );
        eprintln!("\n*** {msg} ***\n");
        None
    }

    /// Runs the browser on `url` with `extra` arguments; its stdout. Each run has its
    /// own profile directory, so runs never share state or lock each other out.
    fn run(&self, url: &str, budget_ms: u32, extra: &[String]) -> String {
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(&self.path);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {}: {e}", self.path.display());
        });
        let pid = child.id();
        // A hung browser is killed (with its process group's leader) after RUN_LIMIT.
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let out = child.wait_with_output();
            let _ = tx.send(());
            out
        });
        if rx.recv_timeout(RUN_LIMIT).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let out = waiter.join().unwrap().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "chromium on {url} failed ({:?}; killed after {RUN_LIMIT:?} if hung):\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 30)
        );
        stdout
    }

    /// The serialized DOM of `url` after `budget_ms` of (virtual) time: timers and
    /// fetches the page started have run.
    pub fn dump_dom(&self, url: &str, budget_ms: u32) -> String {
        let dom = self.run(url, budget_ms, &["--dump-dom".to_string()]);
        assert!(dom.contains("<html"), "no DOM from {url}: {dom:?}");
        dom
    }

    /// A PNG of `url` at `width`×`height` after `budget_ms`, written to `path`.
    pub fn screenshot(&self, url: &str, path: &Path, (width, height): (u32, u32), budget_ms: u32) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        let _ = std::fs::remove_file(path);
        self.run(
            url,
            budget_ms,
            &[
                format!("--screenshot={}", path.display()),
                format!("--window-size={width},{height}"),
            ],
        );
        let png = std::fs::read(path)
            .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
        assert!(
            png.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            path.display()
        );
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `target/test-artifacts/<sub>` (created): where screenshots are kept for people and
/// CI to look at after a run.
pub fn artifacts_dir(sub: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent())
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf);
    let dir = target.join("test-artifacts").join(sub);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A start tag found in a DOM dump, its attributes decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// Element name, lower case.
    pub name: String,
    /// Attributes.
    pub attrs: BTreeMap<String, String>,
}

impl Tag {
    /// An attribute's value, `""` when absent.
    pub fn attr(&self, name: &str) -> &str {
        self.attrs.get(name).map_or("", String::as_str)
    }

    /// Whether its `class` lists `class`.
    pub fn has_class(&self, class: &str) -> bool {
        self.attr("class")
            .split_ascii_whitespace()
            .any(|c| c == class)
    }
}

/// Every `<name ...>` start tag in `dom` (a serialized DOM: attributes double-quoted,
/// as browsers serialize them).
pub fn tags(dom: &str, name: &str) -> Vec<Tag> {
    let open = format!("<{name}");
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        if !rest.starts_with(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/') {
            continue;
        }
        let end = rest.find('>').unwrap_or(rest.len());
        out.push(Tag {
            name: name.to_ascii_lowercase(),
            attrs: attributes(&rest[..end]),
        });
        rest = &rest[end..];
    }
    out
}

fn attributes(mut s: &str) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    loop {
        s = s.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '/');
        let Some(eq) = s.find(|c: char| c == '=' || c.is_ascii_whitespace()) else {
            if !s.is_empty() {
                attrs.insert(s.to_string(), String::new());
            }
            return attrs;
        };
        let key = s[..eq].to_string();
        s = &s[eq..];
        if let Some(after) = s.strip_prefix("=\"") {
            let close = after.find('"').unwrap_or(after.len());
            attrs.insert(key, unescape(&after[..close]));
            s = after.get(close + 1..).unwrap_or("");
        } else {
            attrs.insert(key, String::new());
        }
    }
}

/// Decodes the entities a serializer writes in attribute values.
pub fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tags_and_decodes_attributes() {
        let dom = r#"<svg><g class="edge denied" data-source="bookinfo/reviews-v2" data-x="a&quot;b&amp;c&lt;"><path d="M 0"/></g><gx class="no"></gx><g class="node"></g></svg>"#;
        let gs = tags(dom, "g");
        assert_eq!(gs.len(), 2);
        assert!(gs[0].has_class("denied"));
        assert_eq!(gs[0].attr("data-source"), "bookinfo/reviews-v2");
        assert_eq!(gs[0].attr("data-x"), "a\"b&c<");
        assert!(gs[1].has_class("node"));
        assert_eq!(tags(dom, "path")[0].attr("d"), "M 0");
    }
}
