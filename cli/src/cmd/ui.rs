//! `dedisk ui --listen ADDR`: the read-only dashboard (see `crate::ui`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::args::{Global, UiArgs};
use crate::context::{open_repo, Outcome, CANCEL};
use crate::output;
use crate::ui::{data::Source, http::Site};

/// Requests answered at once (a page is a few milliseconds once the data is read).
const WORKERS: usize = 4;

pub fn ui(g: &Global, a: &UiArgs) -> Result<Outcome> {
    let addr: SocketAddr = a
        .listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {}", a.listen))?
        .next()
        .with_context(|| format!("--listen {}: no address", a.listen))?;
    let token = a
        .token_file
        .as_deref()
        .map(crate::ui::http::read_token)
        .transpose()?;
    if !addr.ip().is_loopback() && token.is_none() {
        bail!(
            "--listen {addr} is reachable from other hosts: give --token-file (or listen on 127.0.0.1)"
        );
    }
    let mut out = Outcome::default();
    let repo = Arc::new(open_repo(g, &mut out)?);
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| anyhow::anyhow!("listening on {local}: {e}"))?;
    let site = Site {
        source: Source::new(repo, a.reports.clone()),
        token,
        addr: local,
        stale_after: a.stale_after,
    };
    let url = format!("http://{local}/");
    if g.json {
        output::json(&serde_json::json!({"type": "listening", "url": url, "exports": []}));
    } else {
        output::line(format!(
            "dashboard at {url}{} (read-only; Ctrl-C stops)",
            if site.token.is_some() {
                "?token=TOKEN"
            } else {
                ""
            }
        ));
    }
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                match server.recv_timeout(Duration::from_millis(300)) {
                    Ok(Some(req)) => site.handle(req),
                    Ok(None) => {}
                    Err(e) => log::warn!("dashboard: {e}"),
                }
                if CANCEL.check().is_err() {
                    return;
                }
            });
        }
    });
    Ok(out)
}
