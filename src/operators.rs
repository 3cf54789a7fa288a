//! The operator endpoints, the metrics endpoint(s) (HTTP, `metrics`) and the control socket
//! (`vgpud status`, `control`), served together on one thread of their own by a single-threaded
//! tokio runtime, the HTTP side by hyper's HTTP/1 server.
//!
//! Anyone who may connect to them is a local user, and none of them may cost a VM anything. So
//! each endpoint takes at most `MAX_CONNECTIONS` at once and closes any other at once (a VM's
//! descriptors are never spent on them); a request must arrive whole within `REQUEST_TIMEOUT`
//! and fit in `MAX_REQUEST_BYTES`; every connection ends `CONNECTION_TIMEOUT` after it was
//! taken, answered or not; and there is no thread per connection.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::control;
use crate::guestlog::GuestLog;
use crate::hub::registry::Registry;
use crate::metrics::{self, Endpoint, Metrics};

/// Connections one endpoint holds at once (a scraper and a few people are the expected load).
pub const MAX_CONNECTIONS: usize = 8;
/// A request (HTTP: its request line and headers) must be in within this long...
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// ...and be no longer than this (hyper's smallest read buffer, 8 KiB, for HTTP).
pub const MAX_REQUEST_BYTES: usize = 8192;
/// Header lines an HTTP request may have.
pub const MAX_HEADERS: usize = 32;
/// A connection ends this long after it was taken, whatever it is doing: a client that does not
/// read its answer holds it no longer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed accept (out of descriptors, say) the endpoint rests this long.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What an endpoint answers.
enum Service {
    Metrics(Arc<Metrics>),
    Status(Arc<Registry>),
}

enum Socket {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// An endpoint bound (at start-up, so that a failure stops the daemon there) and waiting for
/// `spawn`.
pub struct Listening {
    socket: Socket,
    service: Service,
    log: GuestLog,
}

impl Listening {
    /// The control socket at `path` (see `control::bind_private`).
    pub fn control(
        path: &std::path::Path,
        registry: Arc<Registry>,
        group: Option<u32>,
    ) -> io::Result<Listening> {
        let listener = control::bind_private(path, group)?;
        listener.set_nonblocking(true)?;
        Ok(Listening {
            socket: Socket::Unix(listener),
            service: Service::Status(registry),
            log: GuestLog::new("control socket"),
        })
    }

    /// A metrics endpoint: a TCP address must be a loopback one (expose it further through a
    /// proxy that authenticates); a UNIX socket is created like the control socket.
    pub fn metrics(
        endpoint: &Endpoint,
        metrics: Arc<Metrics>,
        group: Option<u32>,
    ) -> io::Result<Listening> {
        let socket = match endpoint {
            Endpoint::Tcp(addr) => {
                if !addr.ip().is_loopback() {
                    return Err(io::Error::other(format!(
                        "{addr}: metrics listen on loopback addresses only"
                    )));
                }
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Socket::Tcp(l)
            }
            Endpoint::Unix(path) => {
                let l = control::bind_private(path, group)?;
                l.set_nonblocking(true)?;
                Socket::Unix(l)
            }
        };
        Ok(Listening {
            socket,
            service: Service::Metrics(metrics),
            log: GuestLog::new("metrics"),
        })
    }
}

/// Serves `endpoints` on a thread named "operators" (none if there are none).
pub fn spawn(endpoints: Vec<Listening>) -> io::Result<()> {
    if endpoints.is_empty() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("operators".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut loops = Vec::new();
                for endpoint in endpoints {
                    match Listener::adopt(endpoint.socket) {
                        Ok(listener) => loops.push(tokio::spawn(accept_loop(
                            listener,
                            Arc::new(endpoint.service),
                            endpoint.log,
                        ))),
                        Err(e) => log::error!("{}: {e}", endpoint.log.name()),
                    }
                }
                for l in loops {
                    let _ = l.await;
                }
            })
        })?;
    Ok(())
}

enum Listener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Listener {
    /// Needs the runtime: called on its thread.
    fn adopt(socket: Socket) -> io::Result<Listener> {
        Ok(match socket {
            Socket::Unix(l) => Listener::Unix(tokio::net::UnixListener::from_std(l)?),
            Socket::Tcp(l) => Listener::Tcp(tokio::net::TcpListener::from_std(l)?),
        })
    }

    async fn accept(&self) -> io::Result<Conn> {
        Ok(match self {
            Listener::Unix(l) => Conn::Unix(l.accept().await?.0),
            Listener::Tcp(l) => Conn::Tcp(l.accept().await?.0),
        })
    }
}

/// One of an endpoint's `MAX_CONNECTIONS`, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(listener: Listener, service: Arc<Service>, log: GuestLog) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let conn = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors, most likely: the connection waits in the backlog.
                log.warn(format_args!("cannot accept a connection: {e}"));
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&open) else {
            log.warn(format_args!(
                "{MAX_CONNECTIONS} clients connected already: refused one"
            ));
            refuse(conn, &service);
            continue;
        };
        let (service, log) = (service.clone(), log.clone());
        tokio::spawn(async move {
            let served = match conn {
                Conn::Unix(s) => timeout(CONNECTION_TIMEOUT, serve(s, &service)).await,
                Conn::Tcp(s) => timeout(CONNECTION_TIMEOUT, serve(s, &service)).await,
            };
            match served {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log.warn(format_args!("{e}")),
                Err(_) => log.warn(format_args!(
                    "a client was still connected after {CONNECTION_TIMEOUT:?}: closed"
                )),
            }
            drop(slot);
        });
    }
}

/// Tells a client past the cap why it is closed, if the socket takes it at once; never waits.
/// What the client sent already is read first (as much as is there): a socket closed with
/// unread data is reset, and the client would lose the answer.
fn refuse(conn: Conn, service: &Service) {
    let busy = match service {
        Service::Metrics(_) => metrics::BUSY,
        Service::Status(_) => control::BUSY,
    };
    // On the socket itself (non-blocking, as tokio keeps it): tokio's own try_read and
    // try_write do nothing on a socket its driver has not polled yet.
    match conn {
        Conn::Unix(s) => {
            if let Ok(s) = s.into_std() {
                tell(s, busy);
            }
        }
        Conn::Tcp(s) => {
            if let Ok(s) = s.into_std() {
                tell(s, busy);
            }
        }
    }
}

fn tell(mut socket: impl Read + Write, busy: &str) {
    let mut sent = [0u8; MAX_REQUEST_BYTES];
    let _ = socket.read(&mut sent);
    let _ = socket.write(busy.as_bytes());
}

async fn serve<S>(stream: S, service: &Service) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match service {
        Service::Metrics(m) => {
            let answer = service_fn(|request: hyper::Request<Incoming>| {
                let response = metrics::respond(m, request.method(), request.uri().path());
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            // One request per connection: the connection's deadline then bounds that request.
            http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(MAX_REQUEST_BYTES)
                .max_header_size(MAX_REQUEST_BYTES)
                .max_headers(MAX_HEADERS)
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(stream), answer)
                .await
                .map_err(io::Error::other)
        }
        Service::Status(registry) => {
            let mut stream = stream;
            let request = timeout(REQUEST_TIMEOUT, control::read_request(&mut stream))
                .await
                .map_err(|_| {
                    io::Error::other(format!("no request within {REQUEST_TIMEOUT:?}"))
                })??;
            let reply = control::reply(&request, registry);
            stream.write_all(reply.as_bytes()).await?;
            stream.shutdown().await
        }
    }
}
