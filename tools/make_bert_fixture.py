"""Write tests/fixtures/tiny_bert/: a tiny random BERT in Hugging Face layout and its outputs.

The expected outputs come from Hugging Face transformers' PyTorch ``BertModel``, an
implementation independent of lscjax, computed in float64 and stored as float32. The test suite
reads the folder with `lscjax.models.bert_from_hf` and needs no torch.

Run once, in an environment with torch, transformers and safetensors (never a dependency of
lscjax):

    python tools/make_bert_fixture.py [--out tests/fixtures/tiny_bert]

Writes config.json, model.safetensors and expected.npz: input_ids int32 [3, 10],
attention_mask int32 [3, 10] (rows of 10, 7 and 4 tokens), token_type_ids int32 [3, 10],
last_hidden_state float32 [3, 10, 32] (with those token types) and
last_hidden_state_no_types float32 [3, 10, 32] (token types all zero).
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/tiny_bert"))
    args = parser.parse_args()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        layer_norm_eps=1e-7,
        hidden_act="gelu",
        attn_implementation="eager",
    )
    model = BertModel(config).eval()
    # Weights far from the defaults (LayerNorm scale 1, bias 0), so that every tensor matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    lengths = [10, 7, 4]
    generator = np.random.default_rng(0)
    ids = generator.integers(1, config.vocab_size, size=(3, 10)).astype(np.int32)
    mask = (np.arange(10)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    ids = ids * mask  # the padding id 0 after each sentence
    types = ((np.arange(10)[None, :] >= np.array([5, 3, 2])[:, None]) * mask).astype(np.int32)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    reference = model.double()
    with torch.no_grad():
        t = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
        hidden = reference(t(ids), attention_mask=t(mask), token_type_ids=t(types))
        hidden_no_types = reference(t(ids), attention_mask=t(mask))
    np.savez(
        args.out / "expected.npz",
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=types,
        last_hidden_state=hidden.last_hidden_state.numpy().astype(np.float32),
        last_hidden_state_no_types=hidden_no_types.last_hidden_state.numpy().astype(np.float32),
    )
    for path in sorted(args.out.iterdir()):
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
