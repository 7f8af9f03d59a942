use candle_core::{DType, Device, Tensor};
use janus_vq::{VqConfig, VqModel};
#[test]
fn timing() {
    let cfg = VqConfig::vq16(16384, 8);
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let vq = VqModel::load(vb, &cfg).unwrap();
    let codes = Tensor::zeros((1, 576), DType::U32, &Device::Cpu).unwrap();
    let t = std::time::Instant::now();
    let img = vq.decode_code(&codes, (24, 24)).unwrap();
    println!("decode {:?} {:?}", img.dims(), t.elapsed());
    let t = std::time::Instant::now();
    let enc = vq.encode(&img).unwrap();
    println!("encode {:?} {:?}", enc.quant.dims(), t.elapsed());
}
