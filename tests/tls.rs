//! TLS on every hop, through real sockets with certificates made at test time (rcgen): an
//! upstream behind a private CA (refused without the bundle, served with it, over HTTP/2), an
//! upstream that requires a client certificate, a wrong server name and its override, a
//! minimum TLS version, a token endpoint behind a private CA, and the egress proxy (the test
//! kit's CONNECT proxy counts what passed; its refusals are clear 502s), the listener (HTTPS,
//! HTTP/2, a certificate rotated on disk, client certificates as a team's credential), Redis over
//! TLS (the machine's redis-server started with TLS) and PostgreSQL `sslmode`.
// Helpers outside the test functions unwrap too: a panic there is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{chat, Gateway, Reply, DEMO_KEY_SHA256};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tollgate::testkit::{ConnectProxy, MockOAuth, MockUpstream};

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `names` (DNS names or IPs), for a server or a client.
    fn leaf(&self, names: &[&str], client: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, if client { "client" } else { "server" });
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Leaf {
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config for `leaf`, offering h2 and http/1.1; with `client_ca`, a client
/// certificate from it is required.
fn server_tls(
    leaf: &Leaf,
    client_ca: Option<&Ca>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.issuer.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(leaf.chain(), leaf.key()).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

const ALL: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Model `gpt` on upstream `up` at `base_url` with `extra` lines under the upstream (indented
/// four spaces) and `top` at the top level; one attempt per request.
fn config(base_url: &str, extra: &str, top: &str) -> String {
    format!(
        r#"
upstreams:
  up:
    provider: openai
    base_url: {base_url}
    timeouts: {{ connect: 2s, first_byte: 5s }}
{extra}
models:
  gpt: {{ targets: [ {{ upstream: up }} ], retry: {{ max_attempts: 1 }} }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
{top}
"#
    )
}

async fn ask(gw: &Gateway) -> Reply {
    Reply::read(
        gw.post("/v1/chat/completions", chat("gpt", "hello", false))
            .await,
    )
    .await
}

async fn tls_upstream(leaf: &Leaf, client_ca: Option<&Ca>) -> MockUpstream {
    MockUpstream::start_tls(server_tls(leaf, client_ca, ALL))
        .await
        .unwrap()
}

/// The 502 a client sees when the upstream hop fails: OpenAI-shaped, naming the upstream and
/// the cause.
fn assert_connect_502(r: &Reply, code: &str, cause: &str) {
    assert_eq!(r.status, 502, "{}", r.body);
    let e = r.error();
    assert_eq!(e["code"], code, "{}", r.body);
    assert_eq!(e["type"], "api_error", "{}", r.body);
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains("'up'"), "{msg}");
    assert!(msg.contains(cause), "{msg}");
}

#[tokio::test]
async fn a_private_ca_is_refused_without_its_bundle_and_served_with_it_over_http2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private CA");
    let mock = tls_upstream(&ca.leaf(&["127.0.0.1"], false), None).await;

    let gw = Gateway::start(&config(&mock.base_url(), "", "")).await;
    let r = ask(&gw).await;
    assert_connect_502(&r, "upstream_tls_error", "unknown CA");
    assert_eq!(mock.request_count(), 0);
    gw.stop().await;

    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let tls = format!("    tls: {{ ca_file: {} }}", ca_file.display());
    let gw = Gateway::start(&config(&mock.base_url(), &tls, "")).await;
    let r = ask(&gw).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.content().is_empty());
    let got = mock.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].version, http::Version::HTTP_2, "h2 by ALPN");
    gw.stop().await;

    // Only the private CA: still served; a CA that did not sign it: refused.
    let tls = format!(
        "    tls: {{ ca_file: {}, public_roots: false }}",
        ca_file.display()
    );
    let gw = Gateway::start(&config(&mock.base_url(), &tls, "")).await;
    assert_eq!(ask(&gw).await.status, 200);
    gw.stop().await;
    let other = write(dir.path(), "other.pem", &Ca::new("other").pem());
    let tls = format!("    tls: {{ ca_file: {} }}", other.display());
    let gw = Gateway::start(&config(&mock.base_url(), &tls, "")).await;
    assert_connect_502(&ask(&gw).await, "upstream_tls_error", "unknown CA");
    gw.stop().await;
}

