"""A Flax Linen BERT encoder read from a Hugging Face folder (config.json + model.safetensors).

The encoder is Hugging Face's ``BertModel`` without its pooler, in plain Flax layers (nn.Embed,
nn.Dense with 2-D kernels [in, out], nn.LayerNorm), so that `lscjax.flax.compressed_apply` serves
it unmodified. Its parameter paths are Hugging Face's tensor names with '.' -> '/' and the last
name converted by `lscjax._src.hf_layout.from_torch`:

=================================================  =================================================
Hugging Face tensor                                Flax leaf
=================================================  =================================================
``embeddings.word_embeddings.weight``              ``embeddings/word_embeddings/embedding``
``embeddings.LayerNorm.weight``                    ``embeddings/LayerNorm/scale``
``encoder.layer.0.attention.self.query.weight``    ``encoder/layer/0/attention/self/query/kernel``
``encoder.layer.0.attention.output.dense.bias``    ``encoder/layer/0/attention/output/dense/bias``
``encoder.layer.0.intermediate.dense.weight``      ``encoder/layer/0/intermediate/dense/kernel``
=================================================  =================================================

Supported configurations: ``model_type`` "bert" with absolute position embeddings, token types,
post-LayerNorm and the exact (erf) GELU (all-MiniLM-L6-v2, BERT-base/large, ...); anything else is
refused by `BertConfig.from_hf`.
"""

import dataclasses
import json
import math
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.hf_layout import from_torch
from lscjax._src.tree import leaves_with_paths

_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)

#: Hugging Face config entries that change the computation, and the only values supported.
_FIXED = {
    "model_type": "bert",
    "hidden_act": "gelu",
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The sizes of a BERT encoder (the fields of Hugging Face's BertConfig that it uses)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, config: dict) -> "BertConfig":
        """Read and check a Hugging Face config.json dict.

        Args:
          config: the parsed config.json of a BERT-family model.

        Returns:
          The BertConfig.

        Raises:
          LscError: a missing or non-positive size, hidden_size not divisible by
            num_attention_heads, or an entry that changes the computation to one not supported
            (``model_type`` other than "bert", ``hidden_act`` other than "gelu" (exact erf GELU),
            ``position_embedding_type`` other than "absolute", a decoder or cross-attention).
        """
        for key, supported in _FIXED.items():
            value = config.get(key, supported if key != "model_type" else None)
            if value != supported:
                raise LscError(
                    f"config.json: {key}={value!r} is not supported; expected {supported!r}"
                )
        missing = [key for key in _REQUIRED if key not in config]
        if missing:
            raise LscError(f"config.json: missing {missing}")
        sizes = {key: config[key] for key in _REQUIRED}
        for key, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LscError(f"config.json: {key} must be a positive integer, got {value!r}")
        if sizes["hidden_size"] % sizes["num_attention_heads"]:
            raise LscError(
                f"config.json: hidden_size {sizes['hidden_size']} is not divisible by "
                f"num_attention_heads {sizes['num_attention_heads']}"
            )
        eps = config.get("layer_norm_eps", 1e-12)
        if not isinstance(eps, int | float) or not eps > 0:
            raise LscError(f"config.json: layer_norm_eps must be a positive number, got {eps!r}")
        return cls(**sizes, layer_norm_eps=float(eps))


class _Embeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids):
        c = self.config
        positions = jnp.arange(input_ids.shape[1])[None, :]
        x = (
            nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
            + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(
                positions
            )
            + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(
                token_type_ids
            )
        )
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="LayerNorm")(x)


