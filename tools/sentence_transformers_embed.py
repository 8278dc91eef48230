"""Sentence embeddings by sentence-transformers, the reference for `tools/compare_minilm.py`.

Run in an environment with sentence-transformers (never a dependency of lscjax):

    python tools/sentence_transformers_embed.py MODEL_FOLDER examples/data/sentences.txt ref.npy

Writes float32 [N, H]: the normalised embeddings of the N lines of the sentence file.
"""

import argparse

import numpy as np
from sentence_transformers import SentenceTransformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a sentence-transformers model folder")
    parser.add_argument("sentences", help="a text file, one sentence a line")
    parser.add_argument("out", help="the .npy file to write")
    args = parser.parse_args()
    with open(args.sentences, encoding="utf-8") as f:
        sentences = f.read().splitlines()
    model = SentenceTransformer(args.folder, device="cpu")
    embeddings = model.encode(sentences, batch_size=64, convert_to_numpy=True)
    np.save(args.out, embeddings.astype(np.float32))
    print(f"{args.out}: {embeddings.shape}")


if __name__ == "__main__":
    main()
