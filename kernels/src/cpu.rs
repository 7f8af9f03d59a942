//! Which of the CPU's vector extensions the kernels may use. Every
//! dispatch in the workspace asks here, so one environment variable can
//! make this machine behave like an older one: `JANUS_CPU=avx2` turns the
//! AVX-512 kernels off (as on most laptops and AMD Zen 2/3), and
//! `JANUS_CPU=baseline` the AVX2 ones too. That is how the fallbacks are
//! tested and benchmarked on an AVX-512 machine. (candle's own quantised
//! kernels read `MISTRALRS_FORCE_AVX2=1` for the same purpose.)

use std::sync::OnceLock;

/// The highest level the kernels may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Portable code only (SSE2 on x86-64, NEON on aarch64).
    Baseline,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F + BW, with AVX2, FMA and F16C.
    Avx512,
}

/// The level detected on this CPU, capped by `JANUS_CPU`
/// (`baseline`, `avx2`; anything else, or unset, means no cap).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("JANUS_CPU").as_deref() {
            Ok("baseline") => Level::Baseline,
            Ok("avx2") => Level::Avx2,
            _ => Level::Avx512,
        };
        detected().min(cap)
    })
}

#[cfg(target_arch = "x86_64")]
fn detected() -> Level {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    if avx2 && has!("avx512f") && has!("avx512bw") {
        Level::Avx512
    } else if avx2 {
        Level::Avx2
    } else {
        Level::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detected() -> Level {
    Level::Baseline
}

/// AVX-512 F + BW (with AVX2, FMA, F16C) may be used.
pub fn avx512() -> bool {
    level() >= Level::Avx512
}

/// The CPU has AVX2, FMA and F16C (whatever `JANUS_CPU` says): for tests
/// that run the AVX2 builds of kernels next to the portable ones.
pub fn detected_avx2() -> bool {
    detected() >= Level::Avx2
}

/// AVX2 + FMA + F16C may be used.
pub fn avx2() -> bool {
    level() >= Level::Avx2
}
