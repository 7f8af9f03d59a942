//! `janus serve`: the OpenAI-compatible HTTP server ([`janus_server`]).

use std::time::Duration;

use clap::Args;
use janus::JanusError;
use janus_server::{ImageUrls, ServerOptions};

use crate::output::{ctrl_c_token, set_idle};
use crate::ModelArgs;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes the server).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Clients must send `Authorization: Bearer KEY` on the /v1 routes.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests held at once (running and waiting); more are answered 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Most chat completions answered together, one decoding step for all.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Seconds after which a request is cancelled and answered 504.
    #[arg(long)]
    request_timeout: Option<f64>,
    /// Largest request body, in MB (images come inline); 413 above.
    #[arg(long, default_value_t = 32)]
    max_body_mb: usize,
    /// Which http(s) image URLs chat requests may name: off (inline data:
    /// URLs only), public (not loopback, private or link-local addresses)
    /// or any. Fetched images are limited to --max-body-mb.
    #[arg(long, default_value = "off")]
    image_urls: String,
}

pub fn serve(args: ServeArgs) -> janus::Result<()> {
    if args.max_queue == 0 {
        return Err(JanusError::Input("--max-queue must be at least 1".into()));
    }
    if !(1..=256).contains(&args.max_batch) {
        return Err(JanusError::Input("--max-batch must be in 1..=256".into()));
    }
    let request_timeout = match args.request_timeout {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => {
            return Err(JanusError::Input(format!(
                "--request-timeout must be a positive number of seconds, got {s}"
            )))
        }
    };
    if args.max_body_mb == 0 || args.max_body_mb > 4096 {
        return Err(JanusError::Input(
            "--max-body-mb must be in 1..=4096".into(),
        ));
    }
    let image_urls = ImageUrls::parse(&args.image_urls).map_err(JanusError::Input)?;
    let options = ServerOptions {
        host: args.host,
        port: args.port,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        max_queue: args.max_queue,
        max_batch: args.max_batch,
        request_timeout,
        max_body_bytes: args.max_body_mb << 20,
        model_id: args.model.model.clone(),
        image_urls,
    };
    // Ctrl-C (and SIGTERM) stop the server gracefully instead of ending the
    // process: requests in flight finish.
    let ctrl_c = ctrl_c_token();
    set_idle(false);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let model = args.model;
    runtime.block_on(janus_server::serve(
        options,
        move || model.load(),
        |addr| {
            // Nobody reading stdout is no reason to stop serving.
            let _ = crate::output::print_line(format!("janus serve: listening on http://{addr}"));
        },
        async move {
            #[cfg(unix)]
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            loop {
                #[cfg(unix)]
                if let Some(t) = term.as_mut() {
                    tokio::select! {
                        _ = t.recv() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                #[cfg(not(unix))]
                tokio::time::sleep(Duration::from_millis(100)).await;
                if ctrl_c.is_cancelled() {
                    break;
                }
            }
            eprintln!("janus serve: stopping (finishing the requests in flight)");
        },
    ))
}
