import copy
import json
import math
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import tiny_config
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForSeq2SeqLM
from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache
from transformers.modeling_outputs import Seq2SeqLMOutput
from transformers.utils.output_capturing import OutputRecorder

from configuration_vanilla import PRESETS, VanillaConfig
from modeling_vanilla import (
    VanillaDecoder,
    VanillaEncoder,
    VanillaForConditionalGeneration,
    VanillaModel,
    shift_tokens_right,
    sinusoidal_positions,
)


def model_for(**overrides) -> VanillaForConditionalGeneration:
    return VanillaForConditionalGeneration(tiny_config(**overrides)).eval()


def run_outside_the_project(script: str, tmp_path) -> subprocess.CompletedProcess:
    """Runs `script` in a fresh offline interpreter where the project is not importable: its working directory holds no
    copy, and the finder of the project's editable install (make setup) is taken off sys.meta_path."""
    hidden = "import sys\nsys.meta_path = [f for f in sys.meta_path if not f.__module__.startswith('__editable__')]\n"
    script = hidden + 'import importlib.util\nassert importlib.util.find_spec("modeling_vanilla") is None\n' + script
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def source_batch(batch=3, length=9, vocab=40):
    """Random source ids (no special tokens) with the later rows padded on the right."""
    ids = torch.randint(3, vocab, (batch, length))
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, length - 2 * row :] = 0
    return ids.masked_fill(mask == 0, 0), mask


def test_sinusoidal_table_matches_the_papers_formula():
    d_model, positions = 12, 50
    table = sinusoidal_positions(torch.arange(positions), d_model)
    for pos in range(positions):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_sinusoidal_positions_extend_past_max_position_embeddings():
    model = model_for(max_position_embeddings=8)
    ids = torch.randint(3, 40, (1, 20))
    assert model(input_ids=ids, decoder_input_ids=ids).logits.shape == (1, 20, 40)


def test_learned_positions_refuse_inputs_longer_than_max_position_embeddings():
    model = model_for(position_embedding_type="learned", max_position_embeddings=8)
    ids = torch.randint(3, 40, (1, 9))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=ids, decoder_input_ids=ids[:, :4])


@pytest.mark.parametrize("cache_implementation", [None, "static"], ids=["dynamic", "static"])
def test_generating_past_learned_positions_is_refused_with_either_cache(cache_implementation):
    """The dynamic cache fails at the first position past the table; the static cache, which counts positions in an
    unread tensor, before decoding, from max_length (an IndexError, or a device assert on a GPU, otherwise)."""
    model = model_for(position_embedding_type="learned", max_position_embeddings=8)
    ids, mask = source_batch(batch=2, length=5)
    settings = dict(input_ids=ids, attention_mask=mask, cache_implementation=cache_implementation, num_beams=2)
    with pytest.raises(ValueError, match=r"exceeds max_position_embeddings \(8\)"):
        model.generate(**settings, max_new_tokens=10, min_new_tokens=10)
    assert model.generate(**settings, max_new_tokens=8, min_new_tokens=8).shape == (2, 9)


def test_shapes_of_every_output():
    model = model_for(_attn_implementation="eager")
    ids, mask = source_batch()
    decoder_ids = torch.randint(3, 40, (3, 5))
    out = model(
        input_ids=ids,
        attention_mask=mask,
        decoder_input_ids=decoder_ids,
        output_attentions=True,
        output_hidden_states=True,
    )
    assert out.logits.shape == (3, 5, 40)
    assert out.encoder_last_hidden_state.shape == (3, 9, 16)
    assert len(out.encoder_hidden_states) == 3 and len(out.decoder_hidden_states) == 4
    assert [a.shape for a in out.encoder_attentions] == [(3, 4, 9, 9)] * 2
    assert [a.shape for a in out.decoder_attentions] == [(3, 4, 5, 5)] * 3
    assert [a.shape for a in out.cross_attentions] == [(3, 4, 5, 9)] * 3


@pytest.mark.parametrize("norm_first", [False, True])
def test_hidden_states_are_the_inputs_of_every_layer_then_the_stack_output(norm_first):
    model = model_for(norm_first=norm_first)
    ids, mask = source_batch()
    layer_inputs = []
    for layer in model.model.encoder.layers:
        layer.register_forward_pre_hook(lambda module, args: layer_inputs.append(args[0]))
    out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :4], output_hidden_states=True)
    assert len(out.encoder_hidden_states) == len(layer_inputs) + 1
    for recorded, layer_input in zip(out.encoder_hidden_states, layer_inputs, strict=False):
        torch.testing.assert_close(recorded, layer_input)
    torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)


@pytest.mark.skipif(
    "num_hidden_layers_key" not in OutputRecorder.__dataclass_fields__,
    reason="this transformers selects hidden states by list without negative indices",
)
@pytest.mark.parametrize("selected", [[-1], [1, -1], [0, -2]])
def test_selected_hidden_states_count_negative_indices_in_each_stacks_own_layers(selected):
    model = model_for(encoder_layers=3, decoder_layers=2)
    ids, mask = source_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :4])
    every = model(**inputs, output_hidden_states=True)
    chosen = model(**inputs, output_hidden_states=selected)
    for name in ("encoder_hidden_states", "decoder_hidden_states"):
        full, kept = getattr(every, name), getattr(chosen, name)
        wanted = {i % len(full) for i in selected}
        assert len(kept) == len(full), name
        for i, (state, recorded) in enumerate(zip(full, kept, strict=True)):
            if i in wanted:
                torch.testing.assert_close(recorded, state, msg=f"{name}[{i}]")
            else:
                assert recorded is None, f"{name}[{i}] was not asked for"


