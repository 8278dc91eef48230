"""all-MiniLM-L6-v2 through `lscjax.models.bert_from_hf` against sentence-transformers' embeddings.

    python tools/compare_minilm.py MODEL_FOLDER examples/data/sentences.txt ref.npy

`ref.npy` comes from `tools/sentence_transformers_embed.py` on the same folder and sentences.
Prints the minimum, median and mean cosine similarity between the two embeddings of each sentence.
"""

import argparse

import jax
import numpy as np

from lscjax.models import bert_from_hf, sentence_embedding, tokenize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the Hugging Face model folder")
    parser.add_argument("sentences", help="a text file, one sentence a line")
    parser.add_argument("reference", help="the .npy of sentence-transformers' embeddings")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    with open(args.sentences, encoding="utf-8") as f:
        sentences = f.read().splitlines()
    reference = np.load(args.reference)
    module, params = bert_from_hf(args.folder)
    embed = jax.jit(
        lambda ids, mask: sentence_embedding(module.apply({"params": params}, ids, mask), mask)
    )
    ours = []
    for start in range(0, len(sentences), args.batch):
        ids, mask = tokenize(args.folder, sentences[start : start + args.batch])
        ours.append(np.asarray(embed(ids, mask)))
    ours = np.concatenate(ours)
    cosine = np.sum(ours * reference, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1)
    )
    print(f"sentences: {len(sentences)}")
    print(
        f"cosine min {cosine.min():.8f}  median {np.median(cosine):.8f}  mean {cosine.mean():.8f}"
    )
    print(f"max abs difference of embedding entries: {np.abs(ours - reference).max():.2e}")


if __name__ == "__main__":
    main()
