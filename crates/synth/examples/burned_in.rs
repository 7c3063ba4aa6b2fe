//! Writes ultrasound objects with burned-in text for `bench/deid/pixels.sh`:
//!
//!   burned_in OUT_DIR FRAMES [OBJECTS]
//!
//! OBJECTS objects (default 1) of FRAMES frames each, 480x640 RGB, the text of
//! `medfed_synth::burned_in` (name, ID, birth date, institution) in every frame.

use medfed_synth::burned_in::{BurnedInSpec, ImageKind, Layout, TextFont, burned_in_object};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(out), Some(frames)) = (args.first(), args.get(1)) else {
        return Err("usage: burned_in OUT_DIR FRAMES [OBJECTS]".into());
    };
    let frames: u32 = frames.parse()?;
    let objects: u64 = args.get(2).map(|o| o.parse()).transpose()?.unwrap_or(1);
    std::fs::create_dir_all(out)?;
    let font = TextFont::load()?;
    for i in 0..objects {
        let mut spec = BurnedInSpec::new(ImageKind::Us, Layout::Rgb8, 480, 640, frames);
        spec.seed = 100 + i;
        let made = burned_in_object(&spec, &font);
        made.object
            .write_to_file(std::path::Path::new(out).join(format!("us{i:04}.dcm")))?;
    }
    Ok(())
}
