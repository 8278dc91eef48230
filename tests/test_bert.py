"""The Flax BERT read from a Hugging Face folder against PyTorch transformers' stored outputs."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lscjax
from lscjax import LscError
from lscjax.models import BertConfig, bert_from_hf, sentence_embedding, tokenize
from lscjax.sparse import BlockSparse

pytest.importorskip("safetensors")

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_bert"


@pytest.fixture(scope="module")
def bert():
    return bert_from_hf(FIXTURE)


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURE / "expected.npz") as npz:
        return dict(npz)


def test_matches_pytorch_bert_model(bert, expected):
    module, params = bert
    apply = jax.jit(module.apply)
    hidden = apply(
        {"params": params},
        expected["input_ids"],
        expected["attention_mask"],
        expected["token_type_ids"],
    )
    assert hidden.dtype == jnp.float32 and hidden.shape == (3, 10, 32)
    # Max abs error <= 1e-5 against BertModel's float64 outputs (values of order 1).
    np.testing.assert_allclose(np.asarray(hidden), expected["last_hidden_state"], rtol=0, atol=1e-5)
    default_types = apply({"params": params}, expected["input_ids"], expected["attention_mask"])
    np.testing.assert_allclose(
        np.asarray(default_types), expected["last_hidden_state_no_types"], rtol=0, atol=1e-5
    )
    assert not np.allclose(expected["last_hidden_state"], expected["last_hidden_state_no_types"])


def test_param_paths_read_like_hugging_face(bert):
    _, params = bert
    layer = params["encoder"]["layer"]["1"]
    assert layer["attention"]["self"]["query"]["kernel"].shape == (32, 32)
    assert layer["intermediate"]["dense"]["kernel"].shape == (32, 64)
    assert layer["output"]["dense"]["kernel"].shape == (64, 32)
    assert params["embeddings"]["word_embeddings"]["embedding"].shape == (100, 32)
    assert set(params) == {"embeddings", "encoder"}  # the pooler is left out


def test_sentence_embedding_by_hand():
    hidden = np.array(
        [[[3.0, 0.0], [1.0, 4.0], [9.0, 9.0]], [[0.0, 2.0], [5.0, 5.0], [7.0, 1.0]]], np.float32
    )
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    # Row 0: mean of (3, 0), (1, 4) = (2, 2) -> (1, 1) / sqrt(2); row 1: (0, 2) -> (0, 1).
    got = np.asarray(sentence_embedding(hidden, mask))
    np.testing.assert_allclose(got, [[2**-0.5, 2**-0.5], [0.0, 1.0]], rtol=1e-6)
    # An all-padding row is zero, not NaN (counts and norms clamped as sentence-transformers).
    zero = np.asarray(sentence_embedding(hidden, np.zeros((2, 3), int)))
    np.testing.assert_array_equal(zero, np.zeros((2, 2)))


def _config():
    return json.loads((FIXTURE / "config.json").read_text())


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"hidden_act": "gelu_new"}, r"hidden_act='gelu_new' is not supported; expected 'gelu'"),
        ({"position_embedding_type": "relative_key"}, r"position_embedding_type='relative_key'"),
        ({"model_type": "roberta"}, r"model_type='roberta'"),
        ({"model_type": None}, r"model_type=None"),
        ({"is_decoder": True}, r"is_decoder=True"),
        ({"num_attention_heads": 5}, r"hidden_size 32 is not divisible by num_attention_heads 5"),
        ({"hidden_size": 0}, r"hidden_size must be a positive integer"),
        ({"vocab_size": None}, r"vocab_size must be a positive integer"),
        ({"layer_norm_eps": -1.0}, r"layer_norm_eps must be a positive number"),
    ],
)
def test_config_refusals(change, match):
    config = {**_config(), **change}
    config = {k: v for k, v in config.items() if not (k == "model_type" and v is None)}
    with pytest.raises(LscError, match=match):
        BertConfig.from_hf(config)


def test_config_missing_size():
    config = _config()
    del config["intermediate_size"]
    with pytest.raises(LscError, match=r"missing \['intermediate_size'\]"):
        BertConfig.from_hf(config)


def test_folder_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        bert_from_hf(tmp_path)
    shutil.copy(FIXTURE / "model.safetensors", tmp_path)
    config = {**_config(), "num_hidden_layers": 3, "intermediate_size": 48}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        LscError, match=r"missing \['encoder/layer/2/.*wrong shapes \['encoder/layer/0/"
    ):
        bert_from_hf(tmp_path)


def test_served_block_sparse_unmodified(bert, expected):
    # Every Dense kernel of the encoder as BlockSparse, served by compressed_apply under jit.
    module, params = bert
    sparse = lscjax.flax.to_block_sparse(params, block=16, max_density=1.0)
    assert isinstance(
        sparse["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"], BlockSparse
    )
    served = jax.jit(lscjax.flax.compressed_apply(module.apply))(
        {"params": sparse},
        expected["input_ids"],
        expected["attention_mask"],
        expected["token_type_ids"],
    )
    np.testing.assert_allclose(np.asarray(served), expected["last_hidden_state"], rtol=0, atol=1e-5)


def test_tokenize_by_hand(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "the": 4, "cat": 5, "sat": 6, "##s": 7}
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    ids, mask = tokenize(tmp_path, ["The cats sat", "cat dog"])
    np.testing.assert_array_equal(ids, [[2, 4, 5, 7, 6, 3], [2, 5, 1, 3, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    ids, mask = tokenize(tmp_path, ["the cat sat the cat"], max_length=4)
    np.testing.assert_array_equal(ids, [[2, 4, 5, 3]])
    with pytest.raises(LscError, match="no sentences"):
        tokenize(tmp_path, [])
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        tokenize(tmp_path / "absent", ["x"])


def test_prefixed_and_foreign_files(tmp_path, bert):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(FIXTURE / "model.safetensors"))
    shutil.copy(FIXTURE / "config.json", tmp_path)
    # A BertFor* checkpoint: 'bert.' prefix and a task head, which is left out.
    head = {"cls.predictions.bias": np.zeros(100, np.float32)}
    save_file({f"bert.{k}": v for k, v in tensors.items()} | head, tmp_path / "model.safetensors")
    _, params = bert_from_hf(tmp_path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, bert[1])
    save_file({f"model.{k}": v for k, v in tensors.items()}, tmp_path / "model.safetensors")
    with pytest.raises(
        LscError, match=r"no 'embeddings.\*' or 'encoder.\*' tensors.*model\.embeddings"
    ):
        bert_from_hf(tmp_path)
