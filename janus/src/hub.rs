//! Hugging Face hub models: downloaded into (and reused from) the standard
//! Hugging Face cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), from `HF_ENDPOINT` (a mirror) or the hub,
//! with `HF_TOKEN` (else the token file), as the Python libraries do.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo};

use crate::checkpoint::files::{index_shard_names, SIDE_FILES, WEIGHT_ENTRIES};
use crate::error::{JanusError, Result};

const HUB: &str = "https://huggingface.co";
/// Tries of a download that fails midway, each resuming where it stopped.
const RETRIES: usize = 3;

fn cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) if !dir.is_empty() => Cache::new(PathBuf::from(dir)),
        _ => Cache::from_env(),
    }
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn offline_from_env() -> bool {
    env_value("HF_HUB_OFFLINE")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// The hub's address: `HF_ENDPOINT` (a mirror), else huggingface.co.
fn endpoint() -> String {
    env_value("HF_ENDPOINT")
        .map(|e| e.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| HUB.to_owned())
}

/// `HF_TOKEN`, else the token file (`HF_TOKEN_PATH`, else `$HF_HOME/token`
/// as `huggingface-cli login` writes it).
fn token(cache: &Cache) -> Option<String> {
    env_value("HF_TOKEN").or_else(|| match env_value("HF_TOKEN_PATH") {
        Some(path) => std::fs::read_to_string(path)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
        None => cache.token(),
    })
}

/// The local snapshot folder of `model_id`, downloading what is missing
/// unless `offline` (or `HF_HUB_OFFLINE`); `progress` shows download bars.
pub(crate) fn fetch(model_id: &str, offline: bool, progress: bool) -> Result<PathBuf> {
    let offline = offline || offline_from_env();
    let cache = cache();
    if offline {
        return from_cache(model_id, &cache);
    }
    let endpoint = endpoint();
    let hub = Remote {
        model_id,
        endpoint: &endpoint,
        cache: &cache,
        token: token(&cache),
    };
    let api = ApiBuilder::from_cache(cache.clone())
        .with_endpoint(endpoint.clone())
        .with_token(hub.token.clone())
        .with_retries(RETRIES)
        .with_progress(progress)
        .build()
        .map_err(|e| hub.api_failed(e))?;
    let repo = api.model(model_id.to_owned());
    let listed: Vec<String> = repo
        .info()
        .map_err(|e| hub.api_failed(e))?
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .collect();
    let has = |f: &str| listed.iter().any(|l| l == f);
    if !has("config.json") {
        return Err(JanusError::Input(format!(
            "hub model {model_id:?} has no config.json; is it a Janus-Pro model?"
        )));
    }
    let config = hub.get(&repo, "config.json")?;
    for f in SIDE_FILES.iter().filter(|f| has(f)) {
        hub.get(&repo, f)?;
    }
    let entry = WEIGHT_ENTRIES.iter().find(|f| has(f)).ok_or_else(|| {
        JanusError::Input(format!(
            "hub model {model_id:?} has no weights in a supported format"
        ))
    })?;
    let first = hub.get(&repo, entry)?;
    if entry.ends_with(".index.json") {
        for shard in index_shard_names(&first)? {
            hub.get(&repo, &shard)?;
        }
    }
    Ok(config.parent().map(|p| p.to_path_buf()).unwrap_or_default())
}

/// One model on one hub, for its downloads and their errors.
struct Remote<'a> {
    model_id: &'a str,
    endpoint: &'a str,
    cache: &'a Cache,
    token: Option<String>,
}