def test_return_dict_false_gives_the_same_outputs_as_a_tuple():
    model = model_for(_attn_implementation="eager")
    ids, mask = source_batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :4], output_attentions=True)
    as_dict = model(**kwargs)
    as_tuple = model(**kwargs, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    torch.testing.assert_close(as_tuple[0], as_dict.logits)
    torch.testing.assert_close(as_tuple[-1], as_dict.encoder_attentions)


def test_encoder_and_decoder_run_on_their_own():
    config = tiny_config()
    encoder, decoder = VanillaEncoder(config).eval(), VanillaDecoder(config).eval()
    ids, mask = source_batch()
    memory = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    out = decoder(input_ids=torch.randint(3, 40, (3, 4)), encoder_hidden_states=memory, encoder_attention_mask=mask)
    assert memory.shape == (3, 9, 16) and out.last_hidden_state.shape == (3, 4, 16)


def test_attention_weights_are_distributions_with_padded_keys_at_zero():
    model = model_for(_attn_implementation="eager")
    ids, mask = source_batch()
    out = model(
        input_ids=ids, attention_mask=mask, decoder_input_ids=torch.randint(3, 40, (3, 6)), output_attentions=True
    )
    for weights in out.encoder_attentions + out.decoder_attentions + out.cross_attentions:
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    padded_keys = (mask == 0)[:, None, None, :]
    for weights in out.encoder_attentions + out.cross_attentions:
        assert weights.masked_select(padded_keys).abs().max() == 0
    future = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    for weights in out.decoder_attentions:
        assert weights[..., future].abs().max() == 0


@pytest.mark.parametrize("norm_first", [False, True])
def test_eager_and_sdpa_agree(norm_first):
    eager = model_for(norm_first=norm_first, _attn_implementation="eager")
    sdpa = model_for(norm_first=norm_first, _attn_implementation="sdpa")
    sdpa.load_state_dict(eager.state_dict())
    ids, mask = source_batch()
    decoder_ids = torch.randint(3, 40, (3, 7))
    a = eager(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    b = sdpa(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_sentence_alone_and_inside_a_padded_batch_give_the_same_logits(attn):
    model = model_for(_attn_implementation=attn)
    ids, mask = source_batch()
    decoder_ids = torch.randint(3, 40, (3, 6))
    decoder_mask = torch.ones_like(decoder_ids)
    decoder_mask[2, 4:] = 0
    batched = model(
        input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask
    ).logits
    src_len, tgt_len = int(mask[2].sum()), int(decoder_mask[2].sum())
    alone = model(input_ids=ids[2:, :src_len], decoder_input_ids=decoder_ids[2:, :tgt_len]).logits
    torch.testing.assert_close(batched[2:, :tgt_len], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position_embedding_type", ["sinusoidal", "learned"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_source_padded_on_the_left_encodes_and_translates_as_it_does_alone(attn, position_embedding_type):
    """Positions count from each sentence's first token, not from the first column of the batch."""
    model = model_for(_attn_implementation=attn, position_embedding_type=position_embedding_type)
    sentence = torch.randint(3, 40, (1, 5))
    ids = torch.cat([torch.zeros(1, 4, dtype=torch.long), sentence], dim=1)
    mask = (ids != 0).long()
    alone = model.get_encoder()(input_ids=sentence).last_hidden_state
    padded = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(padded[:, 4:], alone, atol=1e-5, rtol=1e-5)
    settings = dict(max_new_tokens=8, min_new_tokens=8, num_beams=4)
    assert torch.equal(model.generate(ids, attention_mask=mask, **settings), model.generate(sentence, **settings))


@pytest.mark.parametrize("position_embedding_type, cache", [("sinusoidal", "dynamic"), ("learned", "static")])
def test_decoder_prompts_padded_on_the_left_continue_as_each_does_alone(position_embedding_type, cache):
    """A batch of forced decoder prefixes of different lengths: positions count from each prefix's start token."""
    model = model_for(position_embedding_type=position_embedding_type)
    start, pad = model.config.decoder_start_token_id, model.config.pad_token_id
    sources = torch.randint(3, 40, (2, 6))
    prompts = [[start, 7, 9, 11], [start, 5]]
    decoder_ids = torch.tensor([[pad] * (4 - len(prompt)) + prompt for prompt in prompts])
    decoder_mask = (torch.arange(4) >= torch.tensor([[0], [2]])).long()
    settings = dict(max_new_tokens=5, min_new_tokens=5, cache_implementation=cache, return_dict_in_generate=True)
    for num_beams in (1, 3):
        batched = model.generate(
            sources,
            decoder_input_ids=decoder_ids,
            decoder_attention_mask=decoder_mask,
            num_beams=num_beams,
            output_scores=True,
            **settings,
        )
        for row, prompt in enumerate(prompts):
            alone = model.generate(
                sources[row : row + 1],
                decoder_input_ids=torch.tensor([prompt]),
                num_beams=num_beams,
                output_scores=True,
                **settings,
            )
            assert batched.sequences[row, 4 - len(prompt) :].tolist() == alone.sequences[0].tolist(), (num_beams, row)
            if num_beams == 1:  # every step's scores
                rows = torch.stack(batched.scores)[:, row], torch.stack(alone.scores)[:, 0]
            else:
                rows = batched.sequences_scores[row], alone.sequences_scores[0]
            torch.testing.assert_close(*rows, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_layers_match_torch_nn_transformer_layers(norm_first):
    """Our encoder and decoder layers compute what torch.nn's do, given the same weights (post-LN and pre-LN)."""
    model = model_for(norm_first=norm_first, activation_function="relu")
    ours_enc, ours_dec = model.model.encoder.layers[0], model.model.decoder.layers[0]
    kwargs = dict(d_model=16, nhead=4, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=norm_first)
    ref_enc, ref_dec = nn.TransformerEncoderLayer(**kwargs).eval(), nn.TransformerDecoderLayer(**kwargs).eval()

    def copy_sublayers(ours, ref, pairs):
        with torch.no_grad():
            for ours_name, ref_name in pairs:
                ref.get_parameter(ref_name).copy_(ours.get_parameter(ours_name))

    common = [
        ("self_attn.qkv_proj.weight", "self_attn.in_proj_weight"),
        ("self_attn.qkv_proj.bias", "self_attn.in_proj_bias"),
        ("self_attn.out_proj.weight", "self_attn.out_proj.weight"),
        ("self_attn.out_proj.bias", "self_attn.out_proj.bias"),
        ("feed_forward.fc1.weight", "linear1.weight"),
        ("feed_forward.fc1.bias", "linear1.bias"),
        ("feed_forward.fc2.weight", "linear2.weight"),
        ("feed_forward.fc2.bias", "linear2.bias"),
        ("self_attn_sublayer.norm.weight", "norm1.weight"),
        ("self_attn_sublayer.norm.bias", "norm1.bias"),
    ]
    copy_sublayers(
        ours_enc,
        ref_enc,
        common
        + [
            ("feed_forward_sublayer.norm.weight", "norm2.weight"),
            ("feed_forward_sublayer.norm.bias", "norm2.bias"),
        ],
    )
    copy_sublayers(
        ours_dec,
        ref_dec,
        common
        + [
            ("cross_attn.out_proj.weight", "multihead_attn.out_proj.weight"),
            ("cross_attn.out_proj.bias", "multihead_attn.out_proj.bias"),
            ("cross_attn_sublayer.norm.weight", "norm2.weight"),
            ("cross_attn_sublayer.norm.bias", "norm2.bias"),
            ("feed_forward_sublayer.norm.weight", "norm3.weight"),
            ("feed_forward_sublayer.norm.bias", "norm3.bias"),
        ],
    )
    with torch.no_grad():
        cross = ours_dec.cross_attn
        ref_dec.multihead_attn.in_proj_weight.copy_(torch.cat([cross.q_proj.weight, cross.kv_proj.weight]))
        ref_dec.multihead_attn.in_proj_bias.copy_(torch.cat([cross.q_proj.bias, cross.kv_proj.bias]))

    source, target = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    torch.testing.assert_close(ours_enc(source), ref_enc(source), atol=1e-5, rtol=1e-5)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    torch.testing.assert_close(
        ours_dec(target, None, source),
        ref_dec(target, source, tgt_mask=causal, tgt_is_causal=True),
        atol=1e-5,
        rtol=1e-5,
    )


def test_embeddings_are_scaled_by_sqrt_d_model_and_positions_added():
    model = model_for(encoder_layers=1)
    encoder = model.model.encoder
    ids = torch.randint(3, 40, (1, 6))
    captured = {}
    encoder.layers[0].register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    encoder(input_ids=ids)
    expected = encoder.embed_tokens.weight[ids] * math.sqrt(16) + sinusoidal_positions(torch.arange(6), 16)
    torch.testing.assert_close(captured["x"], expected)


def test_loss_is_the_label_smoothed_cross_entropy_written_out():
    model = model_for(label_smoothing=0.1)
    ids, mask = source_batch()
    labels = torch.randint(3, 40, (3, 6))
    labels[1, 4:] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    log_probs = out.logits.log_softmax(-1)
    total, count = 0.0, 0
    for b in range(3):
        for t in range(6):
            if labels[b, t] == -100:
                continue
            target = torch.full((40,), 0.1 / 40)
            target[labels[b, t]] += 0.9
            total += -(target * log_probs[b, t]).sum()
            count += 1
    torch.testing.assert_close(out.loss, total / count)


def test_loss_with_num_items_in_batch_is_a_sum_over_that_count():
    model = model_for()
    ids, mask = source_batch()
    labels = torch.randint(3, 40, (3, 6))
    mean = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    summed = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=36).loss
    torch.testing.assert_close(summed, mean * 18 / 36)


def test_keeping_the_labelled_positions_gives_their_logits_the_same_loss_and_the_same_gradients():
    model = model_for(label_smoothing=0.1, dropout=0.1).train()
    ids, mask = source_batch()
    labels = torch.randint(3, 40, (3, 6))
    labels[1, 4:] = labels[2, 2:] = -100
    labelled = labels != -100
    outputs, grads = [], []
    for logits_to_keep in (0, labelled):
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout masks
        out = model(input_ids=ids, attention_mask=mask, labels=labels, logits_to_keep=logits_to_keep)
        out.loss.backward()
        outputs.append(out)
        grads.append([p.grad.clone() for p in model.parameters()])
    full, kept = outputs
    assert kept.logits.shape == (int(labelled.sum()), 40)
    torch.testing.assert_close(kept.logits, full.logits[labelled])
    torch.testing.assert_close(kept.loss, full.loss)
    for full_grad, kept_grad in zip(*grads, strict=True):
        torch.testing.assert_close(kept_grad, full_grad)


@pytest.mark.parametrize(
    "logits_to_keep, positions",
    [(2, [4, 5]), (torch.tensor([0, 3]), [0, 3]), (torch.tensor([[5, 1], [2, 3], [0, 4]]), None)],
    ids=["last-2", "positions", "per-row"],
)
def test_logits_to_keep_selects_positions_as_transformers_causal_lms_do(logits_to_keep, positions):
    model = model_for()
    ids, mask = source_batch()
    labels = torch.randint(3, 40, (3, 6))
    full = model(input_ids=ids, attention_mask=mask, labels=labels)
    kept = model(input_ids=ids, attention_mask=mask, labels=labels, logits_to_keep=logits_to_keep)
    rows = torch.arange(3)[:, None]
    index = torch.tensor(positions).expand(3, -1) if positions is not None else logits_to_keep
    torch.testing.assert_close(kept.logits, full.logits[rows, index])
    kept_labels = labels[rows, index]
    expected = nn.functional.cross_entropy(full.logits[rows, index].transpose(1, 2), kept_labels, label_smoothing=0.1)
    torch.testing.assert_close(kept.loss, expected)


def test_decoder_inputs_are_labels_shifted_right_with_the_start_token():
    labels = torch.tensor([[5, 6, 7, 2], [8, 2, -100, -100]])
    expected = torch.tensor([[1, 5, 6, 7], [1, 8, 2, 0]])
    assert torch.equal(shift_tokens_right(labels, pad_token_id=0, decoder_start_token_id=1), expected)
    model = model_for()
    ids, _ = source_batch(batch=2)
    from_labels = model(input_ids=ids, labels=labels).logits
    explicit = model(input_ids=ids, decoder_input_ids=expected).logits
    torch.testing.assert_close(from_labels, explicit)


@pytest.mark.parametrize(
    "settings",
    [
        dict(do_sample=False),
        dict(num_beams=4, length_penalty=0.6),
        dict(do_sample=True, top_k=0),
    ],
    ids=["greedy", "beam", "sampling"],
)
def test_cached_and_uncached_generation_give_identical_tokens(settings):
    model = model_for()
    ids, mask = source_batch()
    torch.manual_seed(1)
    cached = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, use_cache=True, **settings)
    torch.manual_seed(1)
    uncached = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, use_cache=False, **settings)
    assert cached.shape[1] > 2
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("num_beams", [1, 4], ids=["greedy", "beam"])
def test_static_cache_gives_the_tokens_of_the_dynamic_cache(num_beams):
    model = model_for()
    ids, mask = source_batch()
    settings = dict(input_ids=ids, attention_mask=mask, num_beams=num_beams, max_new_tokens=12, min_new_tokens=12)
    dynamic = model.generate(**settings)
    static = model.generate(**settings, cache_implementation="static")
    assert static.shape[1] == 13
    assert torch.equal(static, dynamic)


@pytest.mark.parametrize("num_beams", [1, 4], ids=["greedy", "beam"])
def test_with_a_static_cache_the_decoder_builds_its_causal_mask_inside_the_step(num_beams, monkeypatch):
    """generate() hands the decoder no 4-D mask of its own making (transformers 5.2x builds one before every step
    with a static cache, outside a compiled step's graph): the decoder builds the same mask inside its forward."""
    model = model_for()
    ids, mask = source_batch()
    settings = dict(input_ids=ids, attention_mask=mask, num_beams=num_beams, max_new_tokens=6, min_new_tokens=6)
    masks = []
    forward = type(model.model.decoder).forward

    def recording(decoder, *args, **kwargs):
        masks.append(kwargs.get("attention_mask"))
        return forward(decoder, *args, **kwargs)

    monkeypatch.setattr(type(model.model.decoder), "forward", recording)
    static = model.generate(**settings, cache_implementation="static")
    assert len(masks) == 6 and all(mask is None for mask in masks)
    monkeypatch.setattr(type(model.model.decoder), "forward", forward)
    assert torch.equal(static, model.generate(**settings))
    # A decoder mask of the caller's own (a prompt of decoder tokens) passes on as it came, 2-D.
    prompt = torch.full((ids.shape[0], 2), model.config.decoder_start_token_id)
    prompted = dict(settings, decoder_input_ids=prompt, decoder_attention_mask=torch.ones_like(prompt))
    assert torch.equal(model.generate(**prompted, cache_implementation="static"), model.generate(**prompted))


class DeviceReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value back to the host (`item()`, `bool()`): each waits for a GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def test_beam_search_reorders_a_static_cache_in_place_without_reading_the_device():
    """The self-attention buffers move to the chosen beams' rows and keep their addresses (a compiled step's CUDA
    graphs read them there); the cross-attention cache, the same for every beam of a sentence, is left as it is."""
    model = model_for()
    ids, mask = source_batch()
    cache = EncoderDecoderCache(
        StaticCache(config=model.config, max_cache_len=8), StaticCache(config=model.config, max_cache_len=9)
    )
    model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :2], cache=cache)
    layers = cache.self_attention_cache.layers + cache.cross_attention_cache.layers
    before = [(layer.keys.clone(), layer.values.clone(), layer.keys.data_ptr()) for layer in layers]
    beam_idx = torch.tensor([2, 0, 0])
    reads = DeviceReads()
    with reads:
        assert model._reorder_cache(cache, beam_idx) is cache
    assert reads.count == 0
    for index, (layer, (keys, values, address)) in enumerate(zip(layers, before, strict=True)):
        moved = index < len(cache.self_attention_cache.layers)
        assert layer.keys.data_ptr() == address
        torch.testing.assert_close(layer.keys, keys[beam_idx] if moved else keys, rtol=0, atol=0)
        torch.testing.assert_close(layer.values, values[beam_idx] if moved else values, rtol=0, atol=0)


