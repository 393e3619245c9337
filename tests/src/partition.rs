//! A network partition on loopback: a TCP proxy between workers and their coordinator that can
//! cut the link the way a dropped network does. While cut, every connection open at the time,
//! and every one made meanwhile, goes silent for good: bytes are read and dropped, nothing is
//! closed, so neither end hears anything (no FIN, no RST), as when a container is disconnected
//! from its network. Connections made after the cut is healed are forwarded again; the silent
//! ones stay silent until the proxy is dropped, as a connection whose address is gone does.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One proxied connection: its two sockets and whether it has gone silent.
struct Link {
    client: TcpStream,
    upstream: TcpStream,
    silent: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    cut: AtomicBool,
    links: Mutex<Vec<Link>>,
    stopped: AtomicBool,
}

/// The proxy: listens on a free loopback port and forwards to `127.0.0.1:upstream`.
pub struct Partition {
    pub port: u16,
    state: Arc<State>,
}

impl Partition {
    pub fn start(upstream: u16) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the proxy");
        let port = listener.local_addr().expect("bound").port();
        let state = Arc::new(State::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if shared.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let silent = Arc::new(AtomicBool::new(shared.cut.load(Ordering::SeqCst)));
                let (Ok(c), Ok(u)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                shared.links.lock().unwrap().push(Link {
                    client,
                    upstream,
                    silent: silent.clone(),
                });
                let s2 = silent.clone();
                std::thread::spawn(move || pump(c, u, silent));
                std::thread::spawn(move || pump(u2, c2, s2));
            }
        });
        Partition { port, state }
    }

    /// Cuts the link: every open connection goes silent for good, and so does every new one
    /// until [`Partition::heal`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for link in self.state.links.lock().unwrap().iter() {
            link.silent.store(true, Ordering::SeqCst);
        }
    }

    /// New connections are forwarded again (the silent ones stay silent).
    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        for link in self.state.links.lock().unwrap().drain(..) {
            let _ = link.client.shutdown(Shutdown::Both);
            let _ = link.upstream.shutdown(Shutdown::Both);
        }
        // Wakes the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` until `from` ends; drops what arrives once `silent` is set (and then
/// leaves both sockets open: a partition delivers no close either).
fn pump(mut from: TcpStream, mut to: TcpStream, silent: Arc<AtomicBool>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    if !silent.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Write);
    }
}
