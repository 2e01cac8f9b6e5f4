"""`mix`: a chat model's SBD task mix (the SmolLM2-135M-Instruct recipe, docs/results-smollm2.md).

Four kinds of rows, every prompt rendered by the model's own chat template exactly as
`setblock generate` renders a `--prompt` (one user message, the generation prompt appended), so
the trained model works through the CLI as shipped:

- ``gsm``, ``trace``, ``sort``: the demo's tasks (``tasks.py``, same seeds and held-out split, so
  this model's Table 1 sits beside the demo's); the user message is the question, the response
  the worked answer ending in ``#### N``.
- ``extract``: a short text about a person or an order, and the fields as one-line JSON (the
  structured task a device app wants; graded by parsing).
- ``general``: varied instructions answered by the *base* model itself, greedily, so that the
  fine-tune keeps its chat behaviour and SBD learns its own distribution. Only answers that end
  with EOS within the limit are kept (none is cut).

``train.jsonl`` is the training file; ``test.jsonl`` holds 300 held-out rows per graded task;
``general_test.jsonl`` holds instructions of topics the training rows never use.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import torch

from . import hf
from .tasks import TASKS, TEST_SEEDS, TRAIN_SEEDS, final_answer, generate

FIRST = "Ann Ben Carla Dmitri Elena Farid Grace Hiro Ines Jamal Kofi Lena Mateo Nadia Omar Priya Quinn Rosa Sven Tara"
LAST = "Adams Berg Costa Diaz Evans Fischer Garcia Haddad Ito Jensen Kim Lopez Moreau Novak Okafor Patel Rossi Silva"
CITIES = "Lisbon Osaka Nairobi Denver Oslo Lyon Austin Porto Seoul Lima Dublin Cairo Perth Quito Turin Hanoi".split()
JOBS = "nurse teacher baker pilot chemist plumber architect farmer librarian welder designer dentist".split()
PRODUCTS = "lamp kettle backpack keyboard blender helmet tent drill jacket monitor scooter printer".split()

PERSON = [
    "{name} is {age_article} {age}-year-old {job} from {city}.",
    "Meet {name}: {age} years old, works as {a_job} in {city}.",
    "{city}-based {job} {name} turned {age} this year.",
    "After years in {city}, {name} ({age}) still works as {a_job}.",
    "Our new {job}, {name}, is {age} and moved here from {city}.",
]
ORDER = [
    "Order {id}: {qty} x {product} at ${price} each, ship to {city}.",
    "Please send {qty} {product}s (${price} apiece) to our {city} office, reference {id}.",
    "{city} store requests {qty} units of the {product}, unit price ${price}, order number {id}.",
]


def extract(rng: random.Random) -> tuple[str, str]:
    """A text and its fields as JSON: a person (name, age, job, city) or an order."""
    if rng.random() < 0.5:
        f = {
            "name": f"{rng.choice(FIRST.split())} {rng.choice(LAST.split())}",
            "age": rng.randint(19, 78),
            "job": rng.choice(JOBS),
            "city": rng.choice(CITIES),
        }
        article = "an" if f["job"][0] in "aeiou" else "a"
        age_article = "an" if str(f["age"]).startswith(("8", "11", "18")) else "a"
        text = rng.choice(PERSON).format(**f, a_job=f"{article} {f['job']}", age_article=age_article)
        ask = "Extract the person's name, age, job and city from this text as JSON"
    else:
        f = {
            "order_id": f"{rng.choice('ABCDEFGHJK')}{rng.randint(1000, 9999)}",
            "product": rng.choice(PRODUCTS),
            "quantity": rng.randint(1, 40),
            "unit_price": round(rng.randint(199, 49999) / 100, 2),
            "city": rng.choice(CITIES),
        }
        text = rng.choice(ORDER).format(
            id=f["order_id"], qty=f["quantity"], product=f["product"], price=f"{f['unit_price']:.2f}", city=f["city"]
        )
        ask = "Extract the order_id, product, quantity, unit_price and city from this text as JSON"
    return f"{ask}: {text}", json.dumps(f)


# general instructions: (template, topics); training and held-out topics never overlap
GENERAL = [
    (
        "Explain what {} is in two sentences.",
        "photosynthesis|a black hole|inflation|a vaccine|gravity|a volcano|"
        "the internet|democracy|a rainbow|an atom|electricity|a glacier|recycling|a compiler|DNA|a tsunami",
    ),
    (
        "Give three tips for {}.",
        "sleeping better|saving money|learning a language|staying focused|cooking rice|"
        "running a first marathon|keeping plants alive|writing an email|public speaking|packing a suitcase",
    ),
    (
        "Write a short poem about {}.",
        "the sea|autumn|a cat|the moon|coffee|a city at night|rain|mountains|"
        "a train journey|friendship|winter|a lighthouse",
    ),
    (
        "What is the difference between {}?",
        "weather and climate|a virus and a bacterium|a lake and a sea|"
        "speed and velocity|a list and a tuple|an alligator and a crocodile|baking soda and baking powder",
    ),
    (
        "How do I {}?",
        "boil an egg|change a flat tire|make a cup of tea|tie a tie|plant a tree|clean a keyboard|"
        "write a good summary|reset a router|iron a shirt|make pancakes",
    ),
    (
        "Summarize the benefits of {} in a few sentences.",
        "exercise|reading|walking|drinking water|meditation|learning to code|public libraries|cycling to work",
    ),
    (
        "Tell me a fun fact about {}.",
        "octopuses|honey|the Moon|bananas|the Eiffel Tower|penguins|Saturn|owls|sharks|the human heart",
    ),
    (
        "Write a one-paragraph story about {}.",
        "a lost key|a robot who learns to paint|a dragon who is afraid of "
        "fire|a message in a bottle|a talking tree|the last day of summer",
    ),
    (
        "Why do {}?",
        "leaves change color in autumn|cats purr|we dream|birds migrate|onions make us cry|"
        "stars twinkle|bread rise|we yawn|ice cubes float",
    ),
    (
        "Write a polite email {}.",
        "asking for a day off|declining a meeting|thanking a colleague|"
        "requesting a refund|introducing yourself to a new team|rescheduling an appointment",
    ),
    (
        "Give me a simple recipe for {}.",
        "tomato soup|guacamole|fried rice|banana bread|lemonade|an omelette|hummus|a fruit salad",
    ),
    (
        "What are the pros and cons of {}?",
        "working from home|electric cars|social media|living in a big city|online shopping|solar panels|homeschooling",
    ),
    (
        "Explain {} to a beginner.",
        "how a computer stores numbers|what an API is|how compound interest works|"
        "what a spreadsheet formula does|how GPS finds a location|what a password manager is",
    ),
]
GENERAL_HELD_OUT = [
    ("Explain what {} is in two sentences.", "a rainforest|an earthquake|a battery|a star"),
    ("Give three tips for {}.", "studying for an exam|drawing faces|organizing a desk"),
    ("Write a short poem about {}.", "a river|spring|a dog"),
    ("What is the difference between {}?", "a frog and a toad|a comet and an asteroid|an ocean and a sea"),
    ("How do I {}?", "make a paper airplane|brew coffee|wash a wool sweater"),
    ("Summarize the benefits of {} in a few sentences.", "gardening|swimming|volunteering"),
    ("Tell me a fun fact about {}.", "elephants|Mars|chocolate|giraffes"),
    ("Write a one-paragraph story about {}.", "a brave mouse|a forgotten umbrella|a clock that runs backward"),
    ("Describe {} to a child.", "how a rainbow forms|why the sky is blue|what a cloud is|how bees make honey"),
    ("List three uses of {}.", "a paperclip|vinegar|a spoon|a rubber band"),
    ("Why is {} important?", "sleep|clean water|biodiversity|kindness"),
    ("What should I know before {}?", "adopting a cat|buying a bike|starting a garden"),
    ("Suggest a name for {}.", "a bakery|a pet turtle|a hiking club"),
    ("Translate the idea of {} into a simple analogy.", "a computer's memory|a firewall|an ecosystem"),
]


def instructions(table: list[tuple[str, str]]) -> list[str]:
    """Every template filled with every one of its topics."""
    return [t.format(topic) for t, topics in table for topic in topics.split("|")]


def chat_prompt(tok, user: str) -> str:  # noqa: ANN001
    """The prompt text `setblock generate` renders for one user message."""
    return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)


def greedy_answers(checkpoint: Path, prompts: list[str], max_new_tokens: int, batch: int = 8) -> list[str | None]:
    """The model's greedy answer to each (rendered) prompt; None where EOS did not come in time."""
    model = hf.load_model(checkpoint)
    tok = hf.load_tokenizer(checkpoint)
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[str | None] = []
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=tok.eos_token_id
            )
        for row in gen[:, enc["input_ids"].shape[1] :].tolist():
            if tok.eos_token_id not in row:
                out.append(None)
                continue
            out.append(tok.decode(row[: row.index(tok.eos_token_id)], skip_special_tokens=False).strip())
    return out


