//! Runs pgseal-proxy in-process on its own tokio runtime, for the duration of a test.

use std::collections::HashMap;
use std::net::SocketAddr;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use pgseal_proxy::{Config, Server};

/// Name of the proxy's runtime threads, so a panic there can be told from a test's own.
const THREAD_NAME: &str = "pgseal-proxy-test-worker";
static PROXY_PANICKED: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

/// Whether any proxy thread panicked (the proxy must never panic, whatever the input).
pub fn proxy_panicked() -> bool {
    PROXY_PANICKED.load(Ordering::SeqCst)
}

fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(THREAD_NAME) {
                PROXY_PANICKED.store(true, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// A running proxy; stopped on drop.
pub struct TestProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The metrics endpoint, when configured.
    pub metrics_addr: Option<SocketAddr>,
    /// Live counters.
    pub metrics: std::sync::Arc<pgseal_proxy::metrics::Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestProxy {
    /// Starts a proxy from TOML text; `env` supplies the variables it names for secrets.
    pub fn start(toml: &str, env: &[(&str, &str)]) -> TestProxy {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let resolved = Config::from_toml(toml)
            .unwrap()
            .resolve_with_env(|k| env.get(k).cloned())
            .unwrap();
        install_panic_hook();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(THREAD_NAME)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Server::bind(resolved).await.unwrap();
                ready_tx
                    .send((
                        server.local_addr().unwrap(),
                        server.metrics_addr(),
                        server.metrics(),
                    ))
                    .unwrap();
                server
                    .run(async move {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
        });
        let (addr, metrics_addr, metrics) = ready_rx.recv().unwrap();
        TestProxy {
            addr,
            metrics_addr,
            metrics,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Begins graceful shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Shuts down and waits for the proxy thread.
    pub fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.begin_shutdown();
        // Do not wait: sessions may be stuck on a test's own connections.
    }
}
