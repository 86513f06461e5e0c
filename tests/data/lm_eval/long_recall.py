"""A local lm-eval task's documents: find a secret animal named once in a long note (offline tests).

Each document is a note of repeated short sentences with one "The secret animal is the <animal>."
at a random depth, a question, and four one-word choices (one SmolLM2 token each, so lm-eval
scores all four from one forward). The notes are ~4.7k characters: ~4.7k tokens for the random
test models' byte tokenizer (trained length 128) and ~1k tokens for SmolLM2.

``long_recall.yaml`` and ``long_recall_generate.yaml`` load them through ``load`` (lm-eval's
``custom_dataset``), so the task works from any directory; ``python long_recall.py`` rewrites
``long_recall.jsonl`` (the committed copy) from the seeds below. ``long_recall_sizes.yaml`` asks
the same of notes of different sizes, built here on load (``load_sizes``), for length buckets.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "long_recall.jsonl"
FILLER = ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.",
          "A river runs through the valley.", "The old clock ticks on the wall.", "Rain falls softly on the roof."]
ANIMALS = ["cat", "dog", "fish", "bird"]
DOCUMENTS, SENTENCES = 8, 200


def make() -> list[dict]:
    docs = []
    for index in range(DOCUMENTS):
        rng = random.Random(f"long_recall/{index}")
        answer = rng.randrange(len(ANIMALS))
        sentences = [rng.choice(FILLER) for _ in range(SENTENCES)]
        sentences.insert(rng.randrange(SENTENCES), f"The secret animal is the {ANIMALS[answer]}.")
        docs.append({"context": " ".join(sentences), "question": "What is the secret animal?", "choices": ANIMALS,
                     "answer": answer})
    return docs


SIZES = [40, 5, 120, 20, 80, 10, 160, 60]  # sentences per note of long_recall_sizes (doc_id order)


def make_sizes() -> list[dict]:
    """Notes of different sizes (long_recall_sizes.yaml, for length buckets): ~0.1k to ~3.8k byte
    tokens, each with ``length``, its word count (LongBench-E's size field)."""
    docs = []
    for index, sentences in enumerate(SIZES):
        rng = random.Random(f"long_recall_sizes/{index}")
        answer = rng.randrange(len(ANIMALS))
        note = [rng.choice(FILLER) for _ in range(sentences)]
        note.insert(rng.randrange(sentences), f"The secret animal is the {ANIMALS[answer]}.")
        context = " ".join(note)
        docs.append({"context": context, "question": "What is the secret animal?", "choices": ANIMALS,
                     "answer": answer, "length": len(context.split())})
    return docs


def load_sizes(**metadata):
    import datasets

    return {"test": datasets.Dataset.from_list(make_sizes())}


def load(**metadata):
    """lm-eval's custom_dataset: {split: Dataset}; the metadata lm-eval passes (lengths, tokenizer) is not needed."""
    import datasets

    docs = [json.loads(line) for line in DATA.read_text().splitlines()]
    return {"test": datasets.Dataset.from_list(docs)}


if __name__ == "__main__":
    DATA.write_text("".join(json.dumps(doc) + "\n" for doc in make()))
