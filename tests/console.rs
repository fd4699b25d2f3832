//! The web console of `launcher up --console` in a real browser: headless
//! Chromium driven through chromedriver (WebDriver). One cluster and one
//! browser for the whole walk (the page lists the nodes; a line typed in
//! the page reaches a UDP client and its reply comes back into the page;
//! the diagram shows every server's deliveries, in one order under
//! `total`; a node killed by pid shows as down, then up again after the
//! supervisor restarts it; bad requests get 4xx; `/metrics` parses as
//! Prometheus text), then the `launcher trace` picture of the same run. Screenshots of both go
//! to a temporary directory, or to `docs/` with `UPDATE_SCREENSHOTS=1`.
//!
//! Without Chromium and chromedriver these tests fail (never skip):
//! `.ci/run` installs them. Only processes these tests started are
//! signalled, by pid or by the process group of the chromedriver they
//! started; everything is cleaned up on failure too (drop guards).

mod support;

use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{Proc, Scratch, bin, free_ports};

/// Any one wait of the browser walk.
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// The first of `names` on PATH (or in /usr/bin, /usr/lib/chromium).
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/bin".into());
    dirs.push("/usr/lib/chromium".into());
    for n in names {
        for d in &dirs {
            let p = d.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Chromium and chromedriver, or a failure that says how to get them.
fn browser_programs() -> (PathBuf, PathBuf) {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find_program(&["chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => (c, d),
        (c, d) => panic!(
            "the console's browser tests need Chromium and chromedriver (found chromium: {c:?}, chromedriver: {d:?}); \
             `.ci/run` installs them (apt-get install -y chromium chromium-driver)"
        ),
    }
}

/// A TCP port that was free a moment ago (the kernel's choice).
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a TCP port")
}

/// chromedriver in its own process group (Chromium runs in it too), killed
/// with the group and its profile directory removed when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: Scratch,
    profile_dir: PathBuf,
}

impl Driver {
    fn start(driver: &Path) -> Driver {
        let profile = Scratch::new("chromium-profile");
        let profile_dir = profile.path().to_path_buf();
        let port = free_tcp_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let d = Driver {
            child,
            port,
            _profile: profile,
            profile_dir,
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port}"
            );
            std::thread::sleep(POLL);
        }
        d
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group is the driver's pid (process_group(0)); it holds
        // Chromium and its helpers, none of which outlives the test.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

async fn browser(chromium: &Path, driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium.to_string_lossy(),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic",
                "--window-size=1280,1400",
                format!("--user-data-dir={}", driver.profile_dir.display()),
            ]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session in headless Chromium")
}

/// Polls `f` until it returns `Some`, failing with `what` after [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// The text of the first element matching `css`, if any.
async fn text_of(c: &Client, css: &str) -> Option<String> {
    let e = c.find(Locator::Css(css)).await.ok()?;
    e.text().await.ok()
}

/// Clicks the element matching `css` (an option, a button).
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} in the page: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

/// Where a screenshot goes: `docs/NAME` with `UPDATE_SCREENSHOTS=1`,
/// else the scratch directory. Checked first: a real PNG, at least
/// 600x400, with a picture in it (many colours, not a blank page).
fn keep_screenshot(png_bytes: &[u8], name: &str, scratch: &Scratch) -> PathBuf {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("the screenshot is a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    assert!(
        info.width >= 600 && info.height >= 400,
        "{name}: {}x{}",
        info.width,
        info.height
    );
    let px = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    assert!(
        colours.len() >= 16,
        "{name} looks blank: {} colours",
        colours.len()
    );
    let dir = if std::env::var_os("UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
    } else {
        scratch.path().to_path_buf()
    };
    let path = dir.join(name);
    std::fs::write(&path, png_bytes).expect("write the screenshot");
    path
}

/// A UDP client of one node, as a terminal `chatclient` would be.
struct Udp {
    sock: std::net::UdpSocket,
    server: SocketAddr,
}