#[tokio::test]
async fn an_upstream_that_requires_a_client_certificate_gets_the_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let mock = tls_upstream(&ca.leaf(&["127.0.0.1"], false), Some(&client_ca)).await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());

    // No client certificate: the upstream's refusal is named.
    let tls = format!("    tls: {{ ca_file: {} }}", ca_file.display());
    let gw = Gateway::start(&config(&mock.base_url(), &tls, "")).await;
    assert_connect_502(
        &ask(&gw).await,
        "upstream_tls_error",
        "requires a client certificate",
    );
    gw.stop().await;

    // A certificate from a CA the upstream does not trust: refused as such.
    let stranger = Ca::new("stranger").leaf(&["tollgate"], true);
    let cert = write(dir.path(), "bad.pem", &stranger.cert_pem);
    let key = write(dir.path(), "bad.key", &stranger.key_pem);
    let tls = format!(
        "    tls: {{ ca_file: {}, client_cert_file: {}, client_key: \"file:{}\" }}",
        ca_file.display(),
        cert.display(),
        key.display()
    );
    let gw = Gateway::start(&config(&mock.base_url(), &tls, "")).await;
    assert_connect_502(
        &ask(&gw).await,
        "upstream_tls_error",
        "refused the gateway's client certificate",
    );
    gw.stop().await;

    // The right one, its key from the environment: served.
    let leaf = client_ca.leaf(&["tollgate"], true);
    let cert = write(dir.path(), "client.pem", &leaf.cert_pem);
    let tls = format!(
        "    tls: {{ ca_file: {}, client_cert_file: {}, client_key: \"${{CLIENT_KEY}}\" }}",
        ca_file.display(),
        cert.display()
    );
    let env: HashMap<String, String> = [("CLIENT_KEY".to_string(), leaf.key_pem.clone())].into();
    let gw = Gateway::start_with_env(&config(&mock.base_url(), &tls, ""), env).await;
    let r = ask(&gw).await;
    assert_eq!(r.status, 200, "{}", r.body);
    gw.stop().await;
}

#[tokio::test]
async fn a_wrong_server_name_is_refused_and_server_name_overrides_the_urls_host() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private CA");
    let mock = tls_upstream(&ca.leaf(&["vllm.internal"], false), None).await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());

    let tls = format!("    tls: {{ ca_file: {} }}", ca_file.display());
    let gw = Gateway::start(&config(&mock.base_url(), &tls, "")).await;
    assert_connect_502(
        &ask(&gw).await,
        "upstream_tls_error",
        "does not match its name",
    );
    gw.stop().await;

    let tls = format!(
        "    tls: {{ ca_file: {}, server_name: vllm.internal }}",
        ca_file.display()
    );
    let gw = Gateway::start(&config(&mock.base_url(), &tls, "")).await;
    let r = ask(&gw).await;
    assert_eq!(r.status, 200, "{}", r.body);
    gw.stop().await;
}

