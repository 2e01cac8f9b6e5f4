//! The bundled demo model (models/demo) end to end: it answers the README's word problem, in
//! fewer forwards with SBD than with NTP, and the stream shows exactly the final text.

use std::path::PathBuf;
use std::sync::Arc;

use setblock::{Event, GenerateOptions, LoadOptions, Mode, Model, Session, StopReason};

const QUESTION: &str = "Ned has 5 boxes of eggs. Each box holds 7 eggs. Ned finds 14 more eggs. Ned gives 9 eggs to Ann. How many eggs does Ned have now?";

#[test]
fn the_demo_model_answers_with_fewer_forwards_in_sbd_mode() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo");
    let model = Arc::new(
        Model::load(
            dir,
            &LoadOptions {
                threads: Some(1),
                ..LoadOptions::default()
            },
        )
        .unwrap(),
    );
    assert_eq!(
        model.manifest.block_size(),
        8,
        "the block size chosen on the validation set"
    );
    let mut s = Session::new(model).unwrap();
    let mut streamed = String::new();
    let sbd = s
        .generate(QUESTION, &GenerateOptions::default(), |e| {
            if let Event::Block { text, .. } = e {
                streamed.push_str(text);
            }
        })
        .unwrap();
    assert_eq!(sbd.stats.stop_reason, StopReason::Eos);
    assert!(sbd.text.trim_end().ends_with("#### 40"), "{:?}", sbd.text);
    assert_eq!(streamed, sbd.text);
    assert!(!streamed.contains("<|endoftext|>"));
    s.reset();
    let ntp = s
        .generate(
            QUESTION,
            &GenerateOptions {
                mode: Mode::Ntp,
                ..GenerateOptions::default()
            },
            |_| {},
        )
        .unwrap();
    assert_eq!(ntp.text, sbd.text);
    assert_eq!(ntp.stats.forward_passes, ntp.stats.generated_tokens);
    assert!(
        sbd.stats.forward_passes * 2 < ntp.stats.forward_passes,
        "{} vs {}",
        sbd.stats.forward_passes,
        ntp.stats.forward_passes
    );
}
