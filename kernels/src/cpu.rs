//! Which of the CPU's vector extensions the kernels may use, and every
//! environment switch that changes a kernel choice, read once into one
//! [`Dispatch`]. Every dispatch in the workspace asks here, so one variable
//! can make this machine behave like an older one (that is how the
//! fallbacks are tested and benchmarked on an AVX-512 machine):
//!
//! | variable | effect |
//! | --- | --- |
//! | `JANUS_CPU=avx2` / `baseline` | caps [`Level`]: no AVX-512 kernels / no AVX2 ones either |
//! | `JANUS_BF16_GEMM=0` | no bf16 GEMM (compute-bound passes take the f32 paths) |
//! | `JANUS_VNNI=0` | no AVX-512-VNNI q4_K kernel |
//! | `JANUS_QUANT_PREFILL=dequant` / `int8` | many-row quantised matmuls: weight-only dequantisation, or candle's integer kernels |
//! | `MISTRALRS_FORCE_AVX2=1` | read by candle's own quantised kernels; here it only tells whether they have VNNI |

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

/// How many-row quantised matmuls run where there is no bf16 GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantPrefill {
    /// Weight-only: bands dequantised to f32, then an f32 GEMM (the
    /// activations are not rounded).
    Dequantise,
    /// candle's integer kernels, which round the activations to 8 bits.
    Int8,
}

/// The kernel choices of this process.
#[derive(Debug, Clone, Copy)]
pub struct Dispatch {
    /// The detected level, capped by `JANUS_CPU`.
    pub level: Level,
    /// The bf16 GEMM may run (AVX-512-BF16, unless `JANUS_BF16_GEMM=0`).
    pub bf16_gemm: bool,
    /// The AVX-512-VNNI q4_K few-row kernel may run (unless `JANUS_VNNI=0`).
    pub vnni: bool,
    /// `JANUS_QUANT_PREFILL`, when set.
    pub quant_prefill: Option<QuantPrefill>,
    /// candle's CPU kernels multiply q8_0 blocks with VNNI (AVX-512 or
    /// AVX-VNNI), as it chooses itself (`MISTRALRS_FORCE_AVX2=1` turns
    /// that off); elsewhere than x86-64 its kernels are taken as they come.
    pub candle_int8_dot: bool,
}

/// The choices, read from the CPU and the environment on first use.
pub fn dispatch() -> &'static Dispatch {
    static DISPATCH: OnceLock<Dispatch> = OnceLock::new();
    DISPATCH.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok();
        let cap = match var("JANUS_CPU").as_deref() {
            Some("baseline") => Level::Baseline,
            Some("avx2") => Level::Avx2,
            _ => Level::Avx512,
        };
        let level = detected().min(cap);
        let avx512 = level >= Level::Avx512;
        Dispatch {
            level,
            bf16_gemm: avx512
                && has("avx512bf16")
                && var("JANUS_BF16_GEMM").as_deref() != Some("0"),
            vnni: avx512 && has("avx512vnni") && var("JANUS_VNNI").as_deref() != Some("0"),
            quant_prefill: match var("JANUS_QUANT_PREFILL").as_deref() {
                Some("dequant") => Some(QuantPrefill::Dequantise),
                Some("int8") => Some(QuantPrefill::Int8),
                _ => None,
            },
            candle_int8_dot: if cfg!(target_arch = "x86_64") {
                var("MISTRALRS_FORCE_AVX2").as_deref() != Some("1")
                    && level >= Level::Avx2
                    && ((avx512 && has("avx512vnni")) || has("avxvnni"))
            } else {
                true
            },
        }
    })
}

/// Whether the CPU has the x86-64 feature `name` (false elsewhere).
fn has(name: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        match name {
            "avx512bf16" => has!("avx512bf16"),
            "avx512vnni" => has!("avx512vnni"),
            "avxvnni" => has!("avxvnni"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = name;
        false
    }
}

/// The level detected on this CPU, capped by `JANUS_CPU`.
pub fn level() -> Level {
    dispatch().level
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
