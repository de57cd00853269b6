//! Stop signals.

use std::future::Future;

use slog::{info, Logger};

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM. The handlers are
/// installed when this is called, not when the future is first polled, so
/// a signal that comes while the role is still starting stops it gracefully
/// instead of killing the process. Call it inside the runtime.
pub fn signal(log: Logger) -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let listeners = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
        async move {
            match listeners {
                (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
                    _ = interrupt.recv() => info!(log, "stop requested"; "signal" => "SIGINT"),
                    _ = terminate.recv() => info!(log, "stop requested"; "signal" => "SIGTERM"),
                },
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    info!(log, "stop requested"; "signal" => "SIGINT");
                }
            }
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = tokio::signal::ctrl_c().await;
        info!(log, "stop requested"; "signal" => "Ctrl-C");
    }
}
