//! Parity of the image preprocessor with the official Janus `VLMImageProcessor`
//! (Pillow resize + expand2square + HF rescale/normalize), against tensors the
//! Python reference wrote to `tests/fixtures/tiny/expected.safetensors`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::DynamicImage;
use janus::{ImageProcessor, ImageProcessorConfig};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny");
const NAMES: [&str; 6] = ["wide", "tall", "square", "small", "gray", "rgba"];

fn fixture(rel: &str) -> PathBuf {
    Path::new(FIXTURE).join(rel)
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("expected.safetensors"), &Device::Cpu)
        .expect("expected.safetensors loads")
}

fn config() -> ImageProcessorConfig {
    ImageProcessorConfig::from_file(&fixture("preprocessor_config.json")).expect("config parses")
}

fn open(name: &str) -> DynamicImage {
    ImageProcessor::open(&fixture(&format!("images/{name}.png"))).expect("fixture image opens")
}

/// A fresh, empty scratch directory for this test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("preprocess-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// CHW bytes of an RGB image, as the reference's `np.transpose(x, (2, 0, 1))`.
fn chw(img: &image::RgbImage) -> Vec<u8> {
    let plane = (img.width() * img.height()) as usize;
    let mut out = vec![0u8; 3 * plane];
    for (p, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + p] = px.0[c];
        }
    }
    out
}

#[test]
fn config_from_fixture() {
    let c = config();
    assert_eq!(c.image_size, 32);
    assert_eq!(c.min_size, 14);
    assert_eq!(c.image_mean, [0.5; 3]);
    assert_eq!(c.image_std, [0.5; 3]);
    assert_eq!(c.rescale_factor, 0.00392156862745098);
    assert!(c.do_normalize);
    assert_eq!(c.background_color, [127; 3]);
}