#[tokio::test]
async fn min_version_1_3_refuses_an_upstream_that_speaks_only_tls_1_2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private CA");
    let leaf = ca.leaf(&["127.0.0.1"], false);
    let mock = MockUpstream::start_tls(server_tls(&leaf, None, &[&rustls::version::TLS12]))
        .await
        .unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());

    let tls = format!("    tls: {{ ca_file: {} }}", ca_file.display());
    let gw = Gateway::start(&config(&mock.base_url(), &tls, "")).await;
    assert_eq!(ask(&gw).await.status, 200);
    gw.stop().await;

    let tls = format!(
        "    tls: {{ ca_file: {}, min_version: \"1.3\" }}",
        ca_file.display()
    );
    let gw = Gateway::start(&config(&mock.base_url(), &tls, "")).await;
    assert_connect_502(
        &ask(&gw).await,
        "upstream_tls_error",
        "TLS handshake failed",
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_token_endpoint_behind_a_private_ca_is_trusted_through_its_tls_block() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("auth CA");
    let oauth = MockOAuth::start_tls(server_tls(&ca.leaf(&["127.0.0.1"], false), None, ALL))
        .await
        .unwrap();
    oauth.add_client("cid", "cs-1");
    let mock = MockUpstream::start().await.unwrap();
    mock.set_auth_check(Some(oauth.bearer_check()));
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let top = format!(
        r#"credentials:
  cred:
    kind: oauth2
    token_url: {}
    client_id: cid
    client_secret: "${{OA_SECRET}}"
    lease_timeout: 5s
    tls: {{ ca_file: {} }}
"#,
        oauth.token_url(),
        ca_file.display()
    );
    let env: HashMap<String, String> = [("OA_SECRET".to_string(), "cs-1".to_string())].into();
    let gw =
        Gateway::start_with_env(&config(&mock.base_url(), "    credential: cred", &top), env).await;
    let r = ask(&gw).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(oauth.token_requests() >= 1);
    gw.stop().await;
}

