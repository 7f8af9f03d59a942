//! The OpenAI request bodies this server takes, and their translation into
//! the library's conversations and options. Unknown fields are accepted and
//! ignored (clients send many); known ones are checked, a bad value is a 400
//! naming the field.

use base64::Engine as _;
use image::DynamicImage;
use janus::{
    GenerateOptions, ImageProcessor, Message, SamplingParams, UnderstandOptions,
    DEFAULT_SYSTEM_PROMPT, USER_ROLE,
};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::image_fetch::ImageFetcher;

/// `POST /v1/chat/completions`.
#[derive(Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Server-sent events, chunk by chunk.
    #[serde(default)]
    pub stream: bool,
    /// `{"include_usage": true}` adds a last chunk with the token counts.
    pub stream_options: Option<Value>,
    /// Most tokens to generate (older name).
    pub max_tokens: Option<i64>,
    /// Most tokens to generate.
    pub max_completion_tokens: Option<i64>,
    /// 0 (or absent) is greedy decoding, as the official inference script.
    pub temperature: Option<f64>,
    /// Nucleus sampling (0.95 when absent).
    pub top_p: Option<f64>,
    /// Seed of the sampler.
    pub seed: Option<i64>,
    /// A stop string or a list of them.
    pub stop: Option<Value>,
    /// Answers to generate: 1.
    pub n: Option<i64>,
}

/// One message of a chat request.
#[derive(Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// A string, or a list of text and image parts.
    pub content: Option<Value>,
}

/// `POST /v1/images/generations`.
#[derive(Deserialize)]
pub struct ImagesRequest {
    /// What to draw.
    pub prompt: String,
    /// Images (1 when absent).
    pub n: Option<i64>,
    /// `auto` or a square `NxN`; larger or smaller than the model's native
    /// size is resized as `janus generate --size` does.
    pub size: Option<String>,
    /// `b64_json` (the only one: no URLs are served).
    pub response_format: Option<String>,
    /// Seed of the first image.
    pub seed: Option<i64>,
    /// Classifier-free guidance weight (5 when absent).
    pub cfg_weight: Option<f64>,
    /// Sampling temperature (1 when absent, as the official script).
    pub temperature: Option<f64>,
    /// Top-k sampling.
    pub top_k: Option<i64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Server-sent events: `image_generation.completed` per image.
    #[serde(default)]
    pub stream: bool,
    /// With `stream`, up to 3 `image_generation.partial_image` events per
    /// image: previews of the part drawn so far.
    pub partial_images: Option<i64>,
    /// With `stream`, also an `image_generation.progress` event (`step`,
    /// `total`) after every image-token step (a janus extension; the page
    /// at `/` draws its progress bar from them).
    #[serde(default)]
    pub stream_progress: bool,
}

/// The most images one request may ask for.
pub const MAX_IMAGES: usize = 16;

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message, Some(param))
}

/// A conversation ready for the engine.
pub struct ChatInput {
    /// The turns, ending with an empty assistant turn.
    pub conversation: Vec<Message>,
    /// The images of the user turns, in order.
    pub images: Vec<DynamicImage>,
    /// The system prompt: the request's system messages, or the official default.
    pub system_prompt: String,
    /// Sampling and length.
    pub options: UnderstandOptions,
    /// Stop strings.
    pub stop: Vec<String>,
}

/// The text of a message's content (a string or text parts), and its
/// images (image parts, decoded) in order.
fn content_parts(
    content: &Option<Value>,
    at: usize,
    images: Option<&ImageFetcher>,
) -> Result<(String, Vec<DynamicImage>), ApiError> {
    let param = format!("messages[{at}].content");
    match content {
        None | Some(Value::Null) => Ok((String::new(), vec![])),
        Some(Value::String(s)) => Ok((s.clone(), vec![])),
        Some(Value::Array(parts)) => {
            let (mut text, mut found) = (String::new(), vec![]);
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "text" => {
                        let t = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                            bad(
                                &param,
                                format!("part {j}: a text part needs a string `text`"),
                            )
                        })?;
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(t);
                    }
                    "image_url" if images.is_some() => {
                        let url = match part.get("image_url") {
                            Some(Value::String(u)) => u.as_str(),
                            Some(v) => v.get("url").and_then(Value::as_str).unwrap_or(""),
                            None => "",
                        };
                        let name = format!("message {at}, image {}", found.len() + 1);
                        found.push(image_from_url(url, &name, &param, images)?);
                    }
                    "image_url" => {
                        return Err(bad(&param, "only user messages may hold images"));
                    }
                    other => {
                        return Err(bad(
                            &param,
                            format!(
                                "part {j}: unsupported part type {other:?} (text or image_url)"
                            ),
                        ))
                    }
                }
            }
            Ok((text, found))
        }
        Some(_) => Err(bad(&param, "content must be a string or a list of parts")),
    }
}

