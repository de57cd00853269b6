//! Stop signals.

use slog::{info, Logger};

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM.
pub async fn signal(log: Logger) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => info!(log, "stop requested"; "signal" => "SIGINT"),
            _ = term.recv() => info!(log, "stop requested"; "signal" => "SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        info!(log, "stop requested"; "signal" => "Ctrl-C");
    }
}
