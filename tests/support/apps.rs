//! Apps of other makes to put behind the sidecar: nginx, which normalises
//! paths as a front server does, and a WSGI app, which reads headers as
//! CGI-style apps do.

use super::child::OwnedChild;
use super::eventually::eventually;
use super::files::TempDir;
use super::ports::closed_port;

/// A private nginx (the Debian package's binary) serving `server` (the
/// body of one `server { }` block, without its `listen`) on a free
/// loopback port: a real server that normalises paths, as an app or a
/// front server behind the sidecar does. One process, in the foreground,
/// with every file in a temp dir; killed when dropped.
pub struct Nginx {
    pub port: u16,
    _child: OwnedChild,
    _dir: TempDir,
}

impl Nginx {
    pub async fn start(server: &str) -> Nginx {
        Nginx::launch("", server).await
    }

    /// Serves TLS with `cert` and `key` (PEM files) on its port.
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path, server: &str) -> Nginx {
        Nginx::launch_tls(" ssl", cert, key, server).await
    }

    /// Serves TLS as [`Nginx::start_tls`] does, offering HTTP/2 (`h2`)
    /// beside HTTP/1.1 by ALPN.
    pub async fn start_tls_http2(
        cert: &std::path::Path,
        key: &std::path::Path,
        server: &str,
    ) -> Nginx {
        Nginx::launch_tls(" ssl http2", cert, key, server).await
    }

    async fn launch_tls(
        listen: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
        server: &str,
    ) -> Nginx {
        let server = format!(
            "ssl_certificate {};\n    ssl_certificate_key {};\n    {server}",
            cert.display(),
            key.display()
        );
        Nginx::launch(listen, &server).await
    }

    /// Runs nginx with `listen 127.0.0.1:<port><listen>;` and `server`.
    async fn launch(listen: &str, server: &str) -> Nginx {
        let dir = TempDir::new();
        let port = closed_port();
        let root = dir.path.display();
        let conf = format!(
            "daemon off;
master_process off;
pid {root}/nginx.pid;
error_log stderr;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  server {{
    listen 127.0.0.1:{port}{listen};
    {server}
  }}
}}
"
        );
        let path = dir.path.join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let binary = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|bin| std::path::Path::new(bin).exists())
            .unwrap_or("nginx");
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(&dir.path)
            .arg("-e")
            .arg("stderr")
            .arg("-c")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start nginx (scripts/test.sh installs it)");
        let nginx = Nginx {
            port,
            _child: OwnedChild::new(child),
            _dir: dir,
        };
        eventually("nginx accepts connections", || async {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        nginx
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A WSGI app on python3's stdlib server (`wsgiref`), as CGI-style apps
/// read requests: every header as `HTTP_<NAME>`, `-` and `_` both read as
/// `_`. It answers each request with the JSON of the `HTTP_*` variables,
/// `PATH_INFO` and `REMOTE_ADDR` of its `environ`; killed when dropped.
pub struct WsgiApp {
    pub port: u16,
    _child: OwnedChild,
}

const WSGI_APP: &str = r#"
import json, sys
from wsgiref.simple_server import make_server, WSGIRequestHandler

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

def app(environ, start_response):
    seen = {k: v for k, v in environ.items()
            if k.startswith("HTTP_") or k in ("PATH_INFO", "REMOTE_ADDR")}
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]

server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(server.server_port, flush=True)
server.serve_forever()
"#;

impl WsgiApp {
    pub fn start() -> WsgiApp {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(["-c", WSGI_APP])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the WSGI app prints its port");
        let port = line.trim().parse().expect("a port number");
        WsgiApp {
            port,
            _child: OwnedChild::new(child),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
