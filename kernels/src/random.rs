//! Seeded pseudo-random values: the benchmark's random weights and the
//! tests' data, so that every run (and every failure) reproduces. (candle's
//! `Tensor::randn` on the CPU draws from an unseeded generator.)

use candle_core::{Device, Result, Shape, Tensor};

/// splitmix64: a small, fast, well-mixed generator.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Approximately N(0, 1): the centred sum of four 16-bit uniforms,
    /// scaled (one draw per value; tails end near ±3.5).
    pub fn normal(&mut self) -> f32 {
        let r = self.next_u64();
        let s = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
        // Sum of 4 U(0,1): mean 2, variance 1/3.
        ((s as f32 / 65536.0) - 2.0) * 3f32.sqrt()
    }
}

/// An f32 CPU tensor of approximately N(`mean`, `std`²) values, the same
/// for the same `seed`.
pub fn randn(mean: f32, std: f32, shape: impl Into<Shape>, seed: u64) -> Result<Tensor> {
    let shape = shape.into();
    let values = normal_values(mean, std, shape.elem_count(), seed);
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// `len` approximately N(`mean`, `std`²) values, the same for the same
/// `seed` (those [`randn`] lays out as a tensor).
pub fn normal_values(mean: f32, std: f32, len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    (0..len).map(|_| mean + std * rng.normal()).collect()
}

#[cfg(test)]
mod tests {
    /// Same seed, same values; the moments are those asked for.
    #[test]
    fn randn_is_seeded_with_the_asked_moments() {
        let a: Vec<f32> = super::randn(1.0, 0.5, 100_000, 7)
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = super::randn(1.0, 0.5, 100_000, 7)
            .unwrap()
            .to_vec1()
            .unwrap();
        let c: Vec<f32> = super::randn(1.0, 0.5, 100_000, 8)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "{var}");
    }
}
