//! Running the HTTP listeners: accept, admit or refuse each connection (a cap in all and per
//! client address), TLS when configured, HTTP/1.1 through hyper with a header-read deadline, a
//! request-body deadline and an idle cut-off, graceful shutdown; and the control plane's
//! background loops.
//!
//! The API and the agent protocol may share one listener or each have their own
//! (`--agent-listen`), so an operator can firewall the agent plane away from tenants.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request};
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use nimbus_control::config::HttpServerConfig;
use nimbus_control::Control;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use crate::tls::ServerTls;
use crate::{router_for, ApiState, Planes};

/// How `start_with` serves.
#[derive(Default)]
pub struct ServeOptions {
    /// Serve HTTPS with this certificate (plain HTTP when `None`).
    pub tls: Option<Arc<ServerTls>>,
    /// A separate listener for the agent protocol; the main listener then serves no agent routes.
    pub agent_listener: Option<TcpListener>,
    /// The operator's listener for `/metrics` (and `/healthz`), without credentials: bind it to
    /// a management address.
    pub metrics_listener: Option<TcpListener>,
    /// Opens `/metrics` on the main listener to a bearer of this token.
    pub metrics_token: Option<Arc<crate::metrics::Token>>,
}

pub struct ServerHandle {
    pub addr: SocketAddr,
    /// The agent protocol's own listener, when it has one.
    pub agent_addr: Option<SocketAddr>,
    /// The metrics listener's address, when there is one (plain HTTP).
    pub metrics_addr: Option<SocketAddr>,
    pub tls: Option<Arc<ServerTls>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
    background: Vec<JoinHandle<()>>,
    control: Control,
}