impl Udp {
    fn new(server: SocketAddr) -> Udp {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(POLL)).expect("timeout");
        Udp { sock, server }
    }
    fn send(&self, line: &str) {
        self.sock
            .send_to(line.as_bytes(), self.server)
            .expect("send");
    }
    /// Waits for a datagram equal to `want`, skipping others.
    fn expect(&self, want: &str) {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                let s = String::from_utf8_lossy(&buf[..n]).into_owned();
                if s == want {
                    return;
                }
                seen.push(s);
            }
        }
        panic!("no {want:?} from {}; got {seen:?}", self.server);
    }
}

/// Statuses of the page's node rows, by name.
async fn statuses(c: &Client) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    let Ok(rows) = c.find_all(Locator::Css("#nodes tbody tr")).await else {
        return out;
    };
    for r in rows {
        let Ok(Some(name)) = r.attr("data-node").await else {
            continue;
        };
        let status = match r.find(Locator::Css(".status")).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let restarts = match r.find(Locator::Css(".restarts")).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        out.insert(name, (status, restarts));
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn console_and_trace_in_a_browser() {
    let (chromium, chromedriver) = browser_programs();
    let dir = Scratch::new("console");
    let ports = free_ports(3);
    let binds: Vec<SocketAddr> = ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let mut toml = format!(
        "[cluster]\nname = \"webdemo\"\nordering = \"total\"\nstate_dir = \"{}\"\nconsole = \"127.0.0.1:0\"\n",
        dir.path().join("state").display()
    );
    for b in &binds {
        toml.push_str(&format!("[[node]]\nbind = \"{b}\"\n"));
    }
    // A restart backoff longer than the page's poll, so that the page
    // shows the node down before it is back.
    toml.push_str(
        "[supervise]\nbackoff_initial_ms = 1500\nbackoff_max_ms = 1500\nstop_timeout_ms = 2000\n",
    );
    let file = dir.write("cluster.toml", &toml);

    let mut cmd = Command::new(bin("launcher"));
    cmd.arg("up").arg(&file).env("NO_COLOR", "1");
    let mut up = Proc::spawn("launcher up --console", cmd);
    let seen = up.wait_stdout("launcher: console http://");
    let url = seen
        .last()
        .and_then(|l| l.split_once("console ").map(|(_, u)| u.trim().to_string()))
        .expect("the console's URL");
    for _ in 0..3 {
        up.wait_stdout("launcher: up (pid");
    }

    let driver = Driver::start(&chromedriver);
    let c = browser(&chromium, &driver).await;

    // 1. The page lists the nodes, all up.
    c.goto(&url).await.expect("open the console");
    eventually("three nodes up in the page", || async {
        let s = statuses(&c).await;
        (s.len() == 3
            && ["s1", "s2", "s3"]
                .iter()
                .all(|n| s.get(*n).is_some_and(|(st, _)| st == "up")))
        .then_some(())
    })
    .await;

    // 2. Chat: the page joins room 4 at node 2 as `webby`; a UDP client
    // of node 1 is `term` in the same room.
    let term = Udp::new(binds[0]);
    term.send("/nick term");
    term.expect("+OK Nickname set to 'term'");
    term.send("/join 4");
    term.expect("+OK You are now in chat room #4");
    click(&c, "#chat-node option[value='2']").await;
    click(&c, "#chat-room option[value='4']").await;
    let nick = c.find(Locator::Css("#chat-nick")).await.expect("nick box");
    nick.clear().await.expect("clear nick");
    nick.send_keys("webby").await.expect("type nick");
    click(&c, "#chat-join").await;
    eventually("the page joined room 4", || async {
        text_of(&c, "#chat-log")
            .await
            .filter(|t| t.contains("+OK You are now in chat room #4"))
    })
    .await;
    let input = c.find(Locator::Css("#chat-text")).await.expect("text box");
    input
        .send_keys("hello from the browser")
        .await
        .expect("type a line");
    click(&c, "#chat-send").await;
    term.expect("<webby> hello from the browser");
    term.send("hello from the terminal");
    term.expect("<term> hello from the terminal");
    eventually("the terminal's reply in the page", || async {
        text_of(&c, "#chat-log")
            .await
            .filter(|t| t.contains("<term> hello from the terminal"))
    })
    .await;

    // 3. The diagram of room 4: every message delivered at all three
    // servers, each with the same place in every server's order (total).
    // Three more lines from the terminal, sent at once, give the order
    // something to agree on.
    for t in ["one", "two", "three"] {
        term.send(t);
    }
    for t in ["one", "two", "three"] {
        term.expect(&format!("<term> {t}"));
    }
    let ranks = eventually("15 deliveries in the diagram", || async {
        let dots = c
            .find_all(Locator::Css("#diagram circle.delivery"))
            .await
            .ok()?;
        if dots.len() < 15 {
            return None;
        }
        let mut ranks: HashMap<String, Vec<String>> = HashMap::new();
        for d in dots {
            let id = d.attr("data-id").await.ok()??;
            let rank = d.attr("data-rank").await.ok()??;
            ranks.entry(id).or_default().push(rank);
        }
        Some(ranks)
    })
    .await;
    assert_eq!(ranks.len(), 5, "five messages in room 4: {ranks:?}");
    for (id, r) in &ranks {
        assert_eq!(r.len(), 3, "{id} delivered at every server: {r:?}");
        assert!(
            r.iter().all(|x| x == &r[0]),
            "{id}: one order in total: {r:?}"
        );
    }
    eventually(
        "s1's client count from its /metrics in the page",
        || async {
            text_of(&c, "tr[data-node='s1'] .clients")
                .await
                .filter(|t| t.parse::<u64>().is_ok_and(|n| n >= 1))
        },
    )
    .await;
    // Joining scrolled the page down to the chat; the picture shows it all.
    c.execute("window.scrollTo(0, 0)", vec![])
        .await
        .expect("scroll to the top");
    let shot = c.screenshot().await.expect("screenshot of the console");
    let console_png = keep_screenshot(&shot, "console.png", &dir);

    // 4. Kill node s3 by its pid (the launcher's state file says which
    // process is s3, the page shows the same): down, then up again.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("state/launcher.json")).expect("state file"),
    )
    .expect("state JSON");
    let pid = state["nodes"][2]["pid"].as_i64().expect("s3's pid") as i32;
    assert_eq!(state["nodes"][2]["name"], "s3");
    assert_eq!(
        text_of(&c, "tr[data-node='s3'] .pid").await.as_deref(),
        Some(pid.to_string().as_str())
    );
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill s3");
    eventually("s3 shown down", || async {
        let s = statuses(&c).await;
        s.get("s3").filter(|(st, _)| st != "up").map(|_| ())
    })
    .await;
    eventually("s3 shown up again after its restart", || async {
        let s = statuses(&c).await;
        s.get("s3")
            .filter(|(st, restarts)| st == "up" && restarts == "1")
            .map(|_| ())
    })
    .await;

    // 5. Bad requests from a page get 4xx answers, and the console lives
    // on (the metrics below are read after them).
    let answers = c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
            const post = (u, body) => fetch(u, {method: "POST", headers: {"Content-Type": "application/json"}, body}).then(r => r.status);
            Promise.all([
              post("/api/chat", "{not json"),
              post("/api/chat", JSON.stringify({node: 1, nick: "x", room: 99})),
              post("/api/chat", JSON.stringify({node: 1, nick: "<x>", room: 1})),
              post("/api/chat", JSON.stringify({node: 9, nick: "x", room: 1})),
              post("/api/chat/12345/send", JSON.stringify({text: "hi"})),
              fetch("/api/chat/12345/lines").then(r => r.status),
              fetch("/api/diagram?room=0").then(r => r.status),
              fetch("/api/diagram?room=abc").then(r => r.status),
            ]).then(done, e => done(String(e)));"#,
            vec![],
        )
        .await
        .expect("bad requests from the page");
    assert_eq!(
        answers,
        serde_json::json!([400, 400, 400, 400, 404, 404, 400, 400]),
        "status codes of bad requests"
    );

    // 6. /metrics: Prometheus text, one series per node.
    c.goto(&format!("{url}metrics"))
        .await
        .expect("open /metrics");
    let text = text_of(&c, "body").await.expect("metrics text");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    let value_with = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let value = |name: &str, node: &str| value_with(name, &[("node", node)]);
    for n in ["s1", "s2", "s3"] {
        assert_eq!(value("chat_node_up", n), Some(1.0), "{n} up in {text}");
        assert!(
            value("chat_node_deliveries_total", n).is_some(),
            "{n} deliveries in {text}"
        );
        assert!(
            value("chat_node_resident_memory_bytes", n).is_some_and(|v| v > 0.0),
            "{n} RSS in {text}"
        );
    }
    assert_eq!(value("chat_node_restarts_total", "s3"), Some(1.0));
    assert_eq!(value("chat_node_restarts_total", "s1"), Some(0.0));
    assert!(value("chat_node_deliveries_total", "s1").is_some_and(|v| v >= 2.0));
    // The nodes' own figures, scraped from their /metrics and labelled:
    // `term` is a client of s1 and posted there; the page is in room 4
    // at s2.
    assert!(
        value("chatserver_clients", "s1").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        value("chatserver_posts_total", "s1").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert_eq!(
        value_with("chatserver_room_members", &[("node", "s2"), ("room", "4")]),
        Some(1.0),
        "{text}"
    );

    // 7. The trace of this run, from the node logs, drawn by the same
    // script in a self-contained page.
    let logs: Vec<PathBuf> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| dir.path().join(format!("state/logs/{n}.log")))
        .collect();
    let html = dir.path().join("trace.html");
    let out = Command::new(bin("launcher"))
        .arg("trace")
        .args(&logs)
        .arg("-o")
        .arg(&html)
        .output()
        .expect("run launcher trace");
    assert!(out.status.success(), "{out:?}");
    c.goto(&format!("file://{}", html.display()))
        .await
        .expect("open the trace");
    eventually("the trace's deliveries", || async {
        let n = c
            .find_all(Locator::Css("#diagram circle.delivery"))
            .await
            .ok()?
            .len();
        (n == 15).then_some(())
    })
    .await;
    let shot = c.screenshot().await.expect("screenshot of the trace");
    let trace_png = keep_screenshot(&shot, "trace.png", &dir);
    eprintln!(
        "screenshots: {} and {}",
        console_png.display(),
        trace_png.display()
    );
    let _ = c.close().await;
    drop(driver);
    drop(up);
}