#[test]
fn config_defaults_and_derived_background() {
    let dir = scratch("config");
    let path = dir.join("preprocessor_config.json");
    std::fs::write(
        &path,
        r#"{"image_size": 384, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711]}"#,
    )
    .unwrap();
    let c = ImageProcessorConfig::from_file(&path).unwrap();
    assert_eq!(c.image_size, 384);
    assert_eq!(c.min_size, 14);
    assert_eq!(c.rescale_factor, 1.0 / 255.0);
    assert!(c.do_normalize);
    // Python: tuple(int(x * 255) for x in image_mean)
    assert_eq!(c.background_color, [122, 116, 104]);
    assert_eq!(c.image_mean[0], 0.48145466f64 as f32);

    std::fs::write(&path, r#"{"image_size": 384, "image_mean": [0.5, 0.5]}"#).unwrap();
    let err = ImageProcessorConfig::from_file(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("image_mean"), "{err}");

    std::fs::write(&path, "not json").unwrap();
    let err = ImageProcessorConfig::from_file(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("preprocessor_config.json"), "{err}");

    let missing = dir.join("absent.json");
    let err = ImageProcessorConfig::from_file(&missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.json"), "{err}");
}

#[test]
fn padded_bytes_match_reference_exactly() {
    let exp = expected();
    let base = config();
    let mut report = Vec::new();
    for size in [32usize, 384] {
        let proc = ImageProcessor::new(ImageProcessorConfig {
            image_size: size,
            ..base.clone()
        });
        for name in NAMES {
            let img = open(name);
            let out = proc.resize_and_pad(&img).unwrap();
            assert_eq!((out.width(), out.height()), (size as u32, size as u32));
            let key = format!("preprocess.{size}.{name}.u8");
            let want = exp.get(&key).unwrap_or_else(|| panic!("{key} missing"));
            assert_eq!(want.dims(), &[3, size, size], "{key}");
            assert_eq!(want.dtype(), DType::U8, "{key}");
            let want = want.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            let got = chw(&out);
            let diffs: Vec<u8> = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).collect();
            let max = diffs.iter().copied().max().unwrap();
            let count = diffs.iter().filter(|d| **d > 0).count();
            report.push(format!("{key}: max diff {max}, {count} bytes differ"));
            assert_eq!(max, 0, "{key}: {count} of {} bytes differ", got.len());
        }
    }
    println!("{}", report.join("\n"));
}

#[test]
fn normalised_values_match_reference() {
    let exp = expected();
    let proc = ImageProcessor::new(config());
    let images: Vec<DynamicImage> = NAMES.iter().map(|n| open(n)).collect();
    let batch = proc.preprocess(&images, &Device::Cpu).unwrap();
    assert_eq!(batch.dims(), &[6, 3, 32, 32]);
    assert_eq!(batch.dtype(), DType::F32);
    for (i, name) in NAMES.iter().enumerate() {
        let key = format!("preprocess.32.{name}");
        let want = exp.get(&key).unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(want.dims(), &[3, 32, 32], "{key}");
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = batch
            .get(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{key}: max abs diff {max:e}");
        assert!(max <= 1e-6, "{key}: max abs diff {max}");
        // The values really are normalised: bytes 0..=255 map into [-1, 1].
        assert!(got.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(got.iter().any(|v| *v < -0.1) && got.iter().any(|v| *v > 0.1));
    }
    // Padding of the wide image (rows 0..6 of 32) is background 127:
    // (127/255 - 0.5) / 0.5.
    let pad = batch
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let bg = ((127.0f64 / 255.0) as f32 - 0.5) / 0.5;
    assert!(pad.iter().all(|v| *v == bg), "{pad:?}");
}

#[test]
fn resize_sizes_follow_reference_arithmetic() {
    let proc = ImageProcessor::new(config());
    // 10x4: int(4 / 10 * 32) = 12 -> min_size 14; the image is upscaled to
    // 32x14 and pasted at row (32 - 14) // 2 = 9.
    let out = proc.resize_and_pad(&open("small")).unwrap();
    let bg = image::Rgb([127u8; 3]);
    assert!((0..32).all(|x| *out.get_pixel(x, 8) == bg && *out.get_pixel(x, 23) == bg));
    assert!((0..32).any(|x| *out.get_pixel(x, 9) != bg));
    assert!((0..32).any(|x| *out.get_pixel(x, 22) != bg));
    // 90x161 (tall): int(90 / 161 * 32) = 17 wide, pasted at column 7.
    let out = proc.resize_and_pad(&open("tall")).unwrap();
    assert!((0..32).all(|y| *out.get_pixel(6, y) == bg && *out.get_pixel(24, y) == bg));
    assert!((0..32).any(|y| *out.get_pixel(7, y) != bg));
}

#[test]
fn sixteen_bit_images_reduce_like_pillow() {
    // Values measured with Pillow 13: 16-bit gray opens as "I;16" and
    // convert("RGB") clips at 255; 16-bit RGB(A) keeps the high byte.
    let vals: [u16; 14] = [
        0, 1, 127, 128, 255, 256, 257, 383, 384, 32767, 32768, 65279, 65280, 65535,
    ];
    let gray_want = [
        0u8, 1, 127, 128, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    ];
    let rgb_want = [0u8, 0, 0, 0, 0, 1, 1, 1, 1, 127, 128, 254, 255, 255];
    let n = vals.len() as u32;
    let proc = ImageProcessor::new(ImageProcessorConfig {
        image_size: n as usize,
        min_size: 1,
        ..config()
    });
    // n x n images need no resize, so the output shows the conversion alone.
    let gray = image::ImageBuffer::from_fn(n, n, |x, _| image::Luma([vals[x as usize]]));
    let out = proc
        .resize_and_pad(&DynamicImage::ImageLuma16(gray))
        .unwrap();
    let got: Vec<u8> = (0..n).map(|x| out.get_pixel(x, 3).0[1]).collect();
    assert_eq!(got, gray_want);
    let rgba = image::ImageBuffer::from_fn(n, n, |x, _| {
        let v = vals[x as usize];
        image::Rgba([v, v, v, 1000])
    });
    let out = proc
        .resize_and_pad(&DynamicImage::ImageRgba16(rgba))
        .unwrap();
    let got: Vec<u8> = (0..n).map(|x| out.get_pixel(x, 5).0[2]).collect();
    assert_eq!(got, rgb_want);
}

/// Pillow 13.0.0's `Image.resize((6, 32), Image.BICUBIC)` of the 60x300
/// pattern below, as hex rows of RGB bytes. Here the height shrinks by far
/// more than the width, so Pillow 13 runs the vertical pass first (Pillow
/// 12.3.0, horizontal first, differs on 52 of these 576 bytes, by 1 level).
const TALL_60X300_TO_6X32: [&str; 12] = [
    "717a8475817f7c727883797e7e7d82807b737c807f758381798886797d807a80867f7d767b8388808e817f8489838782",
    "887f7c6c828c867f84887f77878877808184847b73868a807b75847585827a777e86747e79837c87807e837d7e767f86",
    "8381807c7e887783837c747984847b828f7b7c848985827d847e8676828b817a837e777b917c7481847b847c78818180",
    "85787e7c778277778582767b7d80798b837a827e857880897f82807c7f87788e787f787c7f8c82848f7c7e8b89847e7e",
    "7b877f7d87897e7e777d7a808c78768b837a827a8280857f7e847a7e757f767d85757e7c8277848a7e7a7c80847f838c",
    "7c7c817883877e8c827672858284778b8279858f7d827d857f807d83818184867a8779848976788a88757b7881818981",
    "77857e7e7b7f7f7f7e767f7a7e768c8d7e7878848884868e7a7a857c837a878084717c82867c79877f7a888d7b7c8683",
    "80897c828381807f7e897c7180777888777b7f7e7a7e8a7c79827c717c80787c7f787d8779788b88796d797f887f8783",
    "78828a7c7e7f8a7a7f787e8487877e8781768988787c86868878797f808a867e81847b77817b8483767d828277878d7e",
    "8172857181847b7b7b807b8772838684707482838180877f7b8793827f838781857684827e7e82828379897e76808c81",
    "88817d77808a857782817b79837a7e81767a7e7c7a8d897c867a80767f87757a7d837b81748c7a80777f86878184847e",
    "7e85897b768b7a857f7e828080807d828c7b8281798884778183817c80887d7a777b6b83887b7a7d7f7a8675808a8571",
];

#[test]
fn tall_image_uses_pillow_13_pass_order() {
    let (w, h) = (60u32, 300u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = |c: u32| ((x * x * 3 + y * 7 + c * 50 + (x * y) % 13 * 17) % 256) as u8;
        image::Rgb([v(0), v(1), v(2)])
    });
    let proc = ImageProcessor::new(ImageProcessorConfig {
        image_size: 32,
        min_size: 1,
        ..config()
    });
    // int(60 / 300 * 32) = 6 wide, 32 tall, pasted at column (32 - 6) // 2 = 13.
    let out = proc.resize_and_pad(&DynamicImage::ImageRgb8(img)).unwrap();
    let mut got = Vec::new();
    for y in 0..32 {
        for x in 13..19 {
            got.extend_from_slice(&out.get_pixel(x, y).0);
        }
    }
    let hex: String = TALL_60X300_TO_6X32.concat();
    let want: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(want.len(), 6 * 32 * 3);
    let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{differ} of 576 bytes differ from Pillow 13");
    assert_eq!(*out.get_pixel(12, 0), image::Rgb([127; 3]));
    assert_eq!(*out.get_pixel(19, 31), image::Rgb([127; 3]));
}

#[test]
fn alpha_is_dropped_not_composited() {
    let proc = ImageProcessor::new(ImageProcessorConfig {
        image_size: 4,
        min_size: 1,
        ..config()
    });
    let img = image::RgbaImage::from_pixel(4, 4, image::Rgba([200, 10, 30, 0]));
    let out = proc.resize_and_pad(&DynamicImage::ImageRgba8(img)).unwrap();
    assert!(out.pixels().all(|p| p.0 == [200, 10, 30]));
}

#[test]
fn zero_sized_image_is_an_error() {
    let proc = ImageProcessor::new(config());
    let img = DynamicImage::ImageRgb8(image::RgbImage::new(0, 5));
    let err = proc.resize_and_pad(&img).unwrap_err().to_string();
    assert!(err.contains("0x5"), "{err}");
    let err = proc.preprocess(&[], &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("no images to preprocess"), "{err}");
}

#[test]
fn bad_files_are_errors_naming_the_file() {
    let dir = scratch("bad-files");

    let missing = dir.join("no-such-image.png");
    let err = ImageProcessor::open(&missing).unwrap_err().to_string();
    assert!(err.contains("no-such-image.png"), "{err}");
    assert!(err.contains("not found"), "{err}");

    let empty = dir.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let err = ImageProcessor::open(&empty).unwrap_err().to_string();
    assert!(err.contains("empty.png"), "{err}");
    assert!(err.contains("0 bytes"), "{err}");

    let text = dir.join("notes.png");
    std::fs::write(&text, b"this is not an image at all\n").unwrap();
    let err = ImageProcessor::open(&text).unwrap_err().to_string();
    assert!(err.contains("notes.png"), "{err}");

    // A real PNG signature with a truncated body.
    let truncated = dir.join("truncated.png");
    let bytes = std::fs::read(fixture("images/wide.png")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = ImageProcessor::open(&truncated).unwrap_err().to_string();
    assert!(err.contains("truncated.png"), "{err}");
}

/// CRC-32 (IEEE) as PNG chunks use it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

#[test]
fn decompression_bombs_are_refused() {
    let dir = scratch("bomb");
    // A PNG header claiming 20000 x 20000 RGB pixels (400 megapixels).
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    let path = dir.join("bomb.png");
    std::fs::write(&path, &png).unwrap();
    let err = ImageProcessor::open(&path).unwrap_err().to_string();
    assert!(err.contains("bomb.png"), "{err}");
    assert!(err.contains("megapixels"), "{err}");
}

/// JPEG files decode to exactly Pillow's RGB bytes: libjpeg-turbo's
/// accurate IDCT and fancy chroma upsampling, for every subsampling,
/// progressive and restart-marker files, and grayscale (replicated to RGB
/// as `convert("RGB")` does). The `image` crate's own JPEG decoder misses
/// this by up to 4 levels (2172 values of the 4:2:0 file).
#[test]
fn jpeg_files_decode_to_pillows_pixels() {
    let dir = fixture("../jpeg");
    for name in [
        "ycc420",
        "ycc422",
        "ycc444",
        "progressive",
        "restart",
        "gray",
    ] {
        let got = ImageProcessor::open(&dir.join(format!("{name}.jpg")))
            .unwrap()
            .to_rgb8();
        let want = image::open(dir.join(format!("{name}.pillow.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(got.dimensions(), want.dimensions(), "{name}");
        let differ = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 0, "{name}: {differ} values differ from Pillow's");
    }
    // CMYK is left to the image crate: it opens, at its size.
    let cmyk = ImageProcessor::open(&dir.join("cmyk.jpg")).unwrap();
    assert_eq!((cmyk.width(), cmyk.height()), (61, 47));
}

/// Broken JPEG files are errors that name the file and the problem, not
/// panics or gray-filled images: cut short (Pillow refuses those too; the
/// `image` crate decoded them), over the pixel limit, or with garbage where
/// the frame header should be.
#[test]
fn broken_jpeg_files_are_errors() {
    let dir = scratch("bad-jpeg");
    let bytes = std::fs::read(fixture("../jpeg/ycc420.jpg")).unwrap();

    let truncated = dir.join("cut.jpg");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = ImageProcessor::open(&truncated).unwrap_err().to_string();
    assert!(
        err.contains("cut.jpg") && err.contains("truncated"),
        "{err}"
    );

    // Its frame header patched to 20000 x 20000: refused from the header.
    let huge = dir.join("huge.jpg");
    let mut big = bytes.clone();
    let sof = big.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
    big[sof + 5..sof + 9].copy_from_slice(&[0x4E, 0x20, 0x4E, 0x20]);
    std::fs::write(&huge, &big).unwrap();
    let err = ImageProcessor::open(&huge).unwrap_err().to_string();
    assert!(
        err.contains("huge.jpg") && err.contains("megapixels"),
        "{err}"
    );

    let garbage = dir.join("garbage.jpg");
    let mut bad = bytes[..4].to_vec();
    bad.extend(std::iter::repeat_n(0x5a, 200));
    std::fs::write(&garbage, &bad).unwrap();
    let err = ImageProcessor::open(&garbage).unwrap_err().to_string();
    assert!(
        err.contains("garbage.jpg") && err.contains("cannot decode"),
        "{err}"
    );
}