class _SelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, attention_mask):
        c = self.config
        heads, width = c.num_attention_heads, c.hidden_size // c.num_attention_heads

        def split(name):  # [B, L, H] -> [B, heads, L, width]
            y = nn.Dense(c.hidden_size, name=name)(x)
            return y.reshape(*y.shape[:2], heads, width).transpose(0, 2, 1, 3)

        q, k, v = split("query"), split("key"), split("value")
        # softmax(q k^T / sqrt(width)) v, with the scale applied to q and the softmax's
        # normalisation to the [L, width] context rather than the [L, L] scores: the same
        # product with two passes over the scores fewer (1.8 ms per layer at (8, 128) on CPU against
        # 3.1 ms, timed once; docs/results/serving.md).
        scores = jnp.einsum("bhqd,bhkd->bhqk", q * (1 / math.sqrt(width)), k)
        keep = attention_mask[:, None, None, :].astype(bool)
        scores = jnp.where(keep, scores, jnp.finfo(scores.dtype).min)
        weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
        context = jnp.einsum("bhqk,bhkd->bhqd", weights, v) / weights.sum(-1)[..., None]
        return context.transpose(0, 2, 1, 3).reshape(x.shape)


class _Residual(nn.Module):
    """Dense, then LayerNorm of the sum with the block's input (BERT's post-LayerNorm)."""

    config: BertConfig

    @nn.compact
    def __call__(self, y, residual):
        c = self.config
        y = nn.Dense(c.hidden_size, name="dense")(y)
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="LayerNorm")(y + residual)


class _Attention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, attention_mask):
        y = _SelfAttention(self.config, name="self")(x, attention_mask)
        return _Residual(self.config, name="output")(y, x)


class _Intermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(self.config.intermediate_size, name="dense")(x)
        return jax.nn.gelu(y, approximate=False)


class _Layer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, attention_mask):
        x = _Attention(self.config, name="attention")(x, attention_mask)
        y = _Intermediate(self.config, name="intermediate")(x)
        return _Residual(self.config, name="output")(y, x)


class _Layers(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, attention_mask):
        for i in range(self.config.num_hidden_layers):
            x = _Layer(self.config, name=str(i))(x, attention_mask)
        return x


class _Encoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, attention_mask):
        return _Layers(self.config, name="layer")(x, attention_mask)


