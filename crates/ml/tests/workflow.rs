//! The manifest-driven workflow end to end on NIfTI cases written here: training from a spec
//! with a model file that carries its card, resuming a run that was stopped (and extending it)
//! to the same weights as an uninterrupted one, evaluation on the source grid, prediction files,
//! refusal of a checkpoint of another spec, and fine-tuning with frozen layers.

use std::path::Path;

use medfed_ml::Device;
use medfed_ml::dataset::Split;
use medfed_ml::model_file;
use medfed_ml::workflow::{self, FinetuneSpec, MODEL_FILE, TrainSpec};
use medfed_volume::{Geometry, Volume};

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A bright ball (label 1) in a noisy dark 16^3 volume of 1.5 mm voxels, stored on an LPS grid
/// flipped along x (so the canonical orientation has work to do).
fn write_case(dir: &Path, id: &str, seed: u64) {
    let n = 16;
    let mut g = Geometry::new([n, n, n], [1.5, 1.5, 1.5]);
    g.direction = [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    let c = 6.0 + (seed % 4) as f64;
    let r = 3.5 + (seed % 3) as f64 * 0.5;
    let mut image = Vec::new();
    let mut label = Vec::new();
    for z in 0..n {
        for y in 0..n {
            for x in 0..n {
                let d =
                    ((x as f64 - c).powi(2) + (y as f64 - 8.0).powi(2) + (z as f64 - 8.0).powi(2))
                        .sqrt();
                let inside = d <= r;
                let noise = (((x * 31 + y * 17 + z * 7) as u64 + seed * 13) % 11) as f32;
                image.push(if inside { 200.0 } else { 20.0 } + noise);
                label.push(u16::from(inside));
            }
        }
    }
    medfed_volume::nifti::write(
        &dir.join(format!("{id}.nii.gz")),
        &Volume {
            geometry: g,
            data: image,
        },
    )
    .unwrap();
    medfed_volume::nifti::write(
        &dir.join(format!("{id}.labels.nii.gz")),
        &Volume {
            geometry: g,
            data: label,
        },
    )
    .unwrap();
}

fn setup(dir: &Path, epochs: usize) -> TrainSpec {
    let mut manifest = String::from("id,image,label,split\n");
    for (i, split) in ["train", "train", "validation", "test"].iter().enumerate() {
        let id = format!("ball{i}");
        write_case(dir, &id, i as u64);
        manifest.push_str(&format!("{id},{id}.nii.gz,{id}.labels.nii.gz,{split}\n"));
    }
    std::fs::write(dir.join("cases.csv"), manifest).unwrap();
    let spec = format!(
        r#"
manifest = "cases.csv"
[preprocess]
intensity = {{ kind = "percentile", low = 1.0, high = 99.0 }}
labels = "binary"
[model]
in_channels = 1
classes = 2
base_channels = 4
depth = 2
norm = "instance"
[train]
epochs = {epochs}
steps_per_epoch = 3
batch = 2
patch = [8, 8, 8]
learning_rate = 0.01
seed = 5
"#
    );
    std::fs::write(dir.join("spec.toml"), spec).unwrap();
    TrainSpec::load(&dir.join("spec.toml")).unwrap()
}

fn weights(path: &Path) -> Vec<u8> {
    // The tensors, not the header: the cards of two equal runs may differ in their history.
    let bytes = std::fs::read(path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + header..].to_vec()
}

#[test]
fn a_run_stopped_and_resumed_ends_with_the_weights_of_an_uninterrupted_one() {
    let _s = serial();
    let d = Device::flex();
    let whole = tempfile::tempdir().unwrap();
    let spec = setup(whole.path(), 3);
    let card = workflow::train(&spec, &whole.path().join("out"), &d, |_| {}).unwrap();
    assert_eq!(card.history.len(), 3);
    assert!(card.history.iter().all(|m| m.validation_dice.is_some()));
    assert_eq!(card.data.cases.get(&Split::Train), Some(&2));
    assert_eq!(
        card.data.cases.get(&Split::Test),
        None,
        "training never reads the test split"
    );

    // Stopped after one epoch (a run of 1), then resumed with the full count.
    let parts = tempfile::tempdir().unwrap();
    let short = setup(parts.path(), 1);
    workflow::train(&short, &parts.path().join("out"), &d, |_| {}).unwrap();
    let mut resumed_at = None;
    let spec3 = setup(parts.path(), 3);
    let card2 = workflow::train(&spec3, &parts.path().join("out"), &d, |e| {
        if let workflow::TrainEvent::Resumed { next_epoch } = e {
            resumed_at = Some(next_epoch);
        }
    })
    .unwrap();
    assert_eq!(resumed_at, Some(1));
    assert_eq!(
        card2.history, card.history,
        "same losses and validation Dice per epoch"
    );
    assert_eq!(
        weights(&whole.path().join("out").join(MODEL_FILE)),
        weights(&parts.path().join("out").join(MODEL_FILE))
    );

    // A checkpoint of another spec is refused, and left as it was.
    let mut other = spec3.clone();
    other.train.learning_rate = 0.02;
    let e = workflow::train(&other, &parts.path().join("out"), &d, |_| {}).unwrap_err();
    assert!(e.to_string().contains("another run"), "{e}");
}

#[test]
fn a_trained_model_segments_held_out_cases_on_their_own_grid_and_tunes() {
    let _s = serial();
    let d = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = setup(dir.path(), 12);
    spec.train.steps_per_epoch = 5;
    let out = dir.path().join("out");
    workflow::train(&spec, &out, &d, |_| {}).unwrap();
    let model = out.join(MODEL_FILE);
    let card = model_file::read_card(&model).unwrap();
    assert_eq!(card.network, spec.model);
    assert_eq!(card.preprocess, spec.preprocess);
    assert_eq!(card.medfed_version, env!("CARGO_PKG_VERSION"));

    let rows = workflow::evaluate(
        &model,
        &dir.path().join("cases.csv"),
        &[Split::Test],
        &d,
        || {},
    )
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].dice > 0.8, "held-out ball Dice {}", rows[0].dice);
    // Within 4 voxels of 1.5 mm (an untrained network misses by the width of the volume).
    assert!(
        rows[0].hd95_mm.is_some_and(|h| h < 6.0),
        "{:?}",
        rows[0].hd95_mm
    );

    let mut maps = Vec::new();
    workflow::predict_cases(
        &model,
        &dir.path().join("cases.csv"),
        &[Split::Test],
        &d,
        |c, v| {
            maps.push((c.id.clone(), v));
            Ok(())
        },
    )
    .unwrap();
    let truth = medfed_volume::nifti::read_labels(&dir.path().join("ball3.labels.nii.gz")).unwrap();
    assert_eq!(
        maps[0].1.geometry, truth.geometry,
        "the prediction lies on the image's own grid"
    );

    let how = FinetuneSpec {
        frozen_levels: 2,
        epochs: 2,
        steps_per_epoch: 2,
        learning_rate: 0.001,
        seed: 9,
    };
    let tuned = dir.path().join("tuned");
    let r = workflow::finetune(
        &model,
        &dir.path().join("cases.csv"),
        &how,
        &tuned,
        &d,
        |_| {},
    )
    .unwrap();
    assert_eq!(
        r.before.len(),
        3,
        "train, validation and test measured before"
    );
    assert_eq!(r.after.len(), 3);
    let tuned_card = model_file::read_card(&tuned.join(MODEL_FILE)).unwrap();
    assert_eq!(tuned_card.finetuned.len(), 1);
    assert_eq!(
        tuned_card.history, card.history,
        "the base training's history is kept"
    );
    // Frozen encoder levels keep their weights exactly; the head is retrained.
    let (a, b) = (
        std::fs::read(&model).unwrap(),
        std::fs::read(tuned.join(MODEL_FILE)).unwrap(),
    );
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    let tensor = |t: &safetensors::SafeTensors, name: &str| t.tensor(name).unwrap().data().to_vec();
    let names = a.names();
    let frozen = names
        .iter()
        .find(|n| n.starts_with("encoders.0.") && n.ends_with("weight"))
        .unwrap();
    let head = names
        .iter()
        .find(|n| n.starts_with("head.") && n.ends_with("weight"))
        .unwrap();
    assert_eq!(
        tensor(&a, frozen),
        tensor(&b, frozen),
        "frozen {frozen} unchanged"
    );
    assert_ne!(tensor(&a, head), tensor(&b, head), "the head was retrained");
}
