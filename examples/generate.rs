//! Generate images from a prompt with Janus-Pro, reporting every step.
//!
//! ```sh
//! cargo run --release -p janus-rs --example generate                        # the tiny test model
//! cargo run --release -p janus-rs --example generate -- deepseek-ai/Janus-Pro-1B "A red apple on a wooden table" 2
//! ```

use std::io::Write;

use janus::{GenerateOptions, JanusPro, LoadOptions};

fn main() -> janus::Result<()> {
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny");
    let mut args = std::env::args().skip(1);
    let model_id = args.next().unwrap_or_else(|| tiny.to_owned());
    let prompt = args
        .next()
        .unwrap_or_else(|| "A close-up photo of a red apple on a wooden table.".to_owned());
    let parallel_size = args.next().and_then(|n| n.parse().ok()).unwrap_or(2);

    let model = JanusPro::from_pretrained(
        &model_id,
        &LoadOptions {
            progress: true,
            ..Default::default()
        },
    )?;
    let opts = GenerateOptions {
        parallel_size,
        seed: Some(42),
        ..Default::default()
    };
    let generated = model.generate_with(&prompt, &opts, &mut |p| {
        eprint!("\rstep {}/{}", p.step, p.total);
        std::io::stderr().flush()?;
        Ok(())
    })?;
    eprintln!();
    for (i, image) in generated.images.iter().enumerate() {
        let path = format!("generated_{i}.png");
        image
            .save(&path)
            .map_err(|e| janus::JanusError::Input(format!("cannot write {path}: {e}")))?;
        println!("{path}");
    }
    Ok(())
}
