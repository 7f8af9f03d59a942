//! Ask Janus-Pro about an image, streaming the answer.
//!
//! ```sh
//! cargo run --release -p janus-rs --example understand                      # the tiny test model
//! cargo run --release -p janus-rs --example understand -- deepseek-ai/Janus-Pro-1B cat.png "What is in this image?"
//! ```

use std::io::Write;
use std::path::Path;

use janus::{question_conversation, TextStreamer};
use janus::{ImageProcessor, JanusPro, LoadOptions, UnderstandOptions};

fn main() -> janus::Result<()> {
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny");
    let mut args = std::env::args().skip(1);
    let model_id = args.next().unwrap_or_else(|| tiny.to_owned());
    let image_path = args
        .next()
        .unwrap_or_else(|| format!("{tiny}/images/wide.png"));
    let question = args
        .next()
        .unwrap_or_else(|| "Describe this image in detail.".to_owned());

    // A local folder or a hub id (downloaded once into the Hugging Face cache).
    let model = JanusPro::from_pretrained(
        &model_id,
        &LoadOptions {
            progress: true,
            ..Default::default()
        },
    )?;
    let image = ImageProcessor::open(Path::new(&image_path))?;
    let conversation = question_conversation(&question, 1);
    let opts = UnderstandOptions {
        max_new_tokens: 64,
        ..Default::default()
    };

    let mut streamer = TextStreamer::new(model.text_processor());
    let mut stdout = std::io::stdout();
    let answer = model.understand_with(&conversation, &[image], &opts, &mut |id, _| {
        if let Some(piece) = streamer.push(id)? {
            stdout.write_all(piece.as_bytes())?;
            stdout.flush()?;
        }
        Ok(())
    })?;
    if let Some(piece) = streamer.finish()? {
        stdout.write_all(piece.as_bytes())?;
    }
    println!("\n({} tokens)", answer.token_ids.len());
    Ok(())
}
