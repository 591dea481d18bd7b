//! A TCP proxy whose connections a test can cut at once, as the kernel cuts
//! a killed process's: the far side sees the connection reset, not closed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::AbortHandle;

/// A proxy on 127.0.0.1 to one upstream address.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    /// Listens on an ephemeral port and forwards each connection to
    /// `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let held = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                held.lock().expect("lock").push(task.abort_handle());
            }
        });
        Proxy { addr, conns }
    }

    /// Drops every connection through the proxy.
    pub fn cut(&self) {
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }
}