@pytest.mark.slow
def test_static_cache_decoding_step_compiles_to_one_graph():
    """The decoding step with a static cache compiles with fullgraph=True (no graph break, no recompilation)."""
    assert VanillaForConditionalGeneration._can_compile_fullgraph
    torch._dynamo.reset()  # graphs that other tests in this process compiled of the same forward are not this one's
    model = model_for()
    ids, mask = source_batch()
    encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)

    def greedy_tokens(step) -> torch.Tensor:
        cache = EncoderDecoderCache(
            StaticCache(config=model.config, max_cache_len=8), StaticCache(config=model.config, max_cache_len=9)
        )
        tokens = [torch.full((3, 1), model.config.decoder_start_token_id)]
        for i in range(5):
            runner = model if i == 0 else step  # the first step fills the cross-attention cache, eagerly
            out = runner(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=tokens[-1], cache=cache)
            tokens.append(out.logits[:, -1:].argmax(-1))
        return torch.cat(tokens, dim=1)

    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        compiled = greedy_tokens(torch.compile(model, fullgraph=True, backend="eager"))
        assert torch.equal(compiled, greedy_tokens(model))


@pytest.mark.parametrize("cache_class", [DynamicCache, StaticCache])
def test_a_decoder_only_cache_is_taken_as_the_self_attention_cache(cache_class):
    """generate(cache=DynamicCache()) or a StaticCache: the cross-attention's cache is kept beside it."""
    model = model_for()
    ids, mask = source_batch()
    settings = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6)
    expected = model.generate(**settings)
    extra = {"max_cache_len": 20} if cache_class is StaticCache else {}
    assert torch.equal(model.generate(**settings, cache=cache_class(config=model.config, **extra)), expected)


