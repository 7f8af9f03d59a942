//! Typed reads of `config.json` fields, with errors naming the field.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{JanusError, Result};

pub(crate) fn cfg_err(msg: impl Into<String>) -> JanusError {
    JanusError::Config(msg.into())
}

/// Typed access to one `{cls, params}` section, with errors naming the field.
pub(crate) struct Section<'a> {
    pub(crate) name: &'static str,
    pub(crate) map: &'a Map<String, Value>,
}

impl<'a> Section<'a> {
    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                cfg_err(format!(
                    "{}.{key} must be a non-negative integer, got {v}",
                    self.name
                ))
            }),
        }
    }
    pub(crate) fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| cfg_err(format!("{}.{key} must be an integer, got {v}", self.name))),
        }
    }
    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| cfg_err(format!("{}.{key} must be a number, got {v}", self.name))),
        }
    }
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| cfg_err(format!("{}.{key} must be a string, got {v}", self.name))),
        }
    }
    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                cfg_err(format!(
                    "{}.{key} must be true or false, got {v}",
                    self.name
                ))
            }),
        }
    }
    pub(crate) fn opt_usize_list(&self, key: &str) -> Result<Option<Vec<usize>>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|v| v.as_u64().map(|x| x as usize))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| {
                    cfg_err(format!(
                        "{}.{key} must be a list of non-negative integers",
                        self.name
                    ))
                }),
            Some(v) => Err(cfg_err(format!(
                "{}.{key} must be a non-empty list of integers, got {v}",
                self.name
            ))),
        }
    }
    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| cfg_err(format!("{}.{key} is missing", self.name)))
    }
}

/// Returns `(cls, params)` of a `{cls, params}` section.
pub(crate) fn section<'a>(
    root: &'a Map<String, Value>,
    name: &'static str,
) -> Result<(&'a str, Section<'a>)> {
    let obj = root
        .get(name)
        .and_then(Value::as_object)
        .ok_or_else(|| cfg_err(format!("{name} is missing or not an object")))?;
    let cls = obj
        .get("cls")
        .and_then(Value::as_str)
        .ok_or_else(|| cfg_err(format!("{name}.cls is missing")))?;
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    let params = match obj.get("params") {
        None | Some(Value::Null) => EMPTY.get_or_init(Map::new),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(cfg_err(format!("{name}.params must be an object"))),
    };
    Ok((cls, Section { name, map: params }))
}

pub(crate) fn read_text(path: &Path, what: &str) -> Result<String> {
    if !path.exists() {
        return Err(JanusError::MissingFile {
            what: what.into(),
            path: path.into(),
        });
    }
    std::fs::read_to_string(path).map_err(|e| JanusError::BadFile {
        path: path.into(),
        reason: e.to_string(),
    })
}
