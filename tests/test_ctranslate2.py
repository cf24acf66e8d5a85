"""The CTranslate2 conversion against generate() on random tiny models: every architecture variant, both save forms."""

import os
import sys

import pytest
import torch
from tiny_models import tiny_config
from transformers import GenerationConfig

from modeling_vanilla import VanillaForConditionalGeneration
from vanilla_ctranslate2 import CTranslate2Model, load_weights, model_spec, position_table_length, translator

EOS = 2
VARIANTS = {
    "post-LN, sinusoids, tied": {},
    "pre-LN": {"norm_first": True},
    "learned positions": {"position_embedding_type": "learned"},
    "untied": {"tie_word_embeddings": False},
    "unscaled embeddings, gelu": {"scale_embedding": False, "activation_function": "gelu"},
}


def random_model(**overrides) -> VanillaForConditionalGeneration:
    model = VanillaForConditionalGeneration(tiny_config(**overrides)).eval()
    with torch.no_grad():
        # Make the end token likely enough that some hypotheses finish early and length normalisation matters.
        model.lm_head.weight[EOS] *= 3
    return model


def converted(model: VanillaForConditionalGeneration, weights: dict, folder) -> CTranslate2Model:
    tokens = [f"<t{index}>" for index in range(model.config.vocab_size)]
    spec = model_spec(model.config, weights, tokens)
    spec.validate()
    spec.optimize(quantization="float32")
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(str(folder))
    engine = translator(folder, "cpu", "float32", threads=1)
    return CTranslate2Model(engine, tokens, GenerationConfig(), "float32", position_table_length(model.config))


def sources(count: int = 8) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, 9, (count,), generator=generator)
    return [torch.randint(3, 40, (int(length),), generator=generator).tolist() + [EOS] for length in lengths]


def generated(model, source: list[int], **arguments) -> tuple[list[int], float | None]:
    """generate()'s tokens without the decoder start and end tokens, and the beam score."""
    with torch.no_grad():
        output = model.generate(
            input_ids=torch.tensor([source]), return_dict_in_generate=True, output_scores=True, **arguments
        )
    tokens = output.sequences[0, 1:].tolist()
    if EOS in tokens:
        tokens = tokens[: tokens.index(EOS)]
    score = output.sequences_scores[0].item() if arguments["num_beams"] > 1 else None
    return tokens, score


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_teacher_forced_log_probabilities_agree(overrides, tmp_path):
    model = random_model(**overrides)
    engine = converted(model, model.state_dict(), tmp_path)
    source, target = sources()[0], [5, 9, 13, 7, EOS]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([[1, *target[:-1]]])).logits
    expected = logits.log_softmax(-1)[0, torch.arange(len(target)), target]
    result = engine.translator.score_batch(
        [[engine.tokens[index] for index in source]], [[engine.tokens[index] for index in target[:-1]]]
    )[0]
    torch.testing.assert_close(torch.tensor(result.log_probs), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_greedy_tokens_equal_generate(overrides, tmp_path):
    model = random_model(**overrides)
    engine = converted(model, model.state_dict(), tmp_path)
    for source in sources():
        expected, _ = generated(model, source, num_beams=1, max_new_tokens=12)
        assert engine.generate_ids([source], num_beams=1, length_penalty=1.0, max_new_tokens=12) == [expected]


@pytest.mark.parametrize("length_penalty", [0.6, 1.0, 0.0])
def test_beam_search_tokens_and_length_normalised_scores_equal_generate(length_penalty, tmp_path):
    """Both engines score a finished hypothesis sum(log p) / length ** alpha, the end token counted in the length."""
    model = random_model()
    engine = converted(model, model.state_dict(), tmp_path)
    finished_early = 0
    for source in sources():
        expected, score = generated(
            model, source, num_beams=4, length_penalty=length_penalty, max_new_tokens=12, early_stopping=True
        )
        tokens, scores = engine.generate_ids(
            [source], num_beams=4, length_penalty=length_penalty, max_new_tokens=12, return_scores=True
        )
        assert tokens == [expected]
        assert scores[0] == pytest.approx(score, rel=1e-4)
        finished_early += len(expected) < 12
    assert finished_early > 0, "no hypothesis ended before the limit: the length penalty was not exercised"


def test_a_source_longer_than_ctranslate2s_default_input_limit_is_read_whole(tmp_path):
    """CTranslate2 cuts inputs at 1024 tokens unless told otherwise; the sinusoid table holds 2048 positions."""
    model = random_model()
    engine = converted(model, model.state_dict(), tmp_path)
    generator = torch.Generator().manual_seed(2)
    source = torch.randint(3, 40, (1100,), generator=generator).tolist() + [EOS]
    expected, score = generated(model, source, num_beams=2, max_new_tokens=4, early_stopping=True)
    tokens, scores = engine.generate_ids(
        [source], num_beams=2, length_penalty=1.0, max_new_tokens=4, return_scores=True
    )
    assert tokens == [expected]
    assert scores[0] == pytest.approx(score, rel=1e-4)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_saved_checkpoint_converts_like_the_full_state_dict(tied, tmp_path):
    """A tied checkpoint stores the shared matrix once; the conversion finds it by name, whichever name was saved."""
    model = random_model(tie_word_embeddings=tied)
    model.save_pretrained(tmp_path / "model")
    saved = load_weights(tmp_path / "model")
    assert ("model.encoder.embed_tokens.weight" in saved) == (not tied)
    engine = converted(model, saved, tmp_path / "converted")
    for source in sources():
        expected, _ = generated(model, source, num_beams=1, max_new_tokens=12)
        assert engine.generate_ids([source], num_beams=1, length_penalty=1.0, max_new_tokens=12) == [expected]


def test_a_batch_split_over_parallel_replicas_comes_back_in_input_order(tmp_path):
    """On CPU each replica decodes its share of the batch; the hypotheses still line up with their sources."""
    model = random_model()
    engine = converted(model, model.state_dict(), tmp_path)
    parallel = CTranslate2Model(
        translator(tmp_path, "cpu", "float32", threads=3), engine.tokens, GenerationConfig(), "", engine.positions
    )
    assert parallel.translator.num_translators == 3
    batch = sources(count=7)
    expected = [generated(model, source, num_beams=4, max_new_tokens=12, early_stopping=True)[0] for source in batch]
    assert parallel.generate_ids(batch, num_beams=4, length_penalty=1.0, max_new_tokens=12) == expected


def test_a_cpu_translator_leaves_torch_thread_count_as_it_was(tmp_path):
    """CTranslate2 sets the calling thread's OpenMP thread count to intra_threads, which torch reads too: a process
    that builds a Translator must not go on computing its torch work on one thread."""
    model = random_model()
    converted(model, model.state_dict(), tmp_path)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        translator(tmp_path, "cpu", "float32", threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts the process' threads in /proc")
def test_each_cpu_replica_decodes_on_one_thread(tmp_path):
    """`threads` replicas start `threads` workers and no OpenMP threads of their own: with CTranslate2's default
    intra_threads each replica would compute on several, and together they would oversubscribe the cores."""
    model = random_model()
    engine = converted(model, model.state_dict(), tmp_path)
    before = len(os.listdir("/proc/self/task"))
    parallel = CTranslate2Model(
        translator(tmp_path, "cpu", "float32", threads=2), engine.tokens, GenerationConfig(), "", engine.positions
    )
    parallel.generate_ids(sources(count=8), num_beams=4, length_penalty=1.0, max_new_tokens=12)
    assert len(os.listdir("/proc/self/task")) - before == 2
