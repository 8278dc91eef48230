"""Sentence embeddings of all-MiniLM-L6-v2 from an .lsc file against the dense model.

    lscjax compress MODEL/model.safetensors -o m.lsc --recipe-file examples/minilm_recipe.toml
    python tools/minilm_file_fidelity.py MODEL m.lsc

The file's leaves replace the dense params of `lscjax.models.bert_from_hf(MODEL)` (dequantized;
the leaves the encoder does not use, such as the pooler, are ignored). On the evaluation
sentences of examples/data/sentences.txt (after the first 300), prints the mean and minimum
cosine similarity of the two sentence embeddings of each sentence.
"""

import argparse
from pathlib import Path

import jax
import numpy as np

import lscjax
from lscjax._src.checkpoints import flatten, nest
from lscjax.models import bert_from_hf, sentence_embedding, tokenize

SENTENCES = Path(__file__).resolve().parents[1] / "examples" / "data" / "sentences.txt"
CALIBRATION = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the Hugging Face model folder")
    parser.add_argument("file", help="the .lsc file of the same model")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    module, params = bert_from_hf(args.folder)
    stored = flatten(lscjax.load(args.file))
    from_file = nest({path: stored[path] for path in flatten(params)})
    sentences = SENTENCES.read_text(encoding="utf-8").splitlines()[CALIBRATION:]
    embed = jax.jit(
        lambda p, ids, mask: sentence_embedding(module.apply({"params": p}, ids, mask), mask)
    )
    cosines = []
    for start in range(0, len(sentences), args.batch):
        ids, mask = tokenize(args.folder, sentences[start : start + args.batch])
        a, b = np.asarray(embed(params, ids, mask)), np.asarray(embed(from_file, ids, mask))
        cosines.append(
            np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        )
    cosine = np.concatenate(cosines)
    print(f"sentences: {len(cosine)}  cosine mean {cosine.mean():.4f}  min {cosine.min():.4f}")


if __name__ == "__main__":
    main()