@torch.no_grad()
def test_beam_scores_are_the_sequences_log_probabilities_over_length_to_the_penalty():
    """Beam search's sequences_scores and transition scores (its hypotheses' caches reordered by _reorder_cache) are
    the log-probabilities a teacher-forced forward pass gives the returned sequences, summed and over length**alpha."""
    model = model_for()
    ids, mask = source_batch()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=8,
        num_beams=3,
        num_return_sequences=2,
        length_penalty=1.3,
        output_scores=True,
        return_dict_in_generate=True,
    )
    transition = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    generated = out.beam_indices >= 0  # the positions each hypothesis generated, before its padding
    logits = model(
        input_ids=ids.repeat_interleave(2, 0),
        attention_mask=mask.repeat_interleave(2, 0),
        decoder_input_ids=out.sequences[:, :-1],
    ).logits
    log_probs = logits.log_softmax(-1).gather(-1, out.sequences[:, 1:, None])[..., 0]
    log_probs = log_probs.masked_fill(~generated[:, : log_probs.shape[1]], 0)
    lengths = generated.sum(-1)
    assert lengths.min() >= 4 and lengths.unique().numel() > 1  # reordered over several steps, of several lengths
    torch.testing.assert_close(transition.sum(-1), log_probs.sum(-1))
    torch.testing.assert_close(out.sequences_scores, log_probs.sum(-1) / lengths**1.3)


@pytest.mark.parametrize("assistant", ["smaller model", "prompt lookup"])
def test_assisted_decoding_gives_the_greedy_tokens(assistant):
    """Drafts checked against the model, the rejected ones cropped from its cache, leave greedy decoding's tokens."""
    model = model_for()
    ids, _ = source_batch(batch=1)
    settings = dict(input_ids=ids, max_new_tokens=12, min_new_tokens=12)
    expected = model.generate(**settings)
    if assistant == "smaller model":
        drafting = dict(assistant_model=model_for(encoder_layers=1, decoder_layers=1))
    else:
        drafting = dict(prompt_lookup_num_tokens=2)
    assert torch.equal(model.generate(**settings, **drafting), expected)


def test_early_exit_drafts_with_the_first_decoder_layers_and_keeps_the_greedy_tokens():
    """generate(assistant_early_exit=k) drafts with the decoder's first k layers (transformers lowers
    config.num_hidden_layers, the decoder's layer count, while drafting) and checks the drafts with all of them."""
    model = model_for()
    ids, _ = source_batch(batch=1)
    settings = dict(input_ids=ids, max_new_tokens=12, min_new_tokens=12)
    expected = model.generate(**settings)
    calls = [0] * len(model.model.decoder.layers)
    for index, layer in enumerate(model.model.decoder.layers):
        layer.register_forward_hook(lambda *args, index=index: calls.__setitem__(index, calls[index] + 1))
    assert torch.equal(model.generate(**settings, assistant_early_exit=1), expected)
    assert calls[0] > calls[1] == calls[2] > 0  # the drafting steps ran the first layer alone


@torch.no_grad()
def test_past_key_values_argument_is_the_deprecated_name_of_cache():
    """transformers 5.2x calls the decoder cache `cache` and deprecates `past_key_values`; before, it is the name."""
    renamed = "cache" in Seq2SeqLMOutput.__dataclass_fields__  # transformers' own name for it
    model = model_for()
    ids, mask = source_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :1], use_cache=True)
    prefix = model(**inputs)
    cache = getattr(prefix, "cache" if renamed else "past_key_values")
    step = dict(inputs, decoder_input_ids=ids[:, 1:2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        legacy = model(**step, past_key_values=copy.deepcopy(cache)).logits
    current = model(**step, cache=copy.deepcopy(cache)).logits
    deprecations = [str(w.message) for w in caught if "past_key_values" in str(w.message)]
    if renamed:
        assert len(deprecations) == 1 and "Use `cache` instead" in deprecations[0], deprecations
    else:
        assert deprecations == []
    torch.testing.assert_close(legacy, current)
    uncached = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :2], use_cache=False).logits
    torch.testing.assert_close(current, uncached[:, 1:], atol=1e-5, rtol=1e-5)