impl ServerHandle {
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr)
    }

    /// Where agents connect: the agent listener, or the main one.
    pub fn agent_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.agent_addr.unwrap_or(self.addr))
    }

    /// Stops accepting, lets in-flight requests finish, stops background loops.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        self.control.wake_all_agents();
        for b in &self.background {
            b.abort();
        }
        nimbus_control::reconcile::release(&self.control).await;
        let mut r = Ok(());
        for t in self.tasks {
            if let Ok(Err(e)) = t.await {
                r = Err(e);
            }
        }
        r
    }

    /// Resolves when the server stops on its own.
    pub async fn wait(mut self) -> std::io::Result<()> {
        match self.tasks.pop() {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

/// Serves the API (plain HTTP, one listener) and starts the reconcilers.
pub fn start(control: Control, listener: TcpListener) -> std::io::Result<ServerHandle> {
    start_with(control, listener, ServeOptions::default())
}

pub fn start_with(control: Control, listener: TcpListener, opts: ServeOptions) -> std::io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let mut state = ApiState::new(control.clone());
    state.metrics_token = opts.metrics_token.clone();
    let limits = control.config().http.clone();
    let hsts = opts.tls.as_ref().and_then(|_| {
        (limits.hsts_max_age_s > 0).then(|| HeaderValue::from_str(&format!("max-age={}", limits.hsts_max_age_s)).ok()).flatten()
    });
    let mut tasks = Vec::new();
    let mut agent_addr = None;
    let main_planes = match opts.agent_listener {
        Some(agent_listener) => {
            agent_addr = Some(agent_listener.local_addr()?);
            let l = Arc::new(Listen::new(router_for(state.clone(), Planes::AGENT), &limits, opts.tls.clone(), hsts.clone()));
            tasks.push(tokio::spawn(l.accept_loop(agent_listener, rx.clone())));
            Planes::TENANT
        }
        None => Planes::ALL,
    };
    let mut metrics_addr = None;
    if let Some(metrics_listener) = opts.metrics_listener {
        metrics_addr = Some(metrics_listener.local_addr()?);
        // Plain HTTP, as scrapers on a management network usually are; nothing in it
        // authenticates anyone.
        let l = Arc::new(Listen::new(router_for(state.clone(), Planes::METRICS), &limits, None, None));
        tasks.push(tokio::spawn(l.accept_loop(metrics_listener, rx.clone())));
    }
    let l = Arc::new(Listen::new(router_for(state, main_planes), &limits, opts.tls.clone(), hsts));
    tasks.push(tokio::spawn(l.accept_loop(listener, rx)));
    let mut background = vec![nimbus_control::reconcile::spawn(control.clone()), nimbus_control::webhook_delivery::spawn(control.clone())];
    background.extend(nimbus_control::notify::spawn_replica_wakeups(&control));
    background.push(nimbus_control::idempotency::spawn_liveness(control.clone()));
    if let Some(t) = &opts.tls {
        background.push(t.spawn_reloader(Duration::from_millis(limits.tls_reload_poll_ms)));
    }
    Ok(ServerHandle { addr, agent_addr, metrics_addr, tls: opts.tls, shutdown: tx, tasks, background, control })
}

/// Open connections, in all and per client address.
struct ConnTable {
    max: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it frees its place.
struct Admitted {
    table: Arc<ConnTable>,
    ip: IpAddr,
}

impl ConnTable {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max_per_ip || self.total.load(Ordering::Relaxed) >= self.max {
            if *n == 0 {
                m.remove(&ip);
            }
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Admitted { table: self.clone(), ip })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut m = self.table.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
        self.table.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// In a request's extensions when it came over HTTPS (the console's cookie is then `Secure`).
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// One listener's way of serving.
struct Listen {
    app: Router,
    tls: Option<Arc<ServerTls>>,
    hsts: Option<HeaderValue>,
    header_timeout: Duration,
    body_timeout: Duration,
    idle_timeout: Duration,
    conns: Arc<ConnTable>,
}

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 70\r\n\r\n{\"error\":{\"code\":\"unavailable\",\"message\":\"too many open connections\"}}";
const PLAIN_TO_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 92\r\n\r\n{\"error\":{\"code\":\"https_required\",\"message\":\"This server accepts HTTPS only; use https://.\"}}";

impl Listen {
    fn new(app: Router, limits: &HttpServerConfig, tls: Option<Arc<ServerTls>>, hsts: Option<HeaderValue>) -> Self {
        Listen {
            app,
            tls,
            hsts,
            header_timeout: Duration::from_millis(limits.header_read_timeout_ms),
            body_timeout: Duration::from_millis(limits.body_read_timeout_ms),
            idle_timeout: Duration::from_millis(limits.idle_timeout_ms),
            conns: Arc::new(ConnTable {
                max: limits.max_connections,
                max_per_ip: limits.max_connections_per_ip,
                total: AtomicUsize::new(0),
                per_ip: Mutex::new(HashMap::new()),
            }),
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) -> std::io::Result<()> {
        let mut conns = JoinSet::new();
        let for_conns = stop.clone();
        loop {
            tokio::select! {
                () = stopped(&mut stop) => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                r = listener.accept() => match r {
                    Ok((stream, peer)) => match self.conns.admit(peer.ip()) {
                        Some(admitted) => {
                            conns.spawn(self.clone().serve_conn(stream, peer, admitted, for_conns.clone()));
                        }
                        None => {
                            conns.spawn(write_and_close(stream, REFUSED));
                        }
                    },
                    // Out of file descriptors or a connection reset before accept: not the
                    // listener's fault; back off a moment rather than spin or stop serving.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        while conns.join_next().await.is_some() {}
        Ok(())
    }

    /// `_admitted` holds the connection's place in the caps until this returns.
    async fn serve_conn(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, _admitted: Admitted, stop: watch::Receiver<bool>) {
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return self.serve_io(stream, peer, stop).await;
        };
        // A plain-HTTP request on the HTTPS port gets an answer it can read, not a TLS alert.
        let mut first = [0u8; 1];
        match tokio::time::timeout(self.header_timeout, stream.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == 0x16 => {}
            Ok(Ok(1)) => return write_and_close(stream, PLAIN_TO_TLS).await,
            _ => return,
        }
        match tokio::time::timeout(self.header_timeout, tls.acceptor().accept(stream)).await {
            Ok(Ok(s)) => self.serve_io(s, peer, stop).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    async fn serve_io<I>(&self, io: I, peer: SocketAddr, mut stop: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked { inner: io, activity: activity.clone() });
        let (app, hsts, body_timeout, act) = (self.app.clone(), self.hsts.clone(), self.body_timeout, activity.clone());
        let over_tls = self.tls.is_some();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let busy = act.begin();
            let (app, hsts) = (app.clone(), hsts.clone());
            async move {
                let mut req = req.map(|b| {
                    if b.is_end_stream() {
                        axum::body::Body::new(b)
                    } else {
                        axum::body::Body::new(DeadlineBody::new(b, body_timeout))
                    }
                });
                req.extensions_mut().insert(ConnectInfo(peer));
                if over_tls {
                    req.extensions_mut().insert(OverTls);
                }
                let mut resp = match app.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                if let Some(h) = hsts {
                    resp.headers_mut().insert(axum::http::header::STRICT_TRANSPORT_SECURITY, h);
                }
                drop(busy);
                Ok::<_, Infallible>(resp)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(self.header_timeout).keep_alive(true);
        let conn = builder.serve_connection(io, svc).with_upgrades();
        tokio::pin!(conn);
        let mut closing = false;
        loop {
            let idle_at = activity.idle_deadline(self.idle_timeout);
            tokio::select! {
                _ = conn.as_mut() => break,
                _ = tokio::time::sleep_until(idle_at.into()), if !closing => {
                    // Nothing in flight and no byte either way for the whole window (a reader
                    // that stopped reading its answer, say): cut it; there is nothing to finish.
                    if activity.idle_for(self.idle_timeout) {
                        tracing::debug!(%peer, "idle connection closed");
                        break;
                    }
                }
                () = stopped(&mut stop), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

async fn write_and_close(mut stream: TcpStream, answer: &'static [u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// When a connection last moved a byte, and how many requests it has in a handler.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Self {
        Activity { epoch: Instant::now(), last_ms: AtomicU64::new(0), in_flight: AtomicUsize::new(0) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Instant::now() + idle;
        }
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }

    fn idle_for(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && self.idle_deadline(idle) <= Instant::now()
    }
}

/// The connection's byte stream, noting each byte that moves.
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that must arrive whole within a deadline counted from the request's start: a
/// client trickling its body a byte at a time gets an error instead of holding a handler.
struct DeadlineBody {
    inner: Incoming,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
struct BodyTimedOut(Duration);

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        DeadlineBody { inner, limit, deadline: Box::pin(tokio::time::sleep(limit)) }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