class Bert(nn.Module):
    """A BERT encoder (Hugging Face's BertModel without the pooler), inference only.

    Attributes:
      config: the sizes (`BertConfig`).

    Call with ``input_ids`` int [B, L] (token ids < vocab_size, L <= max_position_embeddings),
    ``attention_mask`` int or bool [B, L] (1 for tokens, 0 for padding) and optionally
    ``token_type_ids`` int [B, L] (default zeros); returns the last hidden state float32
    [B, L, hidden_size]. Padded keys get no attention; the hidden states at padded positions are
    computed but carry no meaning.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = _Embeddings(self.config, name="embeddings")(input_ids, token_type_ids)
        return _Encoder(self.config, name="encoder")(x, attention_mask)


def _encoder_tensors(state_dict: dict) -> dict:
    """The encoder's tensors of a Hugging Face BERT state dict: a 'bert.' prefix (BertFor*
    checkpoints) is removed, the pooler, task heads and the position_ids buffer are left out."""
    if "embeddings.word_embeddings.weight" not in state_dict and any(
        name.startswith("bert.") for name in state_dict
    ):
        state_dict = {
            name.removeprefix("bert."): v
            for name, v in state_dict.items()
            if name.startswith("bert.")
        }
    return {
        name: value
        for name, value in state_dict.items()
        if name.startswith(("embeddings.", "encoder.")) and not name.endswith("position_ids")
    }


def _check_params(params, expected, folder) -> None:
    """LscError naming the leaves where the checkpoint and the model built from its config differ."""
    have = {path: np.shape(leaf) for path, leaf in leaves_with_paths(params)}
    want = {path: tuple(leaf.shape) for path, leaf in leaves_with_paths(expected)}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    wrong = sorted(
        f"{p}: {have[p]} (expected {want[p]})" for p in set(have) & set(want) if have[p] != want[p]
    )
    if missing or unexpected or wrong:
        raise LscError(
            f"{folder}: model.safetensors does not match config.json: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )


def bert_from_hf(folder: str | os.PathLike) -> tuple[Bert, dict]:
    """A BERT encoder and its params from a Hugging Face model folder.

    Args:
      folder: a folder holding ``config.json`` and ``model.safetensors`` of a BERT-family model
        (e.g. sentence-transformers/all-MiniLM-L6-v2, bert-base-uncased). Reading safetensors
        needs ``pip install 'lscjax[hf]'``.

    Returns:
      (module, params): a `Bert` Linen module and its params (nested dicts of float32 jax arrays,
      paths as in the module docstring; the pooler, task heads and the position_ids buffer of
      the file are left out). ``module.apply({"params": params}, input_ids, attention_mask)``
      returns the last hidden state float32 [B, L, hidden_size].

    Raises:
      FileNotFoundError: no config.json or model.safetensors in `folder`.
      LscError: a configuration `BertConfig.from_hf` refuses, or tensors that do not match it
        (the message names the leaves).

    Example:
      >>> module, params = lscjax.models.bert_from_hf("all-MiniLM-L6-v2")
      >>> hidden = module.apply({"params": params}, input_ids, attention_mask)
      >>> embeddings = lscjax.models.sentence_embedding(hidden, attention_mask)
    """
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}")
    config = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise LscError("reading model.safetensors needs: pip install 'lscjax[hf]'") from None
    tensors = load_file(str(folder / "model.safetensors"))
    encoder = _encoder_tensors(tensors)
    if not encoder:
        raise LscError(
            f"{folder}: model.safetensors has no 'embeddings.*' or 'encoder.*' tensors of a BERT "
            f"(optionally prefixed 'bert.'); it has {sorted(tensors)[:5]}"
        )
    tree, _ = from_torch(encoder)
    module = Bert(config)
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    expected = jax.eval_shape(module.init, jax.random.key(0), ids, ids)["params"]
    _check_params(tree, expected, folder)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree)
    return module, params


def sentence_embedding(hidden, attention_mask):
    """Sentence embeddings as sentence-transformers computes them: mean pooling + L2 normalisation.

    Args:
      hidden: the last hidden state float [B, L, H].
      attention_mask: int or bool [B, L], 1 for tokens, 0 for padding.

    Returns:
      float32 [B, H]: the mean of `hidden` over the unmasked positions (the token count clamped
      to >= 1e-9, as sentence-transformers' Pooling does) divided by its L2 norm (clamped to
      >= 1e-12, as torch.nn.functional.normalize does).
    """
    mask = jnp.asarray(attention_mask, jnp.float32)[..., None]
    mean = jnp.sum(jnp.asarray(hidden, jnp.float32) * mask, axis=1) / jnp.maximum(
        jnp.sum(mask, axis=1), 1e-9
    )
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def tokenize(folder: str | os.PathLike, sentences: list[str], *, max_length: int = 256):
    """Token ids of `sentences` by the folder's tokenizer.json (the `tokenizers` package).

    Args:
      folder: a Hugging Face model folder holding ``tokenizer.json``.
      sentences: the texts.
      max_length: longer encodings are truncated to this many tokens (256 is
        all-MiniLM-L6-v2's max_seq_length).

    Returns:
      (input_ids, attention_mask): int32 [B, L] each, padded to the longest encoding (L) with the
      padding id of tokenizer.json (0, '[PAD]' if it sets none) and mask 0.

    Raises:
      FileNotFoundError: no tokenizer.json in `folder`.
      LscError: `tokenizers` is not installed (``pip install 'lscjax[hf]'``), or no sentences.
    """
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no tokenizer.json")
    if not sentences:
        raise LscError("tokenize: no sentences")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise LscError("tokenizing needs: pip install 'lscjax[hf]'") from None
    tokenizer = Tokenizer.from_file(str(path))
    pad = tokenizer.padding or {"pad_id": 0, "pad_token": "[PAD]"}
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=pad["pad_id"], pad_token=pad["pad_token"])
    encodings = tokenizer.encode_batch(list(sentences))
    ids = np.array([e.ids for e in encodings], np.int32)
    mask = np.array([e.attention_mask for e in encodings], np.int32)
    return ids, mask