def test_cross_attention_keys_and_values_are_computed_once_per_source():
    model = model_for()
    calls = []
    for layer in model.model.decoder.layers:
        layer.cross_attn.kv_proj.register_forward_hook(lambda *args: calls.append(1))
    ids, mask = source_batch()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6)
    assert out.shape[1] == 7
    assert len(calls) == len(model.model.decoder.layers)


def test_presets_are_table_3_base_and_big_and_take_overrides():
    base, big = VanillaConfig.from_preset("base"), VanillaConfig.from_preset("big", vocab_size=100)
    table_3 = {"base": (512, 2048, 8, 6, 0.1), "big": (1024, 4096, 16, 6, 0.3)}  # d_model, d_ff, h, N, P_drop
    for config, name in ((base, "base"), (big, "big")):
        shape = (config.d_model, config.d_ff, config.num_heads, config.encoder_layers, config.dropout)
        assert shape == table_3[name] and config.decoder_layers == config.encoder_layers
    assert big.vocab_size == 100 and VanillaConfig.from_preset("tiny", d_model=32).d_model == 32
    assert set(PRESETS) == {"tiny", "small", "base", "big"}
    with pytest.raises(ValueError, match="unknown preset 'huge'; expected one of tiny, small, base, big"):
        VanillaConfig.from_preset("huge")


def test_base_config_has_about_63m_parameters_with_a_37k_vocabulary():
    with torch.device("meta"):
        model = VanillaForConditionalGeneration(VanillaConfig(vocab_size=37000))
    count = sum(p.numel() for p in model.parameters())
    assert 62e6 < count < 64e6, count


def test_three_embeddings_are_one_tensor_and_survive_the_round_trip(tmp_path):
    model = model_for()
    shared = model.model.shared.weight
    assert model.lm_head.weight is shared
    assert model.model.encoder.embed_tokens.weight is shared and model.model.decoder.embed_tokens.weight is shared
    model.save_pretrained(tmp_path)
    loaded = VanillaForConditionalGeneration.from_pretrained(tmp_path)
    shared = loaded.model.shared.weight
    assert loaded.lm_head.weight is shared and loaded.model.decoder.embed_tokens.weight is shared
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        stored = [k for k in f.keys() if f.get_slice(k).get_shape() == [40, 16]]
    assert len(stored) == 1, stored


def test_untied_embeddings_are_three_tensors():
    model = model_for(tie_word_embeddings=False)
    weights = [model.lm_head.weight, model.model.encoder.embed_tokens.weight, model.model.decoder.embed_tokens.weight]
    assert len({w.data_ptr() for w in weights}) == 3


def test_embeddings_are_tied_by_transformers_not_shared_as_one_module():
    """Each embedding is a module of its own; transformers' tie_weights makes their weights one tensor."""
    model = model_for()
    modules = [model.model.shared, model.model.encoder.embed_tokens, model.model.decoder.embed_tokens]
    assert len({id(module) for module in modules}) == 3
    tied = model.get_expanded_tied_weights_keys(all_submodels=True)
    assert set(tied) == {"lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}
    assert set(tied.values()) == {"model.shared.weight"}


@pytest.mark.parametrize("tied", [True, False])
def test_the_input_embedding_module_transformers_hands_out_is_the_one_the_model_runs(tied):
    """Hooks on get_input_embeddings() act (Trainer's NEFTune noise, attribution tools), and a module given to
    set_input_embeddings() is the one called, by the decoder too where the embeddings are shared (as Marian's)."""
    from transformers.integrations.neftune import activate_neftune

    model = model_for(tie_word_embeddings=tied).train()  # dropout 0: only NEFTune's noise is random
    ids, mask = source_batch()
    labels = ids[:, :4]
    plain = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    hook = activate_neftune(model, 5.0)
    noisy = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    hook.remove()
    assert not torch.allclose(plain, noisy)

    class Counted(nn.Embedding):
        calls = 0

        def forward(self, input_ids):
            Counted.calls += 1
            return super().forward(input_ids)

    replacement = Counted(model.config.vocab_size, model.config.d_model, padding_idx=model.config.pad_token_id)
    replacement.weight.data.copy_(model.get_input_embeddings().weight)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask, labels=labels).loss, plain)
    assert Counted.calls == (2 if tied else 1)  # the encoder, and the decoder where it shares the embedding


def test_a_forward_without_decoder_inputs_names_them():
    ids, mask = source_batch()
    with pytest.raises(ValueError, match="pass decoder_input_ids or decoder_inputs_embeds; VanillaForConditional"):
        model_for()(input_ids=ids, attention_mask=mask)


@torch.no_grad()
def test_a_model_offloaded_to_disk_by_device_map_gives_the_logits_of_the_model_in_memory(tmp_path):
    """from_pretrained(device_map="auto") with little memory to spare offloads weights to disk: accelerate's hooks
    load each module's weights for its call and move its arguments to the device, which must leave modules alone.
    (Some stay in memory: accelerate 1.3, the lowest supported, refuses to offload a whole model by device_map.)"""
    model = model_for()
    model.save_pretrained(tmp_path / "model")
    offloaded = AutoModelForSeq2SeqLM.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": "20KB"}, offload_folder=tmp_path / "offload"
    )
    assert set(offloaded.hf_device_map.values()) == {"cpu", "disk"}, offloaded.hf_device_map
    ids, mask = source_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.randint(3, 40, (3, 6)))
    torch.testing.assert_close(offloaded(**inputs).logits, model(**inputs).logits)


def test_checkpoint_without_the_embedding_reports_it_missing_and_leaves_no_meta_tensor(tmp_path):
    model_for().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.shared.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = VanillaForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert "model.shared.weight" in info["missing_keys"]
    on_meta = [name for name, p in loaded.named_parameters(remove_duplicate=False) if p.device.type == "meta"]
    assert on_meta == []
    ids, mask = source_batch()
    assert torch.isfinite(loaded(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :3]).logits).all()


def test_resizing_untied_embeddings_resizes_the_decoders_input_embedding_too():
    model = model_for(tie_word_embeddings=False)
    before = [model.lm_head.weight.clone(), model.model.decoder.embed_tokens.weight.clone()]
    model.resize_token_embeddings(44)
    after = [model.lm_head.weight, model.model.decoder.embed_tokens.weight, model.model.encoder.embed_tokens.weight]
    assert [w.shape[0] for w in after] == [44, 44, 44]
    for old, new in zip(before, after, strict=False):
        torch.testing.assert_close(new[:40], old)
    new_token = torch.tensor([[1, 43]])
    assert model(input_ids=new_token, decoder_input_ids=new_token).logits.shape == (1, 2, 44)


