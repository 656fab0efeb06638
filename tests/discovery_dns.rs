//! The `dns` source against a real DNS server (dnsmasq on a loopback port):
//! replicas follow changing A records within their TTL, SRV records give
//! each replica its port and weight, and those of the `https` service are
//! called over TLS.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use support::admin::{discovery_syncs, first_service_replicas};
use support::apps::Nginx;
use support::child::OwnedChild;
use support::client::{get_json, send_ok, status_of};
use support::eventually::eventually;
use support::files::TempDir;
use support::ports::closed_port;
use support::replica::Replica;
use support::sidecar::sidecar_with;
use support::tls::Certificates;

/// dnsmasq answering from a hosts file it re-reads on SIGHUP, with 1 s TTLs.
struct Dnsmasq {
    child: OwnedChild,
    port: u16,
    hosts: PathBuf,
    _dir: TempDir,
}

impl Dnsmasq {
    fn start(hosts: &str, extra: &[String]) -> Dnsmasq {
        let dir = TempDir::new();
        let path = dir.path.join("hosts");
        std::fs::write(&path, hosts).expect("write hosts");
        let port = closed_port();
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local-ttl=1",
                "--pid-file",
                "--user=root",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", path.display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (scripts/test.sh installs dnsmasq-base)");
        Dnsmasq {
            child: OwnedChild::new(child),
            port,
            hosts: path,
            _dir: dir,
        }
    }

    /// Replaces the hosts file and tells dnsmasq to read it again.
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).expect("write hosts");
        self.child.signal("HUP");
    }

    fn discovery(&self, dns: &str) -> String {
        format!(
            "discovery: {{ source: dns, refresh: 1m, dns: {{ suffix: .test, nameservers: [\"127.0.0.1:{}\"], {dns} }} }}",
            self.port
        )
    }
}

#[actix_web::test]
async fn replicas_follow_changing_a_records_within_their_ttl() {
    // Every replica on the same port, on its own loopback address.
    let first = Replica::start_at("127.0.0.2:0").await;
    let port = first.addr.port();
    let second = Replica::start_at(&format!("127.0.0.3:{port}")).await;
    let dns = Dnsmasq::start("127.0.0.2 api.test\n", &[]);
    let sidecar = sidecar_with(&dns.discovery(&format!("port: {port}")), "  - name: api").await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());
    let admin = format!("http://{}", sidecar.admin_addr());
    send_ok(&url, 3).await;
    assert_eq!(first.hits(), 3);

    // Refresh is a minute: only the 1 s TTL brings the new records in.
    dns.set_hosts("127.0.0.2 api.test\n127.0.0.3 api.test\n");
    eventually("the new replica gets traffic", || async {
        assert_eq!(status_of(&url).await, Some(200));
        second.hits() > 0
    })
    .await;

    dns.set_hosts("127.0.0.3 api.test\n");
    eventually("the removed replica leaves", || async {
        first_service_replicas(&admin).await.len() == 1
    })
    .await;
    let first_hits = first.hits();
    send_ok(&url, 3).await;
    assert_eq!(
        first.hits(),
        first_hits,
        "no new request to the removed replica"
    );

    let syncs = || async {
        discovery_syncs(&admin, "dns", "ok").await + discovery_syncs(&admin, "dns", "error").await
    };
    let before = syncs().await;
    dns.set_hosts("");
    eventually("the name is read again", || async {
        syncs().await >= before + 2.0
    })
    .await;
    assert_eq!(
        status_of(&url).await,
        Some(200),
        "a name with no records keeps the set"
    );
    assert_eq!(first_service_replicas(&admin).await.len(), 1);
}

#[actix_web::test]
async fn srv_records_give_each_replica_its_port_and_weight() {
    let upstream = Replica::start_at("127.0.0.4:0").await;
    let port = upstream.addr.port();
    let dns = Dnsmasq::start(
        "127.0.0.4 web-1.test\n",
        &[format!(
            "--srv-host=_http._tcp.web.test,web-1.test,{port},0,5"
        )],
    );
    let sidecar = sidecar_with(&dns.discovery("srv: _http._tcp"), "  - name: web").await;
    assert_eq!(
        status_of(&format!("http://{}/web/x", sidecar.outbound_addr())).await,
        Some(200)
    );
    assert_eq!(upstream.hits(), 1);
    let replicas = first_service_replicas(&format!("http://{}", sidecar.admin_addr())).await;
    assert_eq!(replicas.len(), 1);
    assert_eq!(replicas[0]["address"], upstream.endpoint());
    assert_eq!(replicas[0]["weight"], 5);
}

#[actix_web::test]
async fn srv_records_of_the_https_service_are_called_over_tls() {
    let certificates = Certificates::new();
    let server = certificates.server("pay-1", "DNS:pay-1.test,IP:127.0.0.1");
    let replica = Nginx::start_tls(&server.cert, &server.key, "location / { return 200; }").await;
    let dns = Dnsmasq::start(
        "127.0.0.1 pay-1.test\n",
        &[format!(
            "--srv-host=_https._tcp.pay.test,pay-1.test,{},0,1",
            replica.port
        )],
    );
    let sidecar = sidecar_with(
        &dns.discovery("srv: _https._tcp"),
        "  - { name: pay, retry: { attempts: 1 } }",
    )
    .await;
    // The test CA is not among the system's roots: TLS was spoken and the
    // certificate checked, where plain text would have got nginx's 400.
    let (status, body) = get_json(&format!("http://{}/pay/x", sidecar.outbound_addr())).await;
    assert_eq!(status, 502, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("UnknownIssuer"), "{error}");
}
