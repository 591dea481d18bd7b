//! Queue URLs: which backend a URL names ([`Scheme`]) and the parsed URL
//! ([`QueueUrl`]), with its password kept out of errors and logs.

use std::fmt;

use crate::error::{Error, Result};

/// Which kind of system a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheme {
    /// `grpc://` (plain) or `grpcs://` (TLS, [`QueueUrl::tls`]): the workq
    /// queue service.
    Grpc,
    /// `redis://`: a `rediswq`-style Redis queue.
    Redis,
    /// `amqp://`: a RabbitMQ queue.
    Amqp,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Grpc => "grpc",
            Scheme::Redis => "redis",
            Scheme::Amqp => "amqp",
        })
    }
}

/// A parsed queue URL: scheme plus the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrl {
    /// The URL as given.
    pub url: String,
    /// Its scheme.
    pub scheme: Scheme,
    /// What follows `scheme://` (for `grpc`, `host:port`, or several
    /// `host:port` separated by commas: [`QueueUrl::endpoints`]).
    pub authority: String,
    /// Whether the connection uses TLS (`grpcs://`).
    pub tls: bool,
}

impl QueueUrl {
    /// Parses `url`, checking its scheme and that it names a host.
    pub fn parse(url: &str) -> Result<QueueUrl> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected scheme://host:port, e.g. grpc://127.0.0.1:50051"))?;
        let lower = scheme.to_ascii_lowercase();
        let tls = lower == "grpcs";
        let scheme = match lower.as_str() {
            "grpc" | "grpcs" => Scheme::Grpc,
            "redis" => Scheme::Redis,
            "amqp" => Scheme::Amqp,
            other => {
                return Err(invalid(&format!(
                    "unknown scheme {other:?} (known: grpc, grpcs, redis, amqp)"
                )));
            }
        };
        let authority = rest.trim_end_matches('/').to_owned();
        if authority.is_empty() {
            return Err(invalid("no host after the scheme"));
        }
        if scheme == Scheme::Grpc {
            if authority.contains('/') {
                return Err(invalid(
                    "a grpc:// or grpcs:// URL has no path: grpc://host:port",
                ));
            }
            for endpoint in authority.split(',') {
                let port_ok = endpoint
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !port_ok {
                    return Err(invalid(
                        "expected grpc://host:port with a numeric port \
                         (several replicas: grpc://a:50051,b:50051)",
                    ));
                }
            }
        }
        Ok(QueueUrl {
            url: url.to_owned(),
            scheme,
            authority,
            tls,
        })
    }
}

impl QueueUrl {
    /// The host part of `authority` (of its first endpoint, if it lists
    /// several; for `grpcs://`, the name the server's certificate must
    /// carry), without brackets around an IPv6 address.
    pub fn host(&self) -> &str {
        host_of(self.endpoints().next().unwrap_or_default())
    }

    /// The `host:port` endpoints of a `grpc://` URL: one, or the replicas
    /// of `grpc://a:50051,b:50051`, in the order given.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.authority.split(',')
    }

    /// The URL with its password, if it has one, replaced by `***`: what errors
    /// and logs show.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

/// The host of one `host:port` (user info and IPv6 brackets removed).
pub(crate) fn host_of(authority: &str) -> &str {
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `url` with the password of its user info replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