def test_resizing_tied_embeddings_keeps_the_three_tied():
    model = model_for()
    model.resize_token_embeddings(44)
    shared = model.model.shared.weight
    assert shared.shape[0] == 44 and model.lm_head.weight is shared
    assert model.model.encoder.embed_tokens.weight is shared and model.model.decoder.embed_tokens.weight is shared


@pytest.mark.parametrize("position_embedding_type", ["sinusoidal", "learned"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_save_and_load_round_trip_preserves_logits(tmp_path, position_embedding_type, norm_first):
    model = model_for(position_embedding_type=position_embedding_type, norm_first=norm_first)
    ids, mask = source_batch()
    decoder_ids = torch.randint(3, 40, (3, 5))
    before = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    model.save_pretrained(tmp_path)
    from transformers import AutoModelForSeq2SeqLM

    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is VanillaForConditionalGeneration
    after = loaded(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(before, after, atol=0, rtol=0)


def test_auto_classes_know_the_vanilla_model_type():
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

    values = {k: v for k, v in tiny_config().to_dict().items() if k != "model_type"}
    config = AutoConfig.for_model("vanilla", **values)
    assert isinstance(config, VanillaConfig)
    assert type(AutoModel.from_config(config)) is VanillaModel
    assert type(AutoModelForSeq2SeqLM.from_config(config)) is VanillaForConditionalGeneration


def test_hf_attribute_aliases_read_the_papers_names():
    config = tiny_config()
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (16, 4, 32)
    assert config.num_hidden_layers == config.decoder_layers


@pytest.mark.parametrize(
    "overrides, argument",
    [
        (dict(d_model=30, num_heads=4), "d_model"),
        (dict(d_ff=0), "d_ff"),
        (dict(encoder_layers=-1), "encoder_layers"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(activation_function="swishy"), "activation_function"),
        (dict(position_embedding_type="rotary"), "position_embedding_type"),
        (dict(dropout=1.0), "dropout"),
        (dict(attention_dropout=-0.1), "attention_dropout"),
        (dict(label_smoothing=1.5), "label_smoothing"),
        (dict(vocab_size=True), "vocab_size"),
        (dict(d_model=16.0), "d_model"),
        (dict(dropout="0.1"), "dropout"),
        (dict(dropout=None), "dropout"),
        (dict(attention_dropout="0"), "attention_dropout"),
        (dict(label_smoothing=None), "label_smoothing"),
        (dict(label_smoothing=True), "label_smoothing"),
        (dict(pad_token_id=40), "pad_token_id"),
        (dict(pad_token_id=True), "pad_token_id"),
        (dict(bos_token_id=-1), "bos_token_id"),
        (dict(eos_token_id=40), "eos_token_id"),
        (dict(eos_token_id=[2, 40]), "eos_token_id"),
        (dict(decoder_start_token_id=99), "decoder_start_token_id"),
        (dict(norm_first="false"), "norm_first"),
        (dict(scale_embedding=None), "scale_embedding"),
    ],
)
def test_invalid_configs_raise_naming_the_argument(overrides, argument):
    with pytest.raises(ValueError, match=rf"^{argument} \("):
        tiny_config(**overrides)


def test_values_transformers_sets_after_the_configs_init_are_checked_when_the_model_is_built(tmp_path):
    """from_pretrained's overrides and attribute_map's aliases (hidden_size) come after VanillaConfig.__init__: an
    invalid shape is refused by name when the model is built, not at its first forward by a reshape."""
    tiny_config().save_pretrained(tmp_path / "config")
    model_for().save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"^d_model \(16\) must be divisible by num_heads \(5\)"):
        VanillaForConditionalGeneration(VanillaConfig.from_pretrained(tmp_path / "config", num_heads=5))
    with pytest.raises(ValueError, match=r"^d_model \(18\) must be divisible by num_heads \(4\)"):
        tiny_config(hidden_size=18, num_heads=4)
    with pytest.raises(ValueError, match=r"^d_model \(16\) must be divisible by num_heads \(5\)"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "model", num_attention_heads=5)
    with pytest.raises(ValueError, match=r"^dropout \(1.5\) must be a number in \[0, 1\)"):
        VanillaModel(VanillaConfig.from_pretrained(tmp_path / "config", dropout=1.5))


def test_configs_built_the_ways_transformers_builds_them_still_validate(tmp_path):
    # PretrainedConfig leaves a token out with None, a list of eos ids is allowed, and transformers' ConfigTester
    # passes its common kwargs (tests/utils/test_configuration_utils.py) through to PretrainedConfig.
    common = dict(return_dict=False, output_hidden_states=True, chunk_size_feed_forward=5, problem_type="regression")
    common.update(architectures=["VanillaForConditionalGeneration"], id2label={0: "label"}, label2id={"label": 0})
    no_ids = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None, decoder_start_token_id=None)
    for config in [tiny_config(**no_ids), tiny_config(eos_token_id=[2, 3]), tiny_config(**common), VanillaConfig()]:
        assert VanillaConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
        config.save_pretrained(tmp_path)
        assert VanillaConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    assert tiny_config(**common).chunk_size_feed_forward == 5 and tiny_config(**no_ids).pad_token_id is None


def test_paper_defaults():
    config = VanillaConfig()
    shape = (config.d_model, config.num_heads, config.d_ff, config.encoder_layers, config.decoder_layers)
    assert shape == (512, 8, 2048, 6, 6)
    assert (config.dropout, config.label_smoothing, config.activation_function) == (0.1, 0.1, "relu")
    assert config.scale_embedding and config.tie_word_embeddings and not config.norm_first
    assert config.position_embedding_type == "sinusoidal" and config.is_encoder_decoder


def test_get_encoder_takes_the_modality_argument_of_transformers():
    from transformers.exporters.utils import is_multimodal

    model = model_for()
    assert model.get_encoder() is model.model.encoder
    assert model.get_encoder(modality=None) is model.model.encoder
    assert not is_multimodal(model)  # asks get_encoder(modality="image") and "audio"


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_forward_exports_with_torch_export(dynamic):
    from torch.export import Dim

    model = model_for()

    def inputs(batch, source, target):
        ids, mask = source_batch(batch, source)
        return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.randint(3, 40, (batch, target)))

    shapes = None
    if dynamic:
        batch, source, target = Dim("batch", max=16), Dim("source", max=64), Dim("target", max=64)
        shapes = dict(
            input_ids={0: batch, 1: source},
            attention_mask={0: batch, 1: source},
            decoder_input_ids={0: batch, 1: target},
            use_cache=None,
        )
    with torch.no_grad():
        program = torch.export.export(model, (), dict(inputs(3, 9, 5), use_cache=False), dynamic_shapes=shapes)
    other = inputs(4, 11, 6) if dynamic else inputs(3, 9, 5)
    exported = program.module()(**other, use_cache=False).logits
    torch.testing.assert_close(exported, model(**other, use_cache=False).logits)


