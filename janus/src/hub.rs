//! Hugging Face hub models: downloaded into (and reused from) the standard
//! Hugging Face cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), as the Python libraries do.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};

use crate::checkpoint::files::{index_shard_names, SIDE_FILES, WEIGHT_ENTRIES};
use crate::error::{JanusError, Result};

fn cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) if !dir.is_empty() => Cache::new(PathBuf::from(dir)),
        _ => Cache::from_env(),
    }
}

fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
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
    let unreachable = |e: hf_hub::api::sync::ApiError| {
        JanusError::Input(format!(
            "model {model_id:?} is not in the Hugging Face cache ({}) and could not be downloaded: {e}; \
             check the id and your network, or pass a local model folder",
            cache.path().display()
        ))
    };
    let api = ApiBuilder::from_cache(cache.clone())
        .with_progress(progress)
        .build()
        .map_err(unreachable)?;
    let repo = api.model(model_id.to_owned());
    let listed: Vec<String> = repo
        .info()
        .map_err(unreachable)?
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
    let config = repo.get("config.json").map_err(unreachable)?;
    for f in SIDE_FILES.iter().filter(|f| has(f)) {
        repo.get(f).map_err(unreachable)?;
    }
    let entry = WEIGHT_ENTRIES.iter().find(|f| has(f)).ok_or_else(|| {
        JanusError::Input(format!(
            "hub model {model_id:?} has no weights in a supported format"
        ))
    })?;
    let first = repo.get(entry).map_err(unreachable)?;
    if entry.ends_with(".index.json") {
        for shard in index_shard_names(&first)? {
            repo.get(&shard).map_err(unreachable)?;
        }
    }
    Ok(config.parent().map(|p| p.to_path_buf()).unwrap_or_default())
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