/// `launcher trace` on hand-made logs with junk: counts it, draws SVG.
#[test]
fn trace_counts_junk_and_draws_svg() {
    let dir = Scratch::new("trace");
    let a = dir.write(
        "a.log",
        "garbage\n\u{1b}[31m\n12:00:00.000001 S01 Client 1 posts \"x\" to chat room #2 as S01#9\n12:00:00.000002 S01 Delivered S01#9 to 1 member(s) of chat room #2\n",
    );
    let b = dir.write(
        "b.log",
        "12:00:00.000003 S02 Delivered S01#9 to 0 member(s) of chat room #2\n12:00:00.000004 S02 Holdback queue: 0 held back, 0 of ours awaiting agreement\n",
    );
    std::fs::write(dir.path().join("c.log"), b"\xff\xfe\x00binary\n").expect("write");
    let svg = dir.path().join("t.svg");
    let out = Command::new(bin("launcher"))
        .arg("trace")
        .args([&b, &a, &dir.path().join("c.log")])
        .arg("-o")
        .arg(&svg)
        .output()
        .expect("run launcher trace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(
            "2 servers, 1 messages in 1 room, 3 events; 1 other -v lines, 3 junk lines skipped"
        ),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&svg).expect("svg");
    assert!(text.starts_with("<svg"));
    assert_eq!(text.matches("<circle").count(), 2);
    let missing = Command::new(bin("launcher"))
        .args(["trace", "/nonexistent.log", "-o"])
        .arg(dir.path().join("x.html"))
        .output()
        .expect("run launcher trace");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot open /nonexistent.log"));
}