@pytest.mark.slow
def test_generate_decomposes_into_prefill_and_decode_graphs_that_export():
    """transformers.exporters captures generate()'s two forward calls and exports each with torch.export."""
    from transformers.exporters.exporter_dynamo import DynamoConfig, DynamoExporter
    from transformers.exporters.utils import decompose_for_generation

    model = model_for()
    ids, mask = source_batch(batch=2, length=7)
    stages = decompose_for_generation(model, dict(input_ids=ids, attention_mask=mask))
    assert set(stages) == {"prefill", "decode"}
    for stage, inputs in stages.values():
        exported = DynamoExporter().export(stage, copy.deepcopy(inputs), config=DynamoConfig())
        program = getattr(exported, "program", exported)  # an ExportedModel from transformers 5.2x
        traced = {k: v for k, v in copy.deepcopy(inputs).items() if not isinstance(v, bool)}
        torch.testing.assert_close(program.module()(**traced).logits, stage(**copy.deepcopy(inputs)).logits)


@pytest.mark.slow
def test_transformers_executorch_module_exports_an_encoder_and_a_static_cache_decoder_step():
    """Seq2SeqLMExportableModule (transformers' ExecuTorch path): the exported encoder equals ours, and the exported
    decoder, fed one token a step, gives the logits of a full forward, again for a second sequence."""
    from transformers.integrations.executorch import Seq2SeqLMExportableModule

    model = model_for()
    exportable = Seq2SeqLMExportableModule(model, batch_size=1, max_hidden_seq_length=32, max_cache_length=16)
    exportable.export()
    encoder, decoder = exportable.exported_encoder.module(), exportable.exported_decoder.module()
    for _ in range(2):
        ids = torch.randint(3, 40, (1, 7))
        encoded = encoder(ids)
        torch.testing.assert_close(encoded, model.get_encoder()(input_ids=ids).last_hidden_state)
        targets = torch.randint(3, 40, (1, 6))
        steps = [decoder(targets[:, i : i + 1], encoded, torch.tensor([i])) for i in range(targets.shape[1])]
        with torch.no_grad():
            full = model(input_ids=ids, decoder_input_ids=targets).logits
        torch.testing.assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("every_n_layers", [1, 2])
def test_activation_checkpointing_recomputes_the_chosen_layers_and_gives_the_same_gradients(
    every_n_layers, monkeypatch
):
    """transformers' activation checkpointing (5.24: `activation_checkpointing_enable`, with `every_n_layers`;
    before: `gradient_checkpointing_enable`): the checkpointed layers run twice, the gradients stay the same."""
    plain = model_for().train()
    checkpointed = model_for().train()
    checkpointed.load_state_dict(plain.state_dict())
    if hasattr(checkpointed, "activation_checkpointing_enable"):
        checkpointed.activation_checkpointing_enable(every_n_layers=every_n_layers)
    elif every_n_layers == 1:
        checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        pytest.skip("every_n_layers came with transformers 5.24's activation_checkpointing_enable")
    layers = [*checkpointed.model.encoder.layers, *checkpointed.model.decoder.layers]  # counted in this order
    calls = [0] * len(layers)
    for index, layer in enumerate(layers):  # a layer's self-attention runs again where the layer is recomputed
        layer.self_attn.register_forward_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    ids, mask = source_batch()
    labels = torch.randint(3, 40, (3, 6))
    warned = []  # the encoder keeps no cache: nothing to turn off there
    monkeypatch.setattr("transformers.modeling_layers.logger.warning_once", lambda message, *_: warned.append(message))
    for model in (plain, checkpointed):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert [message for message in warned if "EncoderLayer" in message] == []
    assert calls == [2 if index % every_n_layers == 0 else 1 for index in range(len(layers))]
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_a_cache_passed_with_labels_is_attended_to_and_trained():
    """Prefix tuning (peft) passes learned decoder keys and values as the cache of a training step, where labels turn
    use_cache off: the decoder attends to them as a decoding step does, as Marian's, and the loss reaches them."""
    model = model_for()
    ids, mask = source_batch()
    labels = torch.randint(3, 40, (3, 5))
    keys, values = (torch.randn(3, 4, 2, 4, requires_grad=True) for _ in range(2))  # (batch, heads, prefix, d_k)

    def prefix() -> DynamicCache:
        cache = DynamicCache()
        for layer in range(model.config.decoder_layers):
            cache.update(keys, values, layer)
        return cache

    trained = model(input_ids=ids, attention_mask=mask, labels=labels, cache=prefix())
    decoder_ids = shift_tokens_right(labels, model.config.pad_token_id, model.config.decoder_start_token_id)
    stepped = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, cache=prefix(), use_cache=True)
    torch.testing.assert_close(trained.logits, stepped.logits)
    unprefixed = model(input_ids=ids, attention_mask=mask, labels=labels).logits
    assert not torch.allclose(trained.logits, unprefixed, atol=1e-3)
    trained.loss.backward()
    assert keys.grad.abs().sum() > 0 and values.grad.abs().sum() > 0


