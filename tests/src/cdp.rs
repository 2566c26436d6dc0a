//! A headless Chromium driven over the DevTools protocol (CDP), for the tests of the pages the
//! node serves (the dashboard).
//!
//! Chromium is started with `--remote-debugging-pipe`: it reads commands on fd 3 and writes
//! answers and events on fd 4, each a JSON message ended by a NUL byte. The pipes are the
//! child's stdin and stdout, moved to fds 3 and 4 by `sh` before it execs Chromium; so no
//! websocket client and no unsafe `pre_exec` are needed. A reader thread hands each answer to
//! its caller and keeps every event for the test to look at (console errors, say).
//!
//! Chromium comes from Debian's package (`apt-get install chromium`, which `.ci/run`
//! installs when missing); `P2POS_CHROMIUM` names another binary.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use serde_json::{Value, json};

/// How long one command may take.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Value>>>>;

/// The Chromium binary: `P2POS_CHROMIUM`, else `chromium` or `chromium-browser` on the
/// `PATH`; `None` when there is none.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("P2POS_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A headless Chromium, closed when dropped.
pub struct Browser {
    child: Child,
    commands: Mutex<ChildStdin>,
    pending: Pending,
    events: Arc<Mutex<Vec<Value>>>,
    next_id: AtomicU64,
    _profile: tempfile::TempDir,
}

/// One page (a target attached in flat mode), on which commands are sent.
pub struct Page<'b> {
    browser: &'b Browser,
    session: String,
}

impl Browser {
    /// Starts Chromium, its log in `log`; fails the test, saying how to install it, when it
    /// is not there.
    pub fn start(log: &Path) -> Browser {
        let chromium = find_chromium().unwrap_or_else(|| {
            panic!(
                "chromium is not installed: this test drives a real headless browser. Install \
                 Debian's package (`apt-get install -y chromium`; `.ci/run` does when run as \
                 root) or set P2POS_CHROMIUM to a Chromium binary."
            )
        });
        let profile = tempfile::Builder::new()
            .prefix("p2pos-chromium-")
            .tempdir()
            .expect("profile dir");
        // fd 3: commands in (our stdin pipe); fd 4: messages out (our stdout pipe).
        let script = r#"exec 3<&0 4>&1 </dev/null >>"$0" 2>&1; exec "$@""#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(log)
            .arg(&chromium)
            .args([
                "--headless=new",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--window-size=1400,2000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
        let commands = child.stdin.take().expect("stdin pipe");
        let out = child.stdout.take().expect("stdout pipe");
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (reader_pending, reader_events) = (pending.clone(), events.clone());
        std::thread::spawn(move || {
            let mut out = BufReader::new(out);
            let mut message = Vec::new();
            loop {
                message.clear();
                match out.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if message.last() == Some(&0) {
                    message.pop();
                }
                let Ok(value) = serde_json::from_slice::<Value>(&message) else {
                    continue;
                };
                match value.get("id").and_then(Value::as_u64) {
                    Some(id) => {
                        let waiter = reader_pending.lock().expect("pending").remove(&id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(value);
                        }
                    }
                    None => reader_events.lock().expect("events").push(value),
                }
            }
        });
        Browser {
            child,
            commands: Mutex::new(commands),
            pending,
            events,
            next_id: AtomicU64::new(1),
            _profile: profile,
        }
    }

    /// Sends `method` with `params` (to the page `session`, if any) and waits for its result;
    /// `Err` with the protocol's error.
    fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (tx, rx) = mpsc::channel();
        self.pending.lock().expect("pending").insert(id, tx);
        {
            let mut commands = self.commands.lock().expect("commands");
            let mut bytes = serde_json::to_vec(&message).expect("json");
            bytes.push(0);
            commands
                .write_all(&bytes)
                .and_then(|()| commands.flush())
                .map_err(|e| format!("{method}: chromium is gone: {e}"))?;
        }
        let answer = rx
            .recv_timeout(CALL_DEADLINE)
            .map_err(|_| format!("{method}: no answer from chromium in {CALL_DEADLINE:?}"))?;
        match answer.get("error") {
            Some(error) => Err(format!("{method}: {error}")),
            None => Ok(answer.get("result").cloned().unwrap_or(Value::Null)),
        }
    }

    /// A new page (tab), attached, with the runtime, log and page domains on (so console
    /// messages, exceptions and log entries are recorded from now on).
    pub fn new_page(&self) -> Page<'_> {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .expect("create a page");
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .expect("attach to the page");
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        let page = Page {
            browser: self,
            session,
        };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            page.call(domain, json!({})).expect(domain);
        }
        page
    }

    /// Every event received so far whose method is one of `methods`.
    pub fn events(&self, methods: &[&str]) -> Vec<Value> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter(|e| methods.contains(&e["method"].as_str().unwrap_or("")))
            .cloned()
            .collect()
    }

    /// The console errors, uncaught exceptions and error log entries of every page so far.
    pub fn errors(&self) -> Vec<Value> {
        self.events(&[
            "Runtime.consoleAPICalled",
            "Runtime.exceptionThrown",
            "Log.entryAdded",
        ])
        .into_iter()
        .filter(|e| match e["method"].as_str() {
            Some("Runtime.consoleAPICalled") => e["params"]["type"] == "error",
            Some("Log.entryAdded") => e["params"]["entry"]["level"] == "error",
            _ => true,
        })
        .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call(None, "Browser.close", json!({}));
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page<'_> {
    /// Sends `method` to this page.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.browser.call(Some(&self.session), method, params)
    }

    /// Navigates to `url` (the load itself is waited for by what the test looks for).
    pub fn navigate(&self, url: &str) {
        let result = self
            .call("Page.navigate", json!({ "url": url }))
            .expect("navigate");
        assert!(
            result.get("errorText").is_none(),
            "cannot load {url}: {result}"
        );
    }

    /// The value of the JavaScript expression `expression` (awaited if it is a promise);
    /// `Err` if it threw.
    pub fn eval(&self, expression: &str) -> Result<Value, String> {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("{expression}: {exception}"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// A PNG of the page as it looks now.
    pub fn screenshot(&self) -> Vec<u8> {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .expect("screenshot");
        let data = shot["data"].as_str().expect("image data");
        data_encoding::BASE64
            .decode(data.as_bytes())
            .expect("base64 PNG")
    }
}