#[tokio::test]
async fn the_egress_proxy_carries_upstream_traffic_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private CA");
    let mock = tls_upstream(&ca.leaf(&["127.0.0.1"], false), None).await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let proxy = ConnectProxy::start().await.unwrap();
    // base64("svc:pw")
    proxy.require_auth(Some("Basic c3ZjOnB3"));
    let env: HashMap<String, String> = [("PROXY_CRED".to_string(), "svc:pw".to_string())].into();

    let tls = format!("    tls: {{ ca_file: {} }}", ca_file.display());
    let top = format!(
        "proxy: {{ url: \"{}\", credentials: \"${{PROXY_CRED}}\" }}",
        proxy.url()
    );
    let gw = Gateway::start_with_env(&config(&mock.base_url(), &tls, &top), env.clone()).await;
    let r = ask(&gw).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = proxy.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, mock.addr().to_string());
    assert_eq!(proxy.tunnels(), 1);
    // The TLS handshake and the request went through the tunnel, the answer came back.
    assert!(proxy.bytes_up() > 200, "{}", proxy.bytes_up());
    assert!(
        proxy.bytes_down() as usize > r.body.len(),
        "{}",
        proxy.bytes_down()
    );
    // A second request reuses the pooled tunnel.
    assert_eq!(ask(&gw).await.status, 200);
    assert_eq!(proxy.tunnels(), 1);
    gw.stop().await;

    // The upstream's host under no_proxy: direct, the proxy sees nothing.
    let top = format!(
        "proxy: {{ url: \"{}\", no_proxy: [\"127.0.0.1\"] }}",
        proxy.url()
    );
    let gw = Gateway::start(&config(&mock.base_url(), &tls, &top)).await;
    assert_eq!(ask(&gw).await.status, 200);
    assert_eq!(proxy.requests().len(), 1);
    gw.stop().await;

    // The environment's proxy is used only when the config says so.
    let env: HashMap<String, String> = [
        ("HTTPS_PROXY".to_string(), proxy.url()),
        ("PROXY_CRED".to_string(), "svc:pw".to_string()),
    ]
    .into();
    let gw = Gateway::start_with_env(&config(&mock.base_url(), &tls, ""), env.clone()).await;
    assert_eq!(ask(&gw).await.status, 200);
    assert_eq!(
        proxy.requests().len(),
        1,
        "HTTPS_PROXY ignored without from_env"
    );
    gw.stop().await;
    let top = "proxy: { from_env: true, credentials: \"${PROXY_CRED}\" }";
    let gw = Gateway::start_with_env(&config(&mock.base_url(), &tls, top), env).await;
    assert_eq!(ask(&gw).await.status, 200);
    assert_eq!(proxy.requests().len(), 2);
    assert_eq!(proxy.tunnels(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn a_proxy_refusal_is_a_502_that_names_the_proxy() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = ConnectProxy::start().await.unwrap();
    let top = format!("proxy: {{ url: \"{}\" }}", proxy.url());
    let gw = Gateway::start(&config(&mock.base_url(), "", &top)).await;

    // A plain http upstream goes through the tunnel too.
    assert_eq!(ask(&gw).await.status, 200);
    assert_eq!(proxy.tunnels(), 1);

    proxy.set_refusal(Some(403));
    // A new connection is needed: the pooled tunnel is cut by a restart of the gateway.
    gw.stop().await;
    let gw = Gateway::start(&config(&mock.base_url(), "", &top)).await;
    let r = ask(&gw).await;
    assert_connect_502(
        &r,
        "upstream_proxy_error",
        "egress proxy refused the tunnel (403)",
    );

    proxy.set_refusal(None);
    proxy.require_auth(Some("Basic c3ZjOnB3"));
    let r = ask(&gw).await;
    assert_connect_502(&r, "upstream_proxy_error", "requires authentication");
    assert_eq!(mock.request_count(), 1);
    gw.stop().await;

    // A proxy that is not there.
    proxy.shutdown();
    let top = "proxy: { url: \"http://127.0.0.1:9\" }";
    let gw = Gateway::start(&config(&mock.base_url(), "", top)).await;
    assert_connect_502(
        &ask(&gw).await,
        "upstream_proxy_error",
        "proxy could not be reached",
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_bad_tls_block_fails_the_config_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let check = |yaml: String| {
        let config = tollgate::config::Config::parse(&yaml).unwrap();
        match tollgate::state::Snapshot::build(config, &HashMap::<String, String>::new(), None) {
            Ok(_) => String::new(),
            Err(e) => e,
        }
    };
    let missing = dir.path().join("nope.pem");
    let e = check(config(
        "https://h/v1",
        &format!("    tls: {{ ca_file: {} }}", missing.display()),
        "",
    ));
    assert!(
        e.starts_with("upstreams.up.tls.ca_file: cannot read"),
        "{e}"
    );
    let e = check(config(
        "https://h/v1",
        "    tls: { client_cert_file: /x.pem }",
        "",
    ));
    assert!(
        e.starts_with("upstreams.up.tls.client_key: is required"),
        "{e}"
    );
    let junk = write(dir.path(), "junk.pem", "not a certificate");
    let e = check(config(
        "https://h/v1",
        &format!("    tls: {{ ca_file: {} }}", junk.display()),
        "",
    ));
    assert!(e.contains("holds no PEM certificate"), "{e}");
    let e = check(config(
        "https://h/v1",
        "",
        "proxy: { url: \"https://p:1\" }",
    ));
    assert!(e.starts_with("proxy.url: must be an http:// proxy"), "{e}");
    let e = check(config(
        "https://h/v1",
        "",
        "proxy: { url: \"http://u:p@p:1\" }",
    ));
    assert!(e.contains("must not carry credentials"), "{e}");
    // A key that does not belong to the certificate; the error quotes no key material.
    let ca = Ca::new("ca");
    let a = ca.leaf(&["a"], true);
    let b = ca.leaf(&["b"], true);
    let cert = write(dir.path(), "a.pem", &a.cert_pem);
    let key = write(dir.path(), "b.key", &b.key_pem);
    let e = check(config(
        "https://h/v1",
        &format!(
            "    tls: {{ client_cert_file: {}, client_key: \"file:{}\" }}",
            cert.display(),
            key.display()
        ),
        "",
    ));
    assert!(e.starts_with("upstreams.up.tls.client_key"), "{e}");
    assert!(!e.contains("PRIVATE KEY"), "{e}");

    // The listener's files are read before the port is bound; errors name the field.
    let listener = |cert: &Path, key: &Path| {
        let yaml = format!(
            "cert_file: {}\nkey_file: {}\n",
            cert.display(),
            key.display()
        );
        let cfg: tollgate::config::ServerTlsConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        match tollgate::server::tls::ListenerTls::from_config(&cfg) {
            Ok(_) => String::new(),
            Err(e) => e,
        }
    };
    let e = listener(&missing, &key);
    assert!(e.starts_with("server.tls.cert_file: cannot read"), "{e}");
    let e = listener(&cert, &key);
    assert!(
        e.starts_with("server.tls.key_file: does not fit cert_file"),
        "{e}"
    );
    assert!(!e.contains("PRIVATE KEY"), "{e}");
    let good = write(dir.path(), "a.key", &a.key_pem);
    assert_eq!(listener(&cert, &good), "");
}

// ---- the listener ----

/// A gateway config with `server.tls` from `tls` (YAML flow map), models `gpt` (the team
/// `certs` may use it only) and `other` on `mock`, team `certs` holding `fingerprint`.
fn listener_config(base_url: &str, tls: &str, fingerprint: &str) -> String {
    format!(
        r#"
server:
  tls: {tls}
upstreams:
  up:
    provider: openai
    base_url: {base_url}
models:
  gpt: {{ targets: [ {{ upstream: up }} ] }}
  other: {{ targets: [ {{ upstream: up }} ] }}
teams:
  demo: {{ models: ["*"] }}
  certs: {{ models: ["gpt"], client_cert_sha256: ["{fingerprint}"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
"#
    )
}

/// A raw TLS connection to the gateway (HTTP/1.1, kept open), trusting `ca`.
struct RawTls {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

impl RawTls {
    async fn connect(addr: std::net::SocketAddr, ca: &Ca) -> RawTls {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.issuer.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        RawTls { stream }
    }

    /// The certificate the server presented on this connection.
    fn server_cert(&self) -> Vec<u8> {
        self.stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    /// `GET /health` on this connection; the status line.
    async fn health(&mut self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        // The answer is small: read until its head and body (content-length) are in.
        loop {
            let n = self.stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return head.lines().next().unwrap_or_default().to_owned();
                }
            }
        }
    }
}

fn der_of(leaf: &Leaf) -> Vec<u8> {
    leaf.chain()[0].to_vec()
}

#[tokio::test]
async fn the_listener_serves_tls_and_picks_up_a_replaced_certificate_without_dropping_connections()
{
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("listener CA");
    let first = ca.leaf(&["127.0.0.1"], false);
    let cert = write(dir.path(), "tls.crt", &first.cert_pem);
    let key = write(dir.path(), "tls.key", &first.key_pem);
    let mock = MockUpstream::start().await.unwrap();
    let tls = format!(
        "{{ cert_file: {}, key_file: {}, reload: 100ms }}",
        cert.display(),
        key.display()
    );
    let gw = Gateway::start(&listener_config(&mock.base_url(), &tls, &"0".repeat(64))).await;

    // HTTPS with HTTP/2 by ALPN, the API as usual.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = client
        .post(format!("https://{}/v1/chat/completions", gw.addr))
        .bearer_auth(common::DEMO_KEY)
        .json(&chat("gpt", "hello", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);

    // An HTTP/1.1 connection opened before the rotation.
    let mut old = RawTls::connect(gw.addr, &ca).await;
    assert_eq!(old.health().await, "HTTP/1.1 200 OK");
    assert_eq!(old.server_cert(), der_of(&first));

    // cert-manager writes a new pair.
    let second = ca.leaf(&["127.0.0.1"], false);
    std::fs::write(&key, &second.key_pem).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    // The files are looked at every 100 ms: new connections get the new certificate as soon as
    // it is picked up (each try is a real handshake; bounded).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let fresh = RawTls::connect(gw.addr, &ca).await;
        if fresh.server_cert() == der_of(&second) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The old connection still works, with the certificate it was made with.
    assert_eq!(old.health().await, "HTTP/1.1 200 OK");
    assert_eq!(old.server_cert(), der_of(&first));
    gw.stop().await;
}

/// On a TLS listener the console's session cookie is marked `Secure` (sent over HTTPS only).
#[tokio::test]
async fn on_a_tls_listener_the_console_cookie_is_secure() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("listener CA");
    let leaf = ca.leaf(&["127.0.0.1"], false);
    let cert = write(dir.path(), "tls.crt", &leaf.cert_pem);
    let key = write(dir.path(), "tls.key", &leaf.key_pem);
    let mock = MockUpstream::start().await.unwrap();
    let tls = format!(
        "{{ cert_file: {}, key_file: {} }}",
        cert.display(),
        key.display()
    );
    let yaml = format!(
        "{}admin: {{ sha256: {}, console: {{ enabled: true }} }}\n",
        listener_config(&mock.base_url(), &tls, &"0".repeat(64)),
        common::sha256_hex(common::ADMIN_KEY)
    );
    let gw = Gateway::start(&yaml).await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = client
        .post(format!("https://{}/console/login", gw.addr))
        .json(&serde_json::json!({ "key": common::ADMIN_KEY }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(&flag), "{flag} missing: {cookie}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_client_certificate_listed_for_a_team_authenticates_as_that_team() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("listener CA");
    let clients = Ca::new("client CA");
    let server = ca.leaf(&["127.0.0.1"], false);
    let member = clients.leaf(&["team-certs"], true);
    let fingerprint = hex::encode(sha2::Sha256::digest(der_of(&member)));
    let cert = write(dir.path(), "tls.crt", &server.cert_pem);
    let key = write(dir.path(), "tls.key", &server.key_pem);
    let client_ca = write(dir.path(), "clients.pem", &clients.pem());
    let mock = MockUpstream::start().await.unwrap();
    let tls = format!(
        "{{ cert_file: {}, key_file: {}, client_ca_file: {} }}",
        cert.display(),
        key.display(),
        client_ca.display()
    );
    let gw = Gateway::start(&listener_config(&mock.base_url(), &tls, &fingerprint)).await;
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    let identity = |leaf: &Leaf| {
        reqwest::Identity::from_pem(format!("{}{}", leaf.cert_pem, leaf.key_pem).as_bytes())
            .unwrap()
    };
    let with_cert = reqwest::Client::builder()
        .add_root_certificate(root.clone())
        .identity(identity(&member))
        .build()
        .unwrap();
    let without = reqwest::Client::builder()
        .add_root_certificate(root.clone())
        .build()
        .unwrap();
    let url = format!("https://{}/v1/chat/completions", gw.addr);
    let send = |client: &reqwest::Client, model: &str, key: Option<&str>| {
        let mut req = client.post(&url).json(&chat(model, "hello", false));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        async move { Reply::read(req.send().await.unwrap()).await }
    };

    // The certificate alone: team `certs`, which may use `gpt` and not `other`.
    let r = send(&with_cert, "gpt", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(&with_cert, "other", None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error()["code"], "model_not_allowed");
    // A key on the same connection decides: the demo key's team may use `other`; a wrong key
    // is 401, never the certificate's team.
    let r = send(&with_cert, "other", Some(common::DEMO_KEY)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(&with_cert, "gpt", Some("sk-wrong")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    // Neither a certificate nor a key.
    let r = send(&without, "gpt", None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    // A certificate from the right CA that no team lists.
    let stranger = reqwest::Client::builder()
        .add_root_certificate(root.clone())
        .identity(identity(&clients.leaf(&["nobody"], true)))
        .build()
        .unwrap();
    let r = send(&stranger, "gpt", None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    gw.stop().await;

    // require_client_cert: no certificate, no connection.
    let tls = format!(
        "{{ cert_file: {}, key_file: {}, client_ca_file: {}, require_client_cert: true }}",
        cert.display(),
        key.display(),
        client_ca.display()
    );
    let gw = Gateway::start(&listener_config(&mock.base_url(), &tls, &fingerprint)).await;
    let url = format!("https://{}/v1/chat/completions", gw.addr);
    assert!(without.post(&url).send().await.is_err());
    let r = Reply::read(
        with_cert
            .post(&url)
            .json(&chat("gpt", "hello", false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    gw.stop().await;
}

// ---- Redis over TLS ----

/// The machine's `redis-server` on a free loopback port with TLS only (`--port 0`), serving
/// `leaf`; `None` when it cannot be started with TLS here (then docs/TLS.md's manual check
/// applies). Stopped when dropped.
async fn redis_tls(dir: &Path, ca: &Ca, leaf: &Leaf) -> Option<(tokio::process::Child, u16)> {
    use tokio::io::AsyncBufReadExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let cert = write(dir, "redis.crt", &leaf.cert_pem);
    let key = write(dir, "redis.key", &leaf.key_pem);
    let ca_file = write(dir, "redis-ca.pem", &ca.pem());
    let mut child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&ca_file)
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take()?).lines();
    // Its own word that it listens; bounded.
    let ready = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Ready to accept connections") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !ready {
        eprintln!("redis-server could not be started with TLS: skipping the Redis TLS check");
        return None;
    }
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some((child, port))
}

#[tokio::test]
async fn the_limiter_reaches_redis_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("redis CA");
    let Some((_redis, port)) = redis_tls(dir.path(), &ca, &ca.leaf(&["127.0.0.1"], false)).await
    else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let ca_file = dir.path().join("redis-ca.pem");
    let limits = |tls: &str| {
        format!(
            "limits: {{ backend: redis, redis_url: \"rediss://127.0.0.1:{port}\", redis_timeout: 2s, on_backend_error: fail_closed{tls} }}"
        )
    };
    let yaml = |tls: &str| {
        config(&mock.base_url(), "", &limits(tls)).replace(
            "demo: { models: [\"*\"] }",
            "demo: { models: [\"*\"], requests_per_minute: 1 }",
        )
    };
    // Trusting the CA: one request admitted, the next refused by the count kept in Redis.
    let gw = Gateway::start(&yaml(&format!(
        ", redis_tls: {{ ca_file: {} }}",
        ca_file.display()
    )))
    .await;
    let r = ask(&gw).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = ask(&gw).await;
    assert_eq!(r.status, 429, "{}", r.body);
    gw.stop().await;
    // Without the CA, Redis's certificate is not trusted: fail_closed answers 503.
    let gw = Gateway::start(&yaml("")).await;
    let r = ask(&gw).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.error()["code"], "limiter_unavailable");
    gw.stop().await;
}

// ---- PostgreSQL over TLS ----

/// Whether the store's connection (named `app` in `pg_stat_activity`) is encrypted, as the
/// server sees it.
async fn pg_ssl_of(admin: &mut sqlx::PgConnection, app: &str) -> Option<bool> {
    sqlx::query_scalar::<_, bool>(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
         WHERE a.application_name = $1 LIMIT 1",
    )
    .bind(app)
    .fetch_optional(admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_store_speaks_tls_to_postgresql_as_sslmode_says() {
    use sqlx::Connection;
    let db = common::PgDb::create().await;
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let url = |app: &str| format!("{}{sep}application_name={app}", db.url);
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let server_tls: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let env = HashMap::<String, String>::new();
    let tls = |mode: &str, ca: Option<&Path>| {
        let mut yaml = format!("sslmode: {mode}\n");
        if let Some(ca) = ca {
            yaml.push_str(&format!("ca_file: {}\n", ca.display()));
        }
        serde_yaml_ng::from_str::<tollgate::config::PostgresTlsConfig>(&yaml).unwrap()
    };
    let connect = |app: &'static str, t: tollgate::config::PostgresTlsConfig| {
        let (url, env) = (url(app), env.clone());
        async move { tollgate::store::Store::connect_tls(&url, 1, Some(&t), &env).await }
    };

    let plain = connect("tg_tls_disable", tls("disable", None))
        .await
        .unwrap();
    assert_eq!(pg_ssl_of(&mut admin, "tg_tls_disable").await, Some(false));
    drop(plain);

    let required = connect("tg_tls_require", tls("require", None)).await;
    if server_tls != "on" {
        // A server without TLS: `require` refuses to go on in the clear.
        let e = required.err().unwrap_or_default();
        assert!(e.contains("cannot connect to the PostgreSQL store"), "{e}");
        return;
    }
    let _required = required.unwrap();
    assert_eq!(pg_ssl_of(&mut admin, "tg_tls_require").await, Some(true));

    // verify-full against a CA that did not sign the server's certificate: refused, saying why.
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &Ca::new("not the server's").pem());
    let e = connect("tg_tls_verify", tls("verify-full", Some(&ca)))
        .await
        .err()
        .unwrap_or_default();
    assert!(e.contains("certificate"), "{e}");
}
