//! The CPU executor through the seam, and device selection without a GPU.

use std::sync::Arc;

use super::{Device, StepItem, StepOut, Want};
use crate::device::{cuda_built, NOT_BUILT};
use crate::{sample, DeviceChoice, Model, SamplingParams};

fn tiny() -> Arc<Model> {
    let dir = crate::tiny::cached_in(&std::env::temp_dir().join("pdq-engine-unit")).expect("tiny model");
    Arc::new(Model::load(&dir).expect("load tiny model"))
}

#[test]
fn cpu_always_and_auto_falls_back_without_a_gpu() {
    let m = tiny();
    assert_eq!(Device::open(m.clone(), DeviceChoice::Cpu).unwrap().name(), "cpu");
    if !cuda_built() {
        assert_eq!(Device::open(m.clone(), DeviceChoice::Auto).unwrap().name(), "cpu");
        let e = Device::open(m, DeviceChoice::Cuda).err().expect("no CUDA in this build");
        assert_eq!(e.to_string(), format!("device: {NOT_BUILT}"));
        assert_eq!(e.error_type(), "device");
    } else if !pdq_kernels::cuda::is_available() {
        // A CUDA build on a machine without a driver (the NVRTC check in CI runs this).
        assert_eq!(Device::open(m.clone(), DeviceChoice::Auto).unwrap().name(), "cpu");
        let e = Device::open(m, DeviceChoice::Cuda).err().expect("no driver here");
        assert!(e.to_string().contains("libcuda"), "{e}");
        assert_eq!(e.error_type(), "device");
    }
}

/// A token asked of the executor is the token the host samples from the logits it returns.
#[test]
fn a_wanted_token_is_the_sample_of_the_returned_logits() {
    let m = tiny();
    let dev = Device::from(m.clone());
    let mut a = dev.executor(1 << 20).unwrap();
    let mut b = dev.executor(1 << 20).unwrap();
    assert_eq!(a.device(), "cpu");
    let prompt = m.encode("the executor seam").unwrap();
    let seeded = SamplingParams { temperature: 0.9, top_p: 0.95, seed: 7, ..Default::default() };
    let (sa, sb) = (a.add_sequence(64).unwrap(), b.add_sequence(64).unwrap());
    let tok = a.step(&[StepItem { seq: sa, tokens: &prompt, want: Want::Token(seeded.draw(3)) }]).unwrap();
    let logits = b.step(&[StepItem { seq: sb, tokens: &prompt, want: Want::Logits }]).unwrap();
    let logits = logits.into_iter().next().unwrap().into_logits().unwrap();
    assert_eq!(tok, vec![StepOut::Token(sample(&logits, &seeded, 3))]);
    // Pages leave one executor and continue in another with the same next logits.
    let pages = a.export(sa).unwrap();
    let moved = b.import(&pages, 64).unwrap();
    let fork = b.fork(moved, 64).unwrap();
    let next = [5u32];
    let both = b
        .step(&[
            StepItem { seq: moved, tokens: &next, want: Want::Logits },
            StepItem { seq: fork, tokens: &next, want: Want::Logits },
        ])
        .unwrap();
    let cont = a.step(&[StepItem { seq: sa, tokens: &next, want: Want::Logits }]).unwrap();
    assert_eq!(both[0], cont[0]);
    assert_eq!(both[1], cont[0], "a fork continues exactly as its source");
    b.release(moved);
    b.release(fork);
    b.release(sb);
    assert_eq!(b.pool().n_sequences(), 0);
    b.pool().check().unwrap();
    // A rejected step changes nothing.
    let before = a.pool().len(sa).unwrap();
    let bad = [u32::MAX];
    assert!(a.step(&[StepItem { seq: sa, tokens: &bad, want: Want::Logits }]).is_err());
    assert_eq!(a.pool().len(sa).unwrap(), before);
}
