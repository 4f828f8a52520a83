//! Answers the dashboard's requests: GET and HEAD only, a token when one is set, and a
//! Host check on loopback without one (a web page elsewhere cannot make the browser
//! read the dashboard through a DNS name that points at 127.0.0.1).

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tiny_http::{Header, Method, Request, Response};

use super::data::Source;
use super::page;

/// The cookie a browser keeps the token in after opening `/?token=...` once.
const COOKIE: &str = "dedisk_token";

pub struct Site {
    pub source: Source,
    pub token: Option<String>,
    pub addr: SocketAddr,
    pub stale_after: std::time::Duration,
}

/// Reads the token: one line of at least 16 printable characters, in a file only its
/// owner can read (like ssh's keys: a token others can read is no secret).
pub fn read_token(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let meta = f.metadata()?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the token file {} can be read by other users (mode {:o}): chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    let mut text = String::new();
    f.by_ref()
        .take(4096)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim().to_string();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "the token file {} must hold one token of at least 16 printable characters without spaces",
            path.display()
        );
    }
    Ok(token)
}

/// Equal without telling a timing observer how much of the token was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `%41` -> `A`; anything malformed is kept as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(req: &'a Request, name: &'static str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

fn h(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

/// Sends `body` with the headers every answer has.
fn send(req: Request, status: u16, body: String, extra: Vec<Header>) {
    let head = *req.method() == Method::Head;
    let mut r = Response::from_string(if head { String::new() } else { body })
        .with_status_code(status)
        .with_header(h("Content-Type", "text/html; charset=utf-8"))
        // No script, no frames, nothing fetched from elsewhere: only inline style and
        // the inline SVG.
        .with_header(h(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .with_header(h("X-Content-Type-Options", "nosniff"))
        .with_header(h("Referrer-Policy", "no-referrer"))
        .with_header(h("X-Frame-Options", "DENY"))
        .with_header(h("Cache-Control", "no-store"));
    for x in extra {
        r = r.with_header(x);
    }
    if let Err(e) = req.respond(r) {
        log::debug!("answering a request: {e}");
    }
}

impl Site {
    pub fn handle(&self, req: Request) {
        if !matches!(req.method(), Method::Get | Method::Head) {
            let allow = vec![h("Allow", "GET, HEAD")];
            return send(
                req,
                405,
                page::message("405", "the dashboard is read-only"),
                allow,
            );
        }
        let url = req.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
        match &self.token {
            None => {
                if !self.host_ok(header(&req, "Host")) {
                    return send(
                        req,
                        403,
                        page::message(
                            "403",
                            "this dashboard answers to 127.0.0.1, [::1] and localhost only",
                        ),
                        Vec::new(),
                    );
                }
            }
            Some(token) => {
                let given = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("token="))
                    .map(percent_decode);
                if let Some(g) = given {
                    if same(&g, token) {
                        // Into a cookie, and out of the address bar and the history.
                        let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
                        // Only a path on this site ("//host/..." would leave it).
                        let to = if path.starts_with('/') && !path.starts_with("//") {
                            path
                        } else {
                            "/"
                        };
                        return send(
                            req,
                            303,
                            String::new(),
                            vec![h("Set-Cookie", &cookie), h("Location", to)],
                        );
                    }
                }
                let bearer = header(&req, "Authorization")
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .is_some_and(|t| same(t.trim(), token));
                let cookie = header(&req, "Cookie").is_some_and(|c| {
                    c.split(';')
                        .filter_map(|kv| kv.trim().split_once('='))
                        .any(|(k, v)| k == COOKIE && same(v, token))
                });
                if !bearer && !cookie {
                    return send(
                        req,
                        401,
                        page::message("401", "a token is required: open /?token=TOKEN (the token is in the file given to --token-file)"),
                        vec![h("WWW-Authenticate", "Bearer")],
                    );
                }
            }
        }
        let data = match self.source.get() {
            Ok(d) => d,
            Err(e) => {
                let text = format!("{e:#}");
                log::warn!("dashboard: {text}");
                return send(
                    req,
                    500,
                    page::message("the repository cannot be read", &text),
                    Vec::new(),
                );
            }
        };
        if path == "/" {
            return send(
                req,
                200,
                page::overview(&data, self.stale_after),
                Vec::new(),
            );
        }
        if let Some(hex) = path.strip_prefix("/snapshot/") {
            if let Ok(id) = hex.parse::<repo_format::SnapshotId>() {
                if let Some(p) = page::snapshot(&data, id) {
                    return send(req, 200, p, Vec::new());
                }
            }
        }
        send(
            req,
            404,
            page::message("404", "no such page or snapshot"),
            Vec::new(),
        )
    }

    /// Without a token, the Host header must name the loopback address served on.
    fn host_ok(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return false };
        let port = self.addr.port();
        ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .any(|name| host == format!("{name}:{port}") || (port == 80 && host == *name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_and_token_comparison() {
        assert_eq!(percent_decode("a%2Bb%3d+c%"), "a+b= c%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert!(same("abcdef", "abcdef"));
        assert!(!same("abcdef", "abcdeg"));
        assert!(!same("abc", "abcdef"));
    }
}