impl Remote<'_> {
    /// The error for a failed hub call: a 404 or a refused token said as
    /// such, anything else with its reason.
    fn failed(&self, status: Option<u16>, reason: &str) -> JanusError {
        let (model_id, endpoint) = (self.model_id, self.endpoint);
        match status {
            Some(404) => JanusError::Input(format!(
                "hub model {model_id:?} (or one of its files) was not found at {endpoint}"
            )),
            Some(401 | 403) => JanusError::Input(format!(
                "{endpoint} refused access to hub model {model_id:?}: set HF_TOKEN to a token with access to it"
            )),
            _ => JanusError::Input(format!(
                "model {model_id:?} is not in the Hugging Face cache ({}) and could not be downloaded from {endpoint}: \
                 {reason}; check the id and your network, or pass a local model folder",
                self.cache.path().display()
            )),
        }
    }

    /// [`Self::failed`] for an error of hf-hub (its HTTP status, through retries).
    fn api_failed(&self, e: ApiError) -> JanusError {
        fn status(e: &ApiError) -> Option<u16> {
            match e {
                ApiError::RequestError(e) => http_status(e),
                ApiError::TooManyRetries(e) => status(e),
                _ => None,
            }
        }
        self.failed(status(&e), &e.to_string())
    }

    /// [`Self::failed`] for an error of a request of ours.
    fn http_failed(&self, e: ureq::Error) -> JanusError {
        self.failed(http_status(&e), &e.to_string())
    }

    /// `name` from the cache, else downloaded. The hub's commit and ETag
    /// name folders in the cache, so they are checked first (a mirror could
    /// send `../`), and the file's size after.
    fn get(&self, repo: &ApiRepo, name: &str) -> Result<PathBuf> {
        if let Some(path) = self
            .cache
            .repo(Repo::model(self.model_id.to_owned()))
            .get(name)
        {
            return Ok(path);
        }
        let url = repo.url(name);
        let size = self.check_headers(&url, name)?;
        let path = repo.get(name).map_err(|e| self.api_failed(e))?;
        let got = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if got != size {
            remove_download(&path);
            return Err(self.failed(
                None,
                &format!(
                    "{name} arrived with {got} of its {size} bytes; run again to fetch it anew"
                ),
            ));
        }
        Ok(path)
    }

    /// The size the hub gives for `url`, after checking that its commit and
    /// ETag are plain names. As hf-hub does, the headers are the first
    /// response's after relative redirects (a renamed repo); an absolute one
    /// (LFS files on a CDN) is asked only for the size.
    fn check_headers(&self, url: &str, name: &str) -> Result<u64> {
        let agent = ureq::AgentBuilder::new().redirects(0).build();
        let call = |agent: &ureq::Agent, url: &str| {
            let mut request = agent.get(url).set("Range", "bytes=0-0");
            if let Some(token) = &self.token {
                request = request.set("Authorization", &format!("Bearer {token}"));
            }
            request.call().map_err(|e| self.http_failed(e))
        };
        let mut response = call(&agent, url)?;
        for _ in 0..5 {
            match response.header("location") {
                Some(to) if to.starts_with('/') && (300..400).contains(&response.status()) => {
                    let origin = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
                    response = call(&agent, &format!("{origin}{to}"))?;
                }
                _ => break,
            }
        }
        let plain = |v: &str| {
            !v.is_empty()
                && !v.starts_with('.')
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let commit = response.header("x-repo-commit").unwrap_or("").to_owned();
        let etag = response
            .header("x-linked-etag")
            .or(response.header("etag"))
            .unwrap_or("")
            .replace('"', "");
        if !plain(&commit) || !plain(&etag) {
            return Err(self.failed(
                None,
                &format!("the hub sent an unusable commit {commit:?} or ETag {etag:?} for {name}"),
            ));
        }
        let total = |r: &ureq::Response| {
            r.header("content-range")
                .and_then(|v| v.rsplit('/').next()?.parse().ok())
        };
        let size = match (
            total(&response),
            response.header("x-linked-size"),
            response.header("location"),
        ) {
            (Some(size), _, _) => Some(size),
            (None, Some(linked), _) => linked.parse().ok(),
            // Without the token: it is the hub's, not the CDN's.
            (None, None, Some(cdn)) => total(
                &ureq::get(cdn)
                    .set("Range", "bytes=0-0")
                    .call()
                    .map_err(|e| self.http_failed(e))?,
            ),
            _ => None,
        };
        size.ok_or_else(|| self.failed(None, &format!("the hub sent no size for {name}")))
    }
}

/// The HTTP status of a response that was an error.
fn http_status(e: &ureq::Error) -> Option<u16> {
    match e {
        ureq::Error::Status(code, _) => Some(*code),
        ureq::Error::Transport(_) => None,
    }
}

/// Removes a downloaded file from the cache: its snapshot link and the blob.
fn remove_download(pointer: &Path) {
    if let Ok(blob) = std::fs::canonicalize(pointer) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(pointer);
}

fn from_cache(model_id: &str, cache: &Cache) -> Result<PathBuf> {
    let repo = cache.repo(Repo::model(model_id.to_owned()));
    let missing = || {
        JanusError::Input(format!(
            "model {model_id:?} is not in the Hugging Face cache ({}) and offline mode is on \
             (HF_HUB_OFFLINE or --offline); download it once while online, or pass a local model folder",
            cache.path().display()
        ))
    };
    let config = repo.get("config.json").ok_or_else(missing)?;
    let dir = config
        .parent()
        .map(|p| p.to_path_buf())
        .ok_or_else(missing)?;
    let weights_cached = WEIGHT_ENTRIES.iter().any(|f| match repo.get(f) {
        Some(p) if f.ends_with(".index.json") => {
            index_shard_names(&p).is_ok_and(|shards| shards.iter().all(|s| repo.get(s).is_some()))
        }
        Some(_) => true,
        None => false,
    });
    if !weights_cached || repo.get("tokenizer.json").is_none() {
        return Err(missing());
    }
    Ok(dir)
}
