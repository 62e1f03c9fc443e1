//! A dev server for preview tests: a small stdlib-only Python program run as
//! a container's command, and a client that resolves `*.localhost` preview
//! hosts to the gateway the way a browser does.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::eventually;
use crate::gateway::Gateway;

/// A dev server with only the Python standard library, on `PORT` and, when
/// set, also on `EXTRA_PORT`: GET answers the request it saw (and the port
/// it came in on) as JSON, POST echoes the body, `Upgrade: websocket` is
/// answered with an echoing WebSocket (on a path ending in `?greet`, with a
/// text frame `hello` sent in the same write as the 101's headers).
pub const SERVER: &str = r#"
import base64, hashlib, json, os, struct
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        body = json.dumps({"path": self.path, "name": os.environ.get("NAME", ""),
                           "port": self.server.server_address[1],
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        if self.path.endswith("?greet"):
            # end_headers with the greeting appended: one write.
            self._headers_buffer.append(b"\r\n\x81\x05hello")
            self.flush_headers()
        else:
            self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        r, w = self.rfile, self.wfile
        while True:
            h = r.read(2)
            if len(h) < 2:
                return
            op, n = h[0] & 0x0F, h[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", r.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", r.read(8))[0]
            mask = r.read(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(r.read(n)))
            if op == 8:
                w.write(b"\x88\x00")
                w.flush()
                return
            if op in (1, 2):
                out = b"echo:" + data
                hdr = bytes([0x80 | op])
                if len(out) < 126:
                    hdr += bytes([len(out)])
                elif len(out) < 65536:
                    hdr += bytes([126]) + struct.pack(">H", len(out))
                else:
                    hdr += bytes([127]) + struct.pack(">Q", len(out))
                w.write(hdr + out)
                w.flush()

if os.environ.get("EXTRA_PORT"):
    import threading
    extra = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["EXTRA_PORT"])), H)
    threading.Thread(target=extra.serve_forever, daemon=True).start()
ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), H).serve_forever()
"#;

/// An HTTP client that sends `*.localhost` names to the gateway, the way a
/// browser resolves them to the loopback address; no redirects followed.
pub fn browser(gw: &Gateway, hosts: &[&str]) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none());
    for h in hosts {
        b = b.resolve(h, gw.addr);
    }
    b.build().unwrap()
}

pub fn url(gw: &Gateway, host: &str, path: &str) -> String {
    format!("http://{host}:{}{path}", gw.addr.port())
}

/// Creates a container serving [`SERVER`] from `/{name}/` and starts it.
pub async fn dev_server(gw: &Gateway, project: &str, name: &str, public: bool) -> Result<()> {
    dev_server_with(gw, project, name, public, SERVER, &[]).await
}

/// Creates a container running the Python `script` from `/{name}/`, with
/// these other declared `ports` (the first one also as `EXTRA_PORT`), and
/// starts it.
pub async fn dev_server_with(
    gw: &Gateway,
    project: &str,
    name: &str,
    public: bool,
    script: &str,
    ports: &[u16],
) -> Result<()> {
    let mut env = json!({"NAME": name});
    if let Some(extra) = ports.first() {
        env["EXTRA_PORT"] = json!(extra.to_string());
    }
    let r = gw
        .put(&format!("/api/projects/{project}/files/{name}/server.py"))
        .body(script.to_owned())
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "write server.py: {}", r.status());
    start_container(
        gw,
        project,
        &json!({"name": name, "port": crate::free_port(), "ports": ports,
                "start": "exec python3 server.py",
                "env": env, "public": public}),
    )
    .await
}

/// Creates the container `spec` (the body of `POST .../containers`, which
/// must answer 201) in `project` and starts it (200).
pub async fn start_container(gw: &Gateway, project: &str, spec: &serde_json::Value) -> Result<()> {
    let name = spec["name"].as_str().unwrap_or_default();
    let r = gw
        .post(&format!("/api/projects/{project}/containers"))
        .json(spec)
        .send()
        .await?;
    anyhow::ensure!(
        r.status().as_u16() == 201,
        "create {name}: {}",
        r.text().await?
    );
    let r = gw
        .post(&format!("/api/projects/{project}/containers/{name}/start"))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().as_u16() == 200,
        "start {name}: {}",
        r.text().await?
    );
    Ok(())
}

/// Waits until `url` answers `want` (the dev server takes a moment to listen).
pub async fn wait_status(
    client: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    want: u16,
) -> reqwest::Response {
    let url = url.to_owned();
    eventually(
        Duration::from_secs(30),
        &format!("{url} to answer {want}"),
        || {
            let mut req = client.get(&url);
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            async move {
                req.send()
                    .await
                    .ok()
                    .filter(|r| r.status().as_u16() == want)
            }
        },
    )
    .await
    .unwrap()
}
