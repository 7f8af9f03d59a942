//! `image_url`s that are `http(s)` URLs, fetched when `--image-urls` allows
//! it. A client then makes the server open connections, so the default is
//! off, and `public` refuses addresses a client should not reach through
//! the server (loopback, private networks, link-local ones such as cloud
//! metadata services): the check is in the resolver, so a redirect or a
//! name that later resolves elsewhere cannot get around it.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Which `http(s)` image URLs the server fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageUrls {
    /// None: images come inline, as `data:` URLs.
    #[default]
    Off,
    /// Those on public addresses.
    Public,
    /// Any (a server whose clients may reach its network anyway).
    Any,
}

impl ImageUrls {
    /// `off`, `public` or `any`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "off" => Ok(Self::Off),
            "public" => Ok(Self::Public),
            "any" => Ok(Self::Any),
            other => Err(format!(
                "unknown --image-urls value {other:?} (off, public or any)"
            )),
        }
    }
}

/// Fetches image URLs under a policy, within a size and time limit.
pub struct ImageFetcher {
    policy: ImageUrls,
    max_bytes: usize,
    agent: ureq::Agent,
}

/// A whole fetch, redirects included, ends within this.
const TIMEOUT: Duration = Duration::from_secs(20);

impl ImageFetcher {
    /// A fetcher refusing files over `max_bytes`.
    pub fn new(policy: ImageUrls, max_bytes: usize) -> Self {
        let builder = ureq::AgentBuilder::new().timeout(TIMEOUT).redirects(3);
        let agent = match policy {
            ImageUrls::Public => builder.resolver(PublicOnly).build(),
            _ => builder.build(),
        };
        Self {
            policy,
            max_bytes,
            agent,
        }
    }

    /// The bytes at `url`, or why not, for a 400.
    pub fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        if self.policy == ImageUrls::Off {
            return Err("remote image URLs are not fetched by this server (see `janus serve --image-urls`); \
                 send the image inline as a data: URL (data:image/png;base64,...)"
                .into());
        }
        let response = self.agent.get(url).call().map_err(|e| match e {
            ureq::Error::Status(code, _) => format!("fetching {url} gave HTTP {code}"),
            ureq::Error::Transport(t) => format!("cannot fetch {url}: {t}"),
        })?;
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(self.max_bytes as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot fetch {url}: {e}"))?;
        if bytes.len() > self.max_bytes {
            return Err(format!(
                "the image at {url} is larger than {} bytes",
                self.max_bytes
            ));
        }
        Ok(bytes)
    }
}

/// Resolves names to public addresses only.
struct PublicOnly;

impl ureq::Resolver for PublicOnly {
    fn resolve(&self, netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
        let all: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
        let public: Vec<SocketAddr> = all.iter().copied().filter(|a| is_public(a.ip())).collect();
        if public.is_empty() && !all.is_empty() {
            return Err(std::io::Error::other(format!(
                "{netloc} is a loopback, private or link-local address, which --image-urls public does not fetch"
            )));
        }
        Ok(public)
    }
}

/// Whether `ip` is a global unicast address.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 198 && (b == 18 || b == 19))) // benchmarking
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80) // link-local
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
