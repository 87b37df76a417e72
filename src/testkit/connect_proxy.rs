//! A mock HTTP CONNECT proxy: the egress proxy of tests. It opens a tunnel to the authority a
//! `CONNECT host:port` names (loopback targets in tests) and copies bytes both ways, counting
//! them as they pass; it records each CONNECT's target and `Proxy-Authorization`, and can
//! refuse: a fixed status for every CONNECT (`set_refusal`), or 407 unless the right
//! credentials come (`require_auth`). Only CONNECT is served; anything else gets 405.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{lock, wait_for};

/// One CONNECT request as the proxy received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// `host:port` from the request line.
    pub target: String,
    /// The `Proxy-Authorization` header, if sent.
    pub auth: Option<String>,
}

#[derive(Default)]
struct Shared {
    refusal: Mutex<Option<u16>>,
    required_auth: Mutex<Option<String>>,
    requests: Mutex<Vec<ConnectRequest>>,
    tunnels: AtomicU64,
    refused: AtomicU64,
    /// Bytes from the client (Tollgate) to the target.
    up: AtomicU64,
    /// Bytes from the target back to the client.
    down: AtomicU64,
    changed: Notify,
}

/// A running CONNECT proxy on `127.0.0.1:0`; stops when the last clone is dropped (open
/// tunnels are cut).
#[derive(Clone)]
pub struct ConnectProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    cancel: Arc<DropCancel>,
}

struct DropCancel(CancellationToken);

impl Drop for DropCancel {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl ConnectProxy {
    pub async fn start() -> io::Result<ConnectProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let cancel = CancellationToken::new();
        let (s, stop) = (shared.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let (s, stop) = (s.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(tcp, &s) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Ok(ConnectProxy {
            shared,
            addr,
            cancel: Arc::new(DropCancel(cancel)),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and cuts every open tunnel.
    pub fn shutdown(&self) {
        self.cancel.0.cancel();
    }

    /// Answer every CONNECT with `status` (407 adds `Proxy-Authenticate`); `None` tunnels.
    pub fn set_refusal(&self, status: Option<u16>) {
        *lock(&self.shared.refusal) = status;
    }

    /// Answer 407 unless `Proxy-Authorization` equals `value` (e.g. `Basic dTpw`); `None`
    /// lets anyone through.
    pub fn require_auth(&self, value: Option<&str>) {
        *lock(&self.shared.required_auth) = value.map(str::to_owned);
    }

    /// Every CONNECT received, in order (refused ones included).
    pub fn requests(&self) -> Vec<ConnectRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Tunnels opened (CONNECTs answered 200).
    pub fn tunnels(&self) -> u64 {
        self.shared.tunnels.load(Ordering::SeqCst)
    }

    /// CONNECTs refused.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Bytes passed from the client to the target, counted as they pass.
    pub fn bytes_up(&self) -> u64 {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Bytes passed from the target back to the client.
    pub fn bytes_down(&self) -> u64 {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` CONNECTs arrived; false on timeout.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        let s = &self.shared;
        wait_for(&s.changed, timeout, || lock(&s.requests).len() >= n).await
    }
}

/// One client connection: read the CONNECT head, refuse or tunnel.
async fn serve(mut client: TcpStream, s: &Shared) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let end = loop {
        let Ok(n) = client.read(&mut buf).await else {
            return;
        };
        if n == 0 || head.len() > 16 * 1024 {
            return;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (first.next().unwrap_or_default(), first.next());
    let auth = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("proxy-authorization")
            .then(|| v.trim().to_owned())
    });
    let Some(target) = target.filter(|_| method == "CONNECT").map(str::to_owned) else {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    lock(&s.requests).push(ConnectRequest {
        target: target.clone(),
        auth: auth.clone(),
    });
    let required = lock(&s.required_auth).clone();
    let refusal = match *lock(&s.refusal) {
        Some(status) => Some(status),
        None if required.is_some() && required != auth => Some(407),
        None => None,
    };
    if let Some(status) = refusal {
        s.refused.fetch_add(1, Ordering::SeqCst);
        s.changed.notify_waiters();
        let extra = if status == 407 {
            "proxy-authenticate: Basic realm=\"testkit\"\r\n"
        } else {
            ""
        };
        let answer = format!("HTTP/1.1 {status} Refused\r\n{extra}content-length: 0\r\n\r\n");
        let _ = client.write_all(answer.as_bytes()).await;
        return;
    }
    let Ok(upstream) = TcpStream::connect(&target).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        s.changed.notify_waiters();
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    s.tunnels.fetch_add(1, Ordering::SeqCst);
    s.changed.notify_waiters();
    // Anything the client sent after its head goes first.
    let early = head.split_off(end + 4);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    if !early.is_empty() {
        if uw.write_all(&early).await.is_err() {
            return;
        }
        s.up.fetch_add(early.len() as u64, Ordering::SeqCst);
    }
    let up = pump(&mut cr, &mut uw, &s.up);
    let down = pump(&mut ur, &mut cw, &s.down);
    tokio::join!(up, down);
}

/// Copy until either side closes, counting each chunk as it passes.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    count: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    }
    let _ = to.shutdown().await;
}