/// An image from a `data:` URL (PNG, JPEG, WebP, ...), or an `http(s)`
/// one when the server's `--image-urls` lets `fetcher` fetch it.
fn image_from_url(
    url: &str,
    name: &str,
    param: &str,
    fetcher: Option<&ImageFetcher>,
) -> Result<DynamicImage, ApiError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        let bytes = match fetcher {
            Some(f) => f.fetch(url).map_err(|e| bad(param, e))?,
            None => return Err(bad(param, "only user messages may hold images")),
        };
        return ImageProcessor::decode(&bytes, name).map_err(|e| bad(param, e.to_string()));
    }
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(bad(
            param,
            "image_url.url must be a data: URL (data:image/png;base64,...)",
        ));
    };
    let Some((meta, payload)) = rest.split_once(',') else {
        return Err(bad(param, "malformed data: URL (no comma)"));
    };
    if !meta.ends_with(";base64") {
        return Err(bad(param, "data: URLs must be base64-encoded (;base64)"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| bad(param, format!("{name}: invalid base64: {e}")))?;
    ImageProcessor::decode(&bytes, name).map_err(|e| bad(param, e.to_string()))
}

impl ImagesRequest {
    /// Previews per image to stream (0 to 3, as OpenAI's `partial_images`).
    pub fn previews(&self) -> Result<usize, ApiError> {
        match self.partial_images {
            None => Ok(0),
            Some(n @ 0..=3) => Ok(n as usize),
            Some(n) => Err(bad(
                "partial_images",
                format!("partial_images must be in 0..=3, got {n}"),
            )),
        }
    }
}

fn positive(v: Option<i64>, param: &str, max: usize) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(n) if n >= 1 && (n as u64) <= max as u64 => Ok(Some(n as usize)),
        Some(n) => Err(bad(param, format!("{param} must be in 1..={max}, got {n}"))),
    }
}

fn seed(v: Option<i64>) -> Result<Option<u64>, ApiError> {
    v.map(|s| u64::try_from(s).map_err(|_| bad("seed", format!("seed must be >= 0, got {s}"))))
        .transpose()
}

impl ChatRequest {
    /// The conversation and options, checked.
    pub fn into_input(self, fetcher: &ImageFetcher) -> Result<ChatInput, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(bad("n", "n must be 1"));
        }
        if self.messages.is_empty() {
            return Err(bad("messages", "messages must not be empty"));
        }
        let mut system: Option<String> = None;
        let mut conversation = vec![];
        let mut images = vec![];
        for (i, m) in self.messages.iter().enumerate() {
            match m.role.as_str() {
                "system" | "developer" => {
                    let (text, _) = content_parts(&m.content, i, None)?;
                    let s = system.get_or_insert_with(String::new);
                    if !s.is_empty() {
                        s.push('\n');
                    }
                    s.push_str(&text);
                }
                "user" => {
                    let (text, imgs) = content_parts(&m.content, i, Some(fetcher))?;
                    // Image parts become placeholder lines before the text,
                    // as `janus understand --image ... --question ...`.
                    let content = format!("{}{text}", "<image_placeholder>\n".repeat(imgs.len()));
                    images.extend(imgs);
                    conversation.push(Message::user(content));
                }
                "assistant" => {
                    let (text, _) = content_parts(&m.content, i, None)?;
                    conversation.push(Message::assistant(text));
                }
                other => {
                    return Err(bad(
                        &format!("messages[{i}].role"),
                        format!("unsupported role {other:?} (system, user or assistant)"),
                    ))
                }
            }
        }
        if conversation.last().map(|m| m.role.as_str()) != Some(USER_ROLE) {
            return Err(bad("messages", "the last message must be the user's"));
        }
        conversation.push(Message::assistant(""));
        let max_new_tokens = positive(
            self.max_completion_tokens.or(self.max_tokens),
            "max_completion_tokens",
            1 << 20,
        )?
        .unwrap_or(UnderstandOptions::default().max_new_tokens);
        let temperature = self.temperature.unwrap_or(0.0);
        let sampling = SamplingParams {
            temperature,
            top_p: self.top_p.unwrap_or(0.95),
            ..SamplingParams::greedy()
        };
        sampling
            .validate()
            .map_err(|e| bad("temperature", e.to_string()))?;
        let stop = match self.stop {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .filter(|v| v.len() <= 4)
                .ok_or_else(|| bad("stop", "stop must be a string or a list of up to 4 strings"))?,
            Some(_) => {
                return Err(bad(
                    "stop",
                    "stop must be a string or a list of up to 4 strings",
                ))
            }
        };
        Ok(ChatInput {
            conversation,
            images,
            system_prompt: system.unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.into()),
            options: UnderstandOptions {
                max_new_tokens,
                sampling,
                seed: seed(self.seed)?,
            },
            stop,
        })
    }

    /// Whether the last streamed chunk carries the token counts.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

impl ImagesRequest {
    /// The generation options and the side to resize to (None: native).
    pub fn options(&self, native: usize) -> Result<(GenerateOptions, Option<u32>), ApiError> {
        if self.prompt.trim().is_empty() {
            return Err(bad("prompt", "the prompt is empty"));
        }
        if let Some(f) = self.response_format.as_deref() {
            if f != "b64_json" {
                return Err(bad(
                    "response_format",
                    format!("response_format {f:?} is not served (b64_json only)"),
                ));
            }
        }
        let side = match self.size.as_deref() {
            None | Some("auto") => None,
            Some(s) => {
                let parsed = s
                    .split_once('x')
                    .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
                match parsed {
                    Some((w, h)) if w == h && (1..=8192).contains(&w) => {
                        (w as usize != native).then_some(w)
                    }
                    _ => {
                        return Err(bad(
                            "size",
                            format!("size must be \"auto\" or a square NxN up to 8192, got {s:?}"),
                        ))
                    }
                }
            }
        };
        let defaults = GenerateOptions::default();
        let opts = GenerateOptions {
            parallel_size: positive(self.n, "n", MAX_IMAGES)?.unwrap_or(1),
            cfg_weight: self.cfg_weight.unwrap_or(defaults.cfg_weight),
            sampling: SamplingParams {
                temperature: self.temperature.unwrap_or(defaults.sampling.temperature),
                top_p: self.top_p.unwrap_or(defaults.sampling.top_p),
                top_k: positive(self.top_k, "top_k", usize::MAX >> 1)?,
                ..defaults.sampling
            },
            seed: seed(self.seed)?,
        };
        opts.validate().map_err(|e| bad("prompt", e.to_string()))?;
        Ok((opts, side))
    }
}
