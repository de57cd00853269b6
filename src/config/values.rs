//! The value parsers: each says what it expected; `explain` adds the
//! variable's name and the value given.

use std::net::SocketAddr;

use super::settings::{CorsOrigins, Rate};

/// An integer from `min` to `max`.
pub(super) fn int(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |text| {
        let expected = if max == u64::MAX {
            "expected a non-negative integer".to_owned()
        } else {
            format!("expected an integer from {min} to {max}")
        };
        text.trim().parse::<u64>().ok().filter(|n| (min..=max).contains(n)).ok_or(expected)
    }
}

pub(super) fn flag(text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

pub(super) fn share(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| (0.0..=1.0).contains(s))
        .ok_or_else(|| "expected a share from 0 to 1".into())
}

pub(super) fn rate(text: &str) -> Result<Rate, String> {
    let text = text.trim();
    if text == "max" {
        return Ok(Rate::Max);
    }
    text.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(Rate::PerMinute)
        .ok_or_else(|| "expected a positive number of events per minute, or \"max\"".into())
}

pub(super) fn address(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| "expected an address like 0.0.0.0:8080".into())
}

pub(super) fn brokers(text: &str) -> Result<String, String> {
    let valid = text.split(',').all(|b| is_host_port(b.trim()));
    (valid || text.trim().is_empty())
        .then(|| text.trim().to_owned())
        .ok_or_else(|| "expected host:port[,host:port...]".into())
}

pub(super) fn topic_prefix(text: &str) -> Result<String, String> {
    valid_topic(text).then(|| text.to_owned()).ok_or_else(|| "expected a topic name prefix of [A-Za-z0-9._-]".into())
}

pub(super) fn topic_name(text: &str) -> Result<String, String> {
    valid_topic(text)
        .then(|| text.to_owned())
        .ok_or_else(|| "expected a topic name of 1 to 249 characters [A-Za-z0-9._-]".into())
}

pub(super) fn group_id(text: &str) -> Result<String, String> {
    (!text.trim().is_empty()).then(|| text.to_owned()).ok_or_else(|| "expected a non-empty group id".into())
}

pub(super) fn sql_identifier(text: &str) -> Result<String, String> {
    valid_identifier(text)
        .then(|| text.to_owned())
        .ok_or_else(|| "expected a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63)".into())
}

pub(super) fn key_prefix(text: &str) -> Result<String, String> {
    (!text.is_empty() && text.len() <= 64 && !text.contains([' ', '{', '}', ':']))
        .then(|| text.to_owned())
        .ok_or_else(|| "expected 1 to 64 characters without spaces, braces or ':'".into())
}

pub(super) fn cors_origins(text: &str) -> Result<CorsOrigins, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(CorsOrigins::Any);
    }
    let origins: Vec<String> =
        text.split(',').map(|o| o.trim().trim_end_matches('/').to_owned()).filter(|o| !o.is_empty()).collect();
    let valid = |o: &String| {
        o.split_once("://")
            .is_some_and(|(scheme, host)| matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/'))
    };
    origins
        .iter()
        .all(valid)
        .then_some(CorsOrigins::List(origins))
        .ok_or_else(|| "expected `*` or origins like https://app.example.com".into())
}

pub(super) fn networks(text: &str) -> Result<Vec<ipnet::IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| n.parse::<ipnet::IpNet>().or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from)).ok())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "expected networks like 10.0.0.0/8 or addresses, comma-separated".into())
}

pub(super) fn is_host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

pub(super) fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

pub(super) fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub(super) fn parse_options(text: &str) -> Option<Vec<(String, String)>> {
    text.split(',')
        .map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then(|| (key.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// The URL with any password replaced, for logs.
pub(super) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:<redacted>@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