def _rows(tok, task: str, problems: list[tuple[str, str]]) -> Iterator[dict]:  # noqa: ANN001
    for q, a in problems:
        yield {
            "task": task,
            "user": q,
            "prompt": chat_prompt(tok, q),
            "response": a,
            "answer": final_answer(a) if task in TASKS else a,
        }


def make_mix(  # noqa: PLR0913
    checkpoint: Path,
    out: Path,
    per_task: int,
    general_copies: int,
    max_new_tokens: int = 200,
    general_answers: Path | None = None,
) -> dict:
    """Write train.jsonl, test.jsonl, general_test.jsonl and general.jsonl (the base model's answers)
    under ``out``; returns the row counts. ``general_answers``: a general.jsonl written before,
    reused instead of generating again (the only slow part; everything else is seeded)."""
    out.mkdir(parents=True, exist_ok=True)
    tok = hf.load_tokenizer(checkpoint)
    train: list[dict] = []
    test: list[dict] = []
    for task in TASKS:
        held = generate(task, 300, TEST_SEEDS[task])
        test += _rows(tok, task, held)
        excl = [q for q, _ in held]
        train += _rows(tok, task, generate(task, per_task, TRAIN_SEEDS[task], exclude=excl, distinct=False))
    rng = random.Random(4)
    held_x = [extract(random.Random(10_000 + i)) for i in range(300)]
    held_q = {q for q, _ in held_x}
    test += _rows(tok, "extract", held_x)
    xs: list[tuple[str, str]] = []
    while len(xs) < per_task:
        q, a = extract(rng)
        if q not in held_q:
            xs.append((q, a))
    train += _rows(tok, "extract", xs)
    general = instructions(GENERAL)
    if general_answers is not None:
        rows = [json.loads(line) for line in Path(general_answers).read_text().splitlines()]
        answers = [r["response"] for r in rows]
        if [r["user"] for r in rows] != general:
            raise ValueError(f"{general_answers}: its prompts are not this version's general instructions")
    else:
        answers = greedy_answers(checkpoint, [chat_prompt(tok, p) for p in general], max_new_tokens)
    with (out / "general.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps({"user": p, "response": a}) + "\n" for p, a in zip(general, answers, strict=True))
    kept = [(p, a) for p, a in zip(general, answers, strict=True) if a]
    for _ in range(general_copies):
        train += _rows(tok, "general", kept)
    random.Random(0).shuffle(train)
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        with (out / name).open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    with (out / "general_test.jsonl").open("w", encoding="utf-8") as f:
        for p in instructions(GENERAL_HELD_OUT):
            f.write(json.dumps({"task": "general", "user": p, "prompt": chat_prompt(tok, p)}) + "\n")
    counts = {
        "train": len(train),
        "test": len(test),
        "general_prompts": len(general),
        "general_kept": len(kept),
        "general_test": len(instructions(GENERAL_HELD_OUT)),
    }
    counts["train_sha256"] = hf.sha256(out / "train.jsonl")
    (out / "mix.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts
