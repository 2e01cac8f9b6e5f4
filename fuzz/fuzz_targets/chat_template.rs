//! Chat templates from a model folder are code from a download: compile and render arbitrary
//! templates with arbitrary messages. An error or a string, never a panic or a hang (libFuzzer's
//! -timeout catches a hang).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use setblock::chat::ChatTemplate;
use setblock::Message;

#[derive(Arbitrary, Debug)]
struct Input {
    source: String,
    bos: String,
    eos: String,
    messages: Vec<(u8, String)>,
}

const SEEDS: [&str; 2] = [
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content | trim }} [/INST]{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}",
];

fuzz_target!(|input: Input| {
    // half the inputs mutate a real template's tail, so that rendering is reached often
    let source = match input.source.as_bytes().first() {
        Some(&b) if b % 2 == 0 => {
            let tail: String = input.source.chars().skip(1).collect();
            format!("{}{tail}", SEEDS[usize::from(b / 2) % 2])
        }
        _ => input.source,
    };
    let Ok(t) = ChatTemplate::new(source, input.bos, input.eos) else {
        return;
    };
    let roles = ["system", "user", "assistant", "tool"];
    let messages: Vec<Message> = input
        .messages
        .into_iter()
        .take(64)
        .map(|(r, content)| Message {
            role: roles[usize::from(r) % roles.len()].into(),
            content,
        })
        .collect();
    let _ = t.render(&messages);
});
