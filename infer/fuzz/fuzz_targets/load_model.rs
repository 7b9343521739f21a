//! `Model::from_bytes` on hostile files must return a typed error, never panic, and a model
//! that loads must classify. Half the inputs are raw bytes; the other half are edits (bit
//! flips, truncation, byte overwrites) of a valid ResNet-18 file, which reach far deeper into
//! the loader than random bytes that fail at the header.
#![no_main]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use face2exp_infer::{ImageView, Model, PixelFormat, Session, SessionConfig};
use libfuzzer_sys::fuzz_target;

fn valid_file() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let spec = common::Spec {
            arch: "resnet18",
            stem: "small",
            input_size: 8,
            classes: 7,
        };
        common::model_file(&spec, 11)
    })
}

#[derive(Arbitrary, Debug)]
enum Edit {
    Flip { at: u32, bit: u8 },
    Set { at: u32, value: u8 },
    Truncate { len: u32 },
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Edited(Vec<Edit>),
}

fuzz_target!(|input: Input| {
    let bytes = match input {
        Input::Raw(bytes) => bytes,
        Input::Edited(edits) => {
            let mut bytes = valid_file().to_vec();
            // Edits aim at the header half the time: that is where the structure lives.
            let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            for edit in edits.into_iter().take(8) {
                let span = |at: u32| {
                    let limit = if at % 2 == 0 { header } else { bytes.len() };
                    at as usize % limit.max(1)
                };
                match edit {
                    Edit::Flip { at, bit } => {
                        let i = span(at);
                        if i < bytes.len() {
                            bytes[i] ^= 1 << (bit % 8);
                        }
                    }
                    Edit::Set { at, value } => {
                        let i = span(at);
                        if i < bytes.len() {
                            bytes[i] = value;
                        }
                    }
                    Edit::Truncate { len } => bytes.truncate(len as usize % (bytes.len() + 1)),
                }
            }
            bytes
        }
    };
    if let Ok(model) = Model::from_bytes(&bytes) {
        let config = SessionConfig {
            max_width: 16,
            max_height: 16,
            threads: 1,
        };
        let mut session = Session::new(&model, config);
        let pixels = [7u8; 16 * 16];
        let image = ImageView::packed(&pixels, 16, 16, PixelFormat::Gray8).unwrap();
        let p = session.classify(&image).unwrap();
        assert!(p.class < model.num_classes());
    }
});