def test_training_under_activation_checkpointing_without_labels_keeps_no_decoder_cache():
    """A forward without labels (a loss of the user's own) while training under activation checkpointing, the
    config's use_cache on: the decoder keeps no cache, as Marian's, and the gradients are those without checkpointing
    (a cache kept would be extended again when a layer is recomputed); generate() keeps its cache."""
    plain = model_for().train()
    checkpointed = model_for().train()
    checkpointed.load_state_dict(plain.state_dict())
    enable = getattr(checkpointed, "activation_checkpointing_enable", None)  # before 5.24: gradient_checkpointing_
    (enable or checkpointed.gradient_checkpointing_enable)()
    ids, mask = source_batch()
    decoder_ids = torch.randint(3, 40, (3, 6))
    caches = []
    for model in (plain, checkpointed):
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        out.logits.logsumexp(-1).sum().backward()
        caches.append(out.get("cache", out.get("past_key_values")))  # named past_key_values before 5.2x
    assert plain.config.use_cache and caches[0] is not None
    assert caches[1] is None
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)
    # generate() from the model in training mode runs without gradients: nothing is recomputed, the cache is kept.
    settings = dict(max_new_tokens=5, min_new_tokens=5, output_logits=True, return_dict_in_generate=True)
    generated = [model.generate(ids, attention_mask=mask, **settings).logits for model in (plain, checkpointed)]
    torch.testing.assert_close(torch.stack(generated[1]), torch.stack(generated[0]), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_torch_compile_gives_the_same_loss_and_gradients():
    model = model_for()
    ids, mask = source_batch()
    labels = torch.randint(3, 40, (3, 6))
    compiled = torch.compile(model, fullgraph=True)
    losses, grads = [], []
    for runner in (model, compiled):
        model.zero_grad()
        loss = runner(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for eager_grad, compiled_grad in zip(*grads, strict=True):
        torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_tiny_model_learns_to_copy_and_greedy_decoding_reproduces_the_targets():
    torch.manual_seed(0)
    model = VanillaForConditionalGeneration(
        tiny_config(d_model=32, d_ff=64, encoder_layers=2, decoder_layers=2, label_smoothing=0.0)
    )
    sources = torch.randint(3, 40, (8, 6))
    labels = torch.cat([sources, torch.full((8, 1), 2)], dim=1)  # copy, then </s>
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    model.train()
    for _ in range(300):
        loss = model(input_ids=sources, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    model.eval()
    generated = model.generate(input_ids=sources, max_new_tokens=10, do_sample=False)
    assert torch.equal(generated[:, 1:8], labels)


@pytest.mark.slow
def test_remote_code_loads_in_a_fresh_process_where_the_project_is_not_importable(tmp_path):
    """A saved folder copied elsewhere: its config, model, tokenizer and decoding defaults load through the auto
    classes and GenerationConfig, and translate as the model did before saving."""
    from vanilla_tokenizer import train_bpe_tokenizer

    model = model_for()
    model.config.register_for_auto_class()
    model.register_for_auto_class("AutoModelForSeq2SeqLM")
    model.generation_config.update(num_beams=2, max_new_tokens=6)  # the decoding defaults the folder carries
    tokenizer = train_bpe_tokenizer(["one two three four five", "eins zwei drei vier fünf"], vocab_size=40)
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    folder = shutil.copytree(tmp_path / "saved", tmp_path / "elsewhere" / "model")
    saved = {p.name for p in folder.iterdir()}
    assert {"modeling_vanilla.py", "configuration_vanilla.py", "model.safetensors", "tokenizer.json"} <= saved
    assert model.config.auto_map["AutoModelForSeq2SeqLM"] == "modeling_vanilla.VanillaForConditionalGeneration"
    texts = ["one two", "three five four one"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    expected = model.generate(**batch)
    assert expected.shape[1] <= 7
    torch.save({"batch": dict(batch), "expected": expected}, tmp_path / "inputs.pt")
    script = f"""
import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig
folder = {str(folder)!r}
assert type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__ == "VanillaConfig"
model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__name__ == "VanillaForConditionalGeneration"
assert model.lm_head.weight is model.model.shared.weight
generation_config = GenerationConfig.from_pretrained(folder)
assert (generation_config.num_beams, generation_config.max_new_tokens) == (2, 6), generation_config
data = torch.load({str(tmp_path / "inputs.pt")!r})
batch = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)({texts!r}, return_tensors="pt", padding=True)
assert all(torch.equal(batch[name], data["batch"][name]) for name in ("input_ids", "attention_mask")), batch
out = model.generate(**batch)
assert torch.equal(out, data["expected"]), (out, data["expected"])
print("loaded")
"""
    result = run_outside_the_project(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "loaded" in result.stdout


@pytest.mark.slow
def test_each_repo_loaded_as_remote_code_runs_its_own_code(tmp_path):
    """Two repos of model_type "vanilla" whose files differ, loaded in one process: the second runs its own files, not
    the first's, and without trust_remote_code it is not loaded through the first's code."""
    for name in ("first", "second"):
        model_for().save_pretrained(tmp_path / name)
        modeling = tmp_path / name / "modeling_vanilla.py"
        modeling.write_text(modeling.read_text() + f"\nREPO = {name!r}\n")
    script = f"""
import sys
from transformers import AutoConfig, AutoModelForSeq2SeqLM
for name in ("first", "second"):
    model = AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True)
    config = AutoConfig.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True)
    assert sys.modules[type(model).__module__].REPO == name, (name, type(model).__module__)
    assert f".{{name}}." in type(model.config).__module__ and f".{{name}}." in type(config).__module__
try:
    AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path)!r} + "/second", trust_remote_code=False)
except ValueError as error:
    print("refused:", error)
"""
    result = run_outside_the_project(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "refused: " in result.stdout and "trust_remote_code=True" in result.stdout


@pytest.mark.slow
def test_every_saved_config_loads_through_the_three_auto_classes_without_registering(tmp_path):
    """A config saved on its own, and a model saved plainly, name AutoConfig, AutoModel and AutoModelForSeq2SeqLM."""
    config_folder, model_folder = tmp_path / "config", tmp_path / "model"
    tiny_config().save_pretrained(config_folder)
    model = model_for()
    model.save_pretrained(model_folder)
    for folder in (config_folder, model_folder):
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM"}
        assert {"configuration_vanilla.py", "modeling_vanilla.py"} <= {p.name for p in folder.iterdir()}
    ids, mask = source_batch()
    with torch.no_grad():
        encoded = model.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.save({"ids": ids, "mask": mask, "encoded": encoded}, tmp_path / "inputs.pt")
    script = f"""
import os
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM
# First (nothing of the model's code loaded yet): a config loaded alone and saved again brings the modeling file along.
resaved = {str(tmp_path / "resaved")!r}
AutoConfig.from_pretrained({str(config_folder)!r}, trust_remote_code=True).save_pretrained(resaved)
assert {{"configuration_vanilla.py", "modeling_vanilla.py"}} <= set(os.listdir(resaved)), os.listdir(resaved)
resaved_config = AutoConfig.from_pretrained(resaved, trust_remote_code=True)
built = AutoModelForSeq2SeqLM.from_config(resaved_config, trust_remote_code=True)
assert type(built).__name__ == "VanillaForConditionalGeneration"
config = AutoConfig.from_pretrained({str(config_folder)!r}, trust_remote_code=True)
assert type(config).__name__ == "VanillaConfig" and config.d_model == 16
assert type(AutoModel.from_config(config, trust_remote_code=True)).__name__ == "VanillaModel"
seq2seq = AutoModelForSeq2SeqLM.from_config(config, trust_remote_code=True)
assert type(seq2seq).__name__ == "VanillaForConditionalGeneration"
base = AutoModel.from_pretrained({str(model_folder)!r}, trust_remote_code=True).eval()
assert type(base).__name__ == "VanillaModel"
data = torch.load({str(tmp_path / "inputs.pt")!r})
with torch.no_grad():
    encoded = base.encoder(input_ids=data["ids"], attention_mask=data["mask"]).last_hidden_state
torch.testing.assert_close(encoded, data["encoded"])
# What run_translation.py does with --config_name: the model's weights under a config saved on its own.
model = AutoModelForSeq2SeqLM.from_pretrained({str(model_folder)!r}, config=config, trust_remote_code=True)
assert type(model).__name__ == "VanillaForConditionalGeneration"
print("loaded")
"""
    result = run_outside_the_project(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "loaded" in result.stdout
