//! A small W3C WebDriver client over reqwest: enough to drive Debian's chromium through
//! chromedriver (navigate, find, click, type, read text, run a script, screenshot, cookies,
//! browser logs).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    base: String,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `chromium` and `chromedriver` when both are installed.
pub fn available() -> Option<(String, String)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            let out = Command::new("sh").args(["-c", &format!("command -v {n}")]).output().ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
    };
    Some((find(&["chromium", "chromium-browser"])?, find(&["chromedriver"])?))
}

impl Browser {
    /// Starts chromedriver and one headless chromium session with a `width`×`height` window.
    pub async fn start(chromium: &str, chromedriver: &str, width: u32, height: u32) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(chromedriver).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let t = Instant::now();
        while http.get(format!("{root}/status")).send().await.is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--metrics-recording-only",
                format!("--window-size={width},{height}")]},
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let v: Value = http.post(format!("{root}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let id = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_owned();
        let b = Browser { http, base: format!("{root}/session/{id}"), driver };
        b.call("POST", "/window/rect", json!({"width": width, "height": height})).await;
        b
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let rb = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let v: Value = rb.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url})).await;
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.call("POST", "/window/rect", json!({"width": width, "height": height})).await;
    }

    /// The first element matching `css`, if any now.
    pub async fn find(&self, css: &str) -> Option<String> {
        let v = self.call("POST", "/element", json!({"using": "css selector", "value": css})).await;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    /// Waits up to 20 s for an element matching `css`.
    pub async fn wait(&self, css: &str) -> String {
        let t = Instant::now();
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            if t.elapsed() > Duration::from_secs(20) {
                let url = self.call("GET", "/url", json!({})).await;
                let html = self.run("return document.documentElement.outerHTML;", json!([])).await;
                panic!("no {css} on {url}: {html}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `secs` for `css`'s text to satisfy `ok`; returns the text.
    pub async fn wait_text(&self, css: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let s = self.text(css).await;
            if ok(&s) {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(secs), "{css} is {s:?}");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let e = self.wait(css).await;
        self.call("POST", &format!("/element/{e}/click"), json!({})).await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait(css).await;
        self.call("POST", &format!("/element/{e}/value"), json!({"text": text})).await;
    }

    /// The text of the first element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        let Some(e) = self.find(css).await else { return String::new() };
        self.call("GET", &format!("/element/{e}/text"), json!({})).await.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns what it returns; a
    /// promise is awaited.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/async", json!({"script": format!("const done = arguments[arguments.length - 1]; Promise.resolve((async () => {{ {script} }})()).then(done, (e) => done('error: ' + e));"), "args": args})).await
    }

    pub async fn screenshot(&self, path: &std::path::Path) {
        let v = self.call("GET", "/screenshot", json!({})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    pub async fn cookie(&self, name: &str) -> Option<Value> {
        let v = self.call("GET", &format!("/cookie/{name}"), json!({})).await;
        v.get("value").is_some().then_some(v)
    }

    /// Browser console entries since the last call (chromedriver's log endpoint).
    pub async fn console_log(&self) -> Vec<Value> {
        self.call("POST", "/se/log", json!({"type": "browser"})).await.as_array().cloned().unwrap_or_default()
    }
}
