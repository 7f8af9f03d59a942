//! `janus understand` and `janus chat`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::Args;
use janus::{load_conversation, question_conversation, TextStreamer};
use janus::{ChatSession, ImageProcessor, JanusError};

use crate::output::{ctrl_c_token, print_line, set_idle};
use crate::{ModelArgs, TextSamplingArgs};

#[derive(Args)]
pub struct UnderstandArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Image file(s); each gets an <image_placeholder> line before the question.
    #[arg(long, num_args = 1.., requires = "question", conflicts_with = "conversation")]
    image: Vec<PathBuf>,
    /// The question about the image(s).
    #[arg(long, required_unless_present = "conversation")]
    question: Option<String>,
    /// A conversation file: [{"role", "content", "images"?}], image paths relative to it.
    #[arg(long, conflicts_with = "question")]
    conversation: Option<PathBuf>,
    #[command(flatten)]
    sampling: TextSamplingArgs,
    /// Print one JSON object {"answer", "token_ids"} instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn understand(args: UnderstandArgs) -> janus::Result<()> {
    let (conversation, image_paths) = match &args.conversation {
        Some(file) => {
            let conv = load_conversation(file)?;
            let paths: Vec<PathBuf> = conv.iter().flat_map(|m| m.images.clone()).collect();
            (conv, paths)
        }
        None => {
            let question = args.question.clone().unwrap_or_default();
            (
                question_conversation(&question, args.image.len()),
                args.image.clone(),
            )
        }
    };
    let images = image_paths
        .iter()
        .map(|p| ImageProcessor::open(p))
        .collect::<janus::Result<Vec<_>>>()?;
    let model = args.model.load()?;
    let opts = args.sampling.options();
    if args.json {
        let answer = model.understand(&conversation, &images, &opts)?;
        return print_line(
            serde_json::json!({"answer": answer.text, "token_ids": answer.token_ids}),
        );
    }
    let cancel = ctrl_c_token();
    set_idle(false);
    let mut streamer = TextStreamer::new(model.text_processor());
    let mut stdout = std::io::stdout();
    model.understand_with(&conversation, &images, &opts, &mut |id, _| {
        cancel.check()?;
        if let Some(piece) = streamer.push(id)? {
            stdout.write_all(piece.as_bytes())?;
            stdout.flush()?;
        }
        Ok(())
    })?;
    if let Some(piece) = streamer.finish()? {
        stdout.write_all(piece.as_bytes())?;
    }
    writeln!(stdout)?;
    Ok(())
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: TextSamplingArgs,
}

const CHAT_HELP: &str =
    "Type a message and press Enter. Commands: /image PATH (attach to the next message), \
/reset (new conversation), /exit. Ctrl-C stops an answer; Ctrl-D or Ctrl-C at the prompt leaves.";

pub fn chat(args: ChatArgs) -> janus::Result<()> {
    let model = args.model.load()?;
    let opts = args.sampling.options();
    let cancel = ctrl_c_token();
    let mut session = ChatSession::new();
    let mut pending: Vec<image::DynamicImage> = vec![];
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    eprintln!("{CHAT_HELP}");
    loop {
        set_idle(true);
        eprint!("you> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(path) = line.strip_prefix("/image") {
            match ImageProcessor::open(std::path::Path::new(path.trim())) {
                Ok(img) => {
                    pending.push(img);
                    eprintln!("(image {} attached to your next message)", pending.len());
                }
                Err(e) => eprintln!("error: {e}"),
            }
            continue;
        }
        match line {
            "/reset" => {
                session.reset();
                pending.clear();
                eprintln!("(new conversation)");
                continue;
            }
            "/exit" | "/quit" => return Ok(()),
            "/help" => {
                eprintln!("{CHAT_HELP}");
                continue;
            }
            _ => {}
        }
        set_idle(false);
        cancel.reset();
        let mut streamer = TextStreamer::new(model.text_processor());
        write!(stdout, "janus> ")?;
        stdout.flush()?;
        let images = std::mem::take(&mut pending);
        let reply = model.chat_turn(&mut session, line, images.clone(), &opts, &mut |id, _| {
            cancel.check()?;
            if let Some(piece) = streamer.push(id)? {
                stdout.write_all(piece.as_bytes())?;
                stdout.flush()?;
            }
            Ok(())
        });
        match reply {
            Ok(reply) => {
                if let Some(piece) = streamer.finish()? {
                    stdout.write_all(piece.as_bytes())?;
                }
                writeln!(stdout, "{}", if reply.stopped { " [stopped]" } else { "" })?;
            }
            Err(e @ (JanusError::Input(_) | JanusError::Image { .. })) => {
                writeln!(stdout)?;
                eprintln!("error: {e}");
                pending = images;
            }
            Err(e) => return Err(e),
        }
    }
}
